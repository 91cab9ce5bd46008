"""tools/misc/make_demo_data.py writes each format."""
import pytest


@pytest.mark.parametrize('fmt, expected', [
    ('coco', 'annotations/instances_val2017.json'),
    ('ade20k', 'annotations/validation/ADE_val_00000001.png'),
    ('imagenet', 'meta/val.txt'),
])
def test_make_demo_data(tmp_path, run_tool, fmt, expected):
    out = run_tool('tools/misc/make_demo_data.py', fmt, tmp_path,
                   '--num-train', 2, '--num-val', 1, '--img-size', 60, 70)
    assert 'wrote' in out
    assert (tmp_path / expected).is_file()
