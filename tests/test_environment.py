"""The installed stack: imports, compiled mmcv ops, Runner checkpoints, and
mmpola's declared dependencies (ranges and extras, docs/install.md)."""
import importlib.metadata as md
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip('tomli')

import mmpola  # noqa: F401  (routes MMEngine's checkpoint loading)
from mmpola.utils.torch_load import safe_load

ROOT = Path(__file__).resolve().parents[1]
STACKS = ROOT / 'requirements' / 'stacks'


def _pins(path):
    """{distribution: version} of a stack's ``name==version`` lines."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r'^([A-Za-z0-9_.-]+)==([^\s;#]+)', line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def _installed(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


ONEDL = _installed('onedl-mmcv') is not None  # the OneDL stack (STACK=onedl)


def _requirement_lines(*names):
    reqs = []
    for name in names:
        for line in (ROOT / 'requirements' / name).read_text().splitlines():
            line = line.split('#')[0].strip()
            if line and not line.startswith('-'):
                reqs.append(Requirement(line))
    return reqs


def _declared():
    """(core, {extra: [Requirement]}) as pyproject.toml declares them."""
    proj = tomllib.loads((ROOT / 'pyproject.toml').read_text())
    dyn = proj['tool']['setuptools']['dynamic']
    core = [r for f in dyn['dependencies']['file']
            for r in _requirement_lines(Path(f).name)]
    extras = {name: [r for f in spec['file']
                     for r in _requirement_lines(Path(f).name)]
              for name, spec in dyn['optional-dependencies'].items()}
    return core, extras


def test_installed_stack_is_a_tested_one():
    """Apart from torch (TORCH=existing builds on another one), the installed
    OpenMMLab packages are exactly one stack of requirements/stacks/."""
    names = ('mmengine', 'mmcv', 'mmdet', 'mmsegmentation', 'mmpretrain',
             'onedl-mmengine', 'onedl-mmcv', 'onedl-mmdetection',
             'onedl-mmsegmentation', 'onedl-mmpretrain')
    have = {n: _installed(n) for n in names if _installed(n)}
    matches = []
    for stack in sorted(STACKS.glob('*.txt')):
        pins = {k: v for k, v in _pins(stack).items() if k in names}
        if pins == have:
            matches.append(stack.stem)
    assert matches, f'installed {have} is none of the stacks in {STACKS}'


def test_openmmlab_packages_import():
    import mmcv
    import mmdet
    import mmengine
    import mmpretrain
    import mmseg
    prefix = 'onedl-' if ONEDL else ''
    assert mmcv.__version__ == _installed(prefix + 'mmcv')
    assert mmengine.__version__ == _installed(prefix + 'mmengine')
    assert mmdet.__version__ == _installed(
        prefix + ('mmdetection' if ONEDL else 'mmdet'))
    assert mmseg.__version__ == _installed(prefix + 'mmsegmentation')
    assert mmpretrain.__version__ == _installed(prefix + 'mmpretrain')


def test_metadata_has_ranges_not_pins():
    """No exact pin, torch above all, in what pip reads for mmpola: neither
    in pyproject's declarations nor in the installed package's metadata."""
    core, extras = _declared()
    installed = [Requirement(r) for r in md.requires('mmpola') or []]
    for req in core + [r for rs in extras.values() for r in rs] + installed:
        ops = {s.operator for s in req.specifier}
        assert not ops & {'==', '==='}, f'exact pin: {req}'
    torch_req = [r for r in core if r.name == 'torch']
    assert torch_req and torch_req[0].specifier.contains('2.1.2') \
        and torch_req[0].specifier.contains('2.14.1')
    # the core is torch, numpy and safetensors (the layer, the reader):
    # MMEngine/MMCV come from an extra, since naming `mmcv` would make pip
    # replace OneDL's `onedl-mmcv`
    assert {r.name for r in core} == {'torch', 'numpy', 'safetensors'}


def test_extras_cover_the_tested_stacks():
    """Every pin of every tested stack lies inside the range mmpola's extras
    declare for it, and every extra names only packages some stack pins
    (or that need no pin)."""
    core, extras = _declared()
    assert {'det', 'seg', 'cls', 'tests', 'analysis', 'all', 'openmmlab',
            'onedl', 'timm', 'hf'} <= set(extras)
    ranges = {}
    for req in core + [r for rs in extras.values() for r in rs]:
        ranges.setdefault(req.name.lower(), []).append(req.specifier)
    pinned = set()
    for stack in STACKS.glob('*.txt'):
        for name, version in _pins(stack).items():
            pinned.add(name)
            for spec in ranges.get(name, []):
                assert spec.contains(version, prereleases=True), \
                    f'{stack.name}: {name}=={version} outside {spec}'
    for req in core + [r for rs in extras.values() for r in rs]:
        if req.specifier:  # a range is a claim about tested versions
            assert req.name.lower() in pinned | {'numpy'}, req


def test_installed_environment_satisfies_its_extras():
    """The extras of this environment's family resolve to what is installed
    (the same check pip makes before it would install anything)."""
    core, extras = _declared()
    wanted = ['onedl', 'analysis', 'tests'] if ONEDL else [
        'all', 'tests']
    for req in core + [r for e in wanted for r in extras[e]]:
        version = _installed(req.name)
        assert version is not None, f'{req} not installed'
        assert req.specifier.contains(version, prereleases=True), \
            f'{req.name} {version} outside {req}'


@pytest.mark.timeout(300)
def test_pip_install_changes_nothing_installed(tmp_path):
    """``pip install -e .[extras]`` here would install mmpola and nothing else
    (offline: it may not even look at an index)."""
    extras = 'onedl,analysis,tests' if ONEDL else 'all,tests'
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-index',
         '--no-build-isolation', '--disable-pip-version-check',
         '--report', str(tmp_path / 'report.json'), '-e',
         f'{ROOT}[{extras}]'],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    import json
    report = json.loads((tmp_path / 'report.json').read_text())
    would = sorted(i['metadata']['name'] for i in report['install'])
    assert would == ['mmpola'], proc.stdout[-3000:]


def test_missing_optional_package_says_what_to_install(monkeypatch):
    from mmpola.utils.imports import require
    assert require('mmengine').__name__ == 'mmengine'
    monkeypatch.setitem(sys.modules, 'mmdet', None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'mmpola\[det\]'"):
        require('mmdet', purpose='RetinaNet configs')
    for name in [m for m in sys.modules if m.startswith('mmseg.')]:
        monkeypatch.delitem(sys.modules, name)  # imported by other tests
    monkeypatch.setitem(sys.modules, 'mmseg', None)
    with pytest.raises(ImportError, match='onedl-mmsegmentation'):
        require('mmseg.models')
    with pytest.raises(ImportError, match='pip install no_such_module_x'):
        require('no_such_module_x')


def test_require_keeps_errors_inside_installed_packages(tmp_path,
                                                        monkeypatch):
    """A package that is there but fails to import (a dependency of its own
    missing, a broken build) is not reported as 'install mmpola[...]'."""
    pkg = tmp_path / 'mmpola_fake_pkg'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('import mmpola_fake_missing_dep\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    from mmpola.utils.imports import require
    with pytest.raises(ModuleNotFoundError, match='mmpola_fake_missing_dep'):
        require('mmpola_fake_pkg')


def test_mmcv_nms_hand_checked():
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.],
                          [20., 20., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(0, 1) = 81 / 119 = 0.68: box 1 is suppressed at 0.5, kept at 0.7
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    torch.testing.assert_close(dets[:, 4], torch.tensor([0.9, 0.7]))
    _, keep = nms(boxes, scores, iou_threshold=0.7)
    assert keep.tolist() == [0, 1, 2]


def test_mmcv_roi_align_hand_checked():
    from mmcv.ops import RoIAlign
    # feature value = x coordinate of the pixel centre offset: f(y, x) = x
    feat = torch.arange(8.).repeat(8, 1)[None, None]
    rois = torch.tensor([[0., 2., 2., 6., 6.]])  # box x in [2, 6]
    out = RoIAlign((2, 2), spatial_scale=1., sampling_ratio=2,
                   aligned=True)(feat, rois)
    # aligned: pixel centres at i + 0.5, so the bin centres x = 3 and 5
    # sample f = x - 0.5 -> bins average to 2.5 and 4.5
    torch.testing.assert_close(out[0, 0],
                               torch.tensor([[2.5, 4.5], [2.5, 4.5]]))


class _ToyModel(nn.Module):

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, inputs, target, mode='loss'):
        return dict(loss=((self.fc(inputs).squeeze(-1) - target)**2).mean())


class _ToyData(torch.utils.data.Dataset):

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return dict(inputs=torch.full((2, ), float(i)), target=torch.ones(()))


def _runner(work_dir, max_iters, resume=False):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Model(BaseModel):

        def __init__(self):
            super().__init__()
            self.toy = _ToyModel()

        def forward(self, inputs, target, mode='loss'):
            return self.toy(inputs, target)

    return Runner(
        model=Model(), work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=_ToyData(), batch_size=4,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(
            type='CheckpointHook', interval=2, by_epoch=False)),
        resume=resume, randomness=dict(seed=0))


def test_runner_checkpoint_saves_and_resumes(tmp_path):
    first = _runner(tmp_path, max_iters=4)
    first.train()
    saved = first.model.toy.fc.weight.detach().clone()
    ckpt = tmp_path / 'iter_4.pth'
    assert ckpt.exists()
    # torch's default weights-only loader refuses the file
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=True)
    # mmpola's loader reads it, message hub included
    state = safe_load(str(ckpt))
    assert state['meta']['iter'] == 4
    assert 'log_scalars' in state['message_hub']

    second = _runner(tmp_path, max_iters=6, resume=True)
    second.load_or_resume()
    assert second.iter == 4  # resumes where the checkpoint was taken
    torch.testing.assert_close(second.model.toy.fc.weight.detach(), saved)
    second.train()
    assert second.iter == 6
    assert (tmp_path / 'iter_6.pth').exists()


def test_mmseg_scope_configs_resolve():
    """``_base_ = 'mmseg::...'`` resolves here, OneDL included (where the
    module mmseg comes from the distribution onedl-mmsegmentation)."""
    from mmengine.config import Config

    from mmengine.config import utils as cfg_utils

    from mmpola.utils.imports import onedl_config_scopes
    onedl_config_scopes()  # (import mmpola did it already; idempotent)
    assert cfg_utils.MODULE2PACKAGE['mmseg'] == (
        'mmsegmentation' if _installed('mmsegmentation') else 'mmseg')
    configs = sorted((ROOT / 'configs' / 'mmseg').rglob('*.py'))
    if not configs:
        pytest.skip('no mmseg configs in this tree')
    cfg = Config.fromfile(str(configs[0]))
    assert cfg.model.backbone.type in ('PolaPVT', 'PolaSwin')
