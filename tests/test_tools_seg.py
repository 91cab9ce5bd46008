"""Segmentation end to end: the real Semantic FPN config on generated ADE20K
data (500x375 images, the ADE20K norm), 2 CPU processes, then mIoU."""
from pathlib import Path

import pytest
from mmengine.config import Config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'configs/mmseg/pola_pvt/fpn_pola-pvt-t_8xb2-40k_ade20k-512x512.py'
CROP = (128, 128)


def small_config(base, data_root, out_dir):
    """The config with data paths, crop size and schedule made CPU-sized;
    test images keep their odd 375x500 size (whole-image inference)."""
    cfg = Config.fromfile(str(base))
    cfg.model.backbone.init_cfg = None
    cfg.model.data_preprocessor.size = CROP
    cfg.data_preprocessor.size = CROP
    for t in cfg.train_dataloader.dataset.pipeline:
        if t.type == 'RandomResize':
            t.scale = (500, 160)
        if t.type == 'RandomCrop':
            t.crop_size = CROP
    for t in cfg.test_dataloader.dataset.pipeline:
        if t.type == 'Resize':
            t.scale = (500, 375)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = str(data_root)
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    cfg.train_dataloader.batch_size = 2
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=4,
                         val_interval=4)
    cfg.default_hooks.checkpoint.interval = 4
    cfg.default_hooks.logger.interval = 1
    path = out_dir / 'fpn_small.py'
    cfg.dump(str(path))
    return path


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    from mmpola.datasets import make_ade20k
    root = tmp_path_factory.mktemp('ade')
    make_ade20k(str(root), num_train=4, num_val=2, img_size=(375, 500))
    return root


@pytest.fixture(scope='module')
def seg_trained(tmp_path_factory, ade_root, run_tool):
    work = tmp_path_factory.mktemp('seg_train')
    cfg = small_config(CONFIG, ade_root, work)
    out = run_tool('tools/dist_train.sh', cfg, 2, '--work-dir', work,
                   timeout=600)
    return cfg, work, out


def test_dist_train_two_processes_and_validation(seg_trained):
    _, work, out = seg_trained
    assert "-> 'gloo'" in out and 'Distributed training: True' in out
    assert 'Iter(train) [4/4]' in out
    assert 'mIoU' in out and 'aAcc' in out  # validation after 4 iterations
    assert (work / 'iter_4.pth').exists()


def test_test_py_reports_miou(seg_trained, tmp_path, run_tool):
    cfg, work, _ = seg_trained
    out = run_tool('tools/test.py', cfg, work / 'iter_4.pth',
                   '--work-dir', tmp_path)
    for metric in ('aAcc:', 'mIoU:', 'mAcc:'):
        assert metric in out
    assert 'per class results' in out
