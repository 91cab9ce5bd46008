"""Classification: every ImageNet config trains a few iterations through
tools/train.py on a generated ImageNet-format folder (in this process, to
save interpreter starts); tools/test.py reports top-1/top-5."""
import json
import math
import re
import runpy
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / 'configs/mmpretrain').glob('*/*.py'))
NUM_CLASSES = 6
SIZE = 64


def small_config(base, data_root, out_dir):
    """The config with the data, image size, batch and schedule made
    CPU-sized; the recipe's transforms (RandAugment, erasing, mixup, cutmix)
    stay."""
    cfg = Config.fromfile(str(base))
    cfg.model.backbone.init_cfg = None  # the 384 fine-tune starts from a checkpoint
    cfg.model.head.init_cfg = None
    cfg.model.head.num_classes = NUM_CLASSES
    cfg.data_preprocessor.num_classes = NUM_CLASSES
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = str(data_root)
        cfg[loader].batch_size = 4
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
        for t in cfg[loader].dataset.pipeline:
            for key in ('scale', 'crop_size'):
                if key in t:
                    t[key] = SIZE
    cfg.train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=10)
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0)]
    cfg.default_hooks.logger.interval = 1
    path = out_dir / Path(base).name
    cfg.dump(str(path))
    return path


@pytest.fixture(scope='module')
def imagenet_root(tmp_path_factory):
    from mmpola.datasets import make_imagenet
    root = tmp_path_factory.mktemp('imagenet')
    make_imagenet(str(root), num_classes=NUM_CLASSES, per_class=2,
                  img_size=(SIZE + 8, SIZE + 16), num_val_per_class=1)
    return root


def train_in_process(cfg_path, work_dir, monkeypatch):
    """``python tools/train.py CFG --work-dir DIR`` in this process (saves
    an interpreter start per config); returns the logged losses."""
    monkeypatch.setattr(sys, 'argv', ['tools/train.py', str(cfg_path),
                                      '--work-dir', str(work_dir)])
    runpy.run_path(str(ROOT / 'tools/train.py'), run_name='__main__')
    logs = list(work_dir.glob('*/vis_data/scalars.json'))
    assert len(logs) == 1
    with open(logs[0]) as f:
        return [json.loads(line)['loss'] for line in f if '"loss"' in line]


@pytest.mark.parametrize('config', CONFIGS, ids=lambda p: p.stem)
def test_config_trains_with_finite_loss(config, imagenet_root, tmp_path,
                                        monkeypatch):
    cfg = small_config(config, imagenet_root, tmp_path)
    losses = train_in_process(cfg, tmp_path, monkeypatch)
    assert len(losses) == 3  # 12 images, batch 4
    assert all(math.isfinite(loss) for loss in losses)
    assert (tmp_path / 'epoch_1.pth').exists()


def test_test_py_reports_top1_top5(imagenet_root, tmp_path, run_tool):
    cfg = small_config(CONFIGS[0], imagenet_root, tmp_path)
    run_tool('tools/train.py', cfg, '--work-dir', tmp_path, timeout=600)
    out = run_tool('tools/test.py', cfg, tmp_path / 'epoch_1.pth',
                   '--work-dir', tmp_path / 'test')
    top1 = re.search(r'accuracy/top1: ([\d.]+)', out)
    top5 = re.search(r'accuracy/top5: ([\d.]+)', out)
    assert top1 and top5
    assert 0 <= float(top1.group(1)) <= float(top5.group(1)) <= 100
