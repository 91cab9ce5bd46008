"""tools/misc/make_demo_data.py writes each format."""
import runpy
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / 'tools/misc/make_demo_data.py'


@pytest.mark.parametrize('fmt, expected', [
    ('coco', 'annotations/instances_val2017.json'),
    ('ade20k', 'annotations/validation/ADE_val_00000001.png'),
    ('seg', 'ann_dir/val/val_00001.png'),
    ('imagenet', 'meta/val.txt'),
])
def test_make_demo_data(tmp_path, monkeypatch, capsys, fmt, expected):
    argv = [fmt, tmp_path, '--num-train', 2, '--num-val', 1, '--img-size',
            60, 70]
    monkeypatch.setattr(sys, 'argv', [str(TOOL)] + [str(a) for a in argv])
    runpy.run_path(str(TOOL), run_name='__main__')
    assert 'wrote' in capsys.readouterr().out
    assert (tmp_path / expected).is_file()
