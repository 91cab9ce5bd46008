"""The code the docs show runs as shown."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _example(doc, name):
    text = (ROOT / doc).read_text()
    match = re.search(rf'<!-- example: {name} -->\n```python\n(.*?)```',
                      text, re.S)
    assert match, f'{doc}: no example {name!r}'
    return match.group(1)


def test_vit_block_example_runs_with_torch_alone():
    """docs/extending.md's ViT block, where mmengine and mmcv (and the
    OpenMMLab codebases) cannot be imported; ``import mmpola`` works too."""
    code = ('import sys\n'
            'for m in ("mmengine", "mmcv", "mmdet", "mmseg", "mmpretrain"):\n'
            '    sys.modules[m] = None  # import raises ImportError\n'
            'import mmpola\n'
            'assert not hasattr(mmpola, "PolaPVT")\n'
            + _example('docs/extending.md', 'vit-block'))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split('\n')[:2] == [
        'torch.Size([2, 196, 384])', 'torch.Size([1, 600, 384])']


def test_relative_links_resolve():
    """Every relative link of README.md, SECURITY.md and docs/ names a file
    that exists (anchors ignored)."""
    docs = [ROOT / 'README.md', ROOT / 'SECURITY.md',
            *sorted((ROOT / 'docs').glob('*.md'))]
    missing = []
    for doc in docs:
        for target in re.findall(r'\]\(([^)\s]+)\)', doc.read_text()):
            if re.match(r'[a-z]+:', target) or target.startswith('#'):
                continue
            path = (doc.parent / target.split('#')[0]).resolve()
            if not path.exists():
                missing.append(f'{doc.name}: {target}')
    assert not missing, missing
