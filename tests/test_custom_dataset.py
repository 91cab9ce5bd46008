"""docs/custom_dataset.md, run: the documented configs of ``configs/custom``
fine-tune on a dataset of their own classes written with the project's
generators (COCO layout; MMSegmentation's img_dir/ann_dir layout), from a
released-layout ImageNet checkpoint through the backbone's ``init_cfg``,
through ``tools/train.py``; the evaluation reports every class by name, the
best checkpoint by the task's metric is kept, and the scalars land where
MMEngine's visualizer backends (local JSON, TensorBoard) put them.

Only what a CPU test needs differs from the files: the data root, tiny
images, a couple of iterations, no data-loading workers."""
import glob
import json
import os.path as osp
import runpy
import sys

import pytest
from mmengine.config import Config

import mmpola  # noqa: F401
from mmpola.datasets import COCO_CLASSES, SEG_CLASSES, make_segmentation

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CUSTOM = osp.join(ROOT, 'configs', 'custom')
DOC = osp.join(ROOT, 'docs', 'custom_dataset.md')
SIZE = (160, 128)  # (w, h) of the resized images
CROP = (128, 128)

DET = {
    'mask-rcnn_pola-pvt-t_fpn_2x_shapes.py': 'pola_pvt_tiny',
    'retinanet_pola-pvt-t_fpn_2x_shapes.py': 'pola_pvt_tiny',
}
SEG = {
    'upernet_pola-swin-t_8k_shapes-512x512.py': 'pola_swin_tiny_patch4_224',
    'fpn_pola-pvt-t_8k_shapes-512x512.py': 'pola_pvt_tiny',
}


@pytest.fixture(scope='module')
def seg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes_seg')
    make_segmentation(str(root), num_train=4, num_val=2,
                      img_size=(SIZE[1], SIZE[0]))
    return root


def test_every_custom_config_is_documented_verbatim():
    """The docs show each file of configs/custom as it is."""
    with open(DOC, encoding='utf-8') as f:
        doc = f.read()
    files = sorted(glob.glob(osp.join(CUSTOM, '*.py')))
    assert sorted(osp.basename(p) for p in files) == sorted({**DET, **SEG})
    for path in files:
        with open(path, encoding='utf-8') as f:
            text = f.read()
        assert f'configs/custom/{osp.basename(path)}' in doc
        if osp.basename(path).startswith(('mask-rcnn', 'upernet')):
            assert text.strip() in doc, f'{path} not shown verbatim'


def _cpu_sized(config, data_root, checkpoint, work_dir, iters):
    """The documented config with the test's data root and CPU sizes."""
    cfg = Config.fromfile(osp.join(CUSTOM, config))
    # from the "ImageNet weights": a released-layout file through init_cfg
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'
    cfg.model.backbone.init_cfg.checkpoint = str(checkpoint)
    root = f'{data_root}/'
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg[name]
        loader.dataset.data_root = root
        loader.num_workers = 0
        loader.persistent_workers = False
        for t in loader.dataset.pipeline:
            if t.type in ('Resize', 'RandomResize'):
                t.scale = SIZE
            if t.type == 'RandomCrop':
                t.crop_size = CROP
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(work_dir)
    # one visualizer per run: the bases name it 'visualizer', and MMEngine
    # hands an existing instance of that name (the previous test's, writing
    # to its work dir) to every later Runner of the process
    cfg.visualizer.name = f'visualizer_{work_dir.name}'
    if cfg.default_scope == 'mmdet':
        for name in ('val_evaluator', 'test_evaluator'):
            cfg[name].ann_file = cfg[name].ann_file.replace(
                'data/shapes/', root)
        cfg.train_cfg.max_epochs = 1  # 4 images, 2 per iteration
        cfg.param_scheduler[0].end = 2
        cfg.param_scheduler[1].end = 1
        if 'rcnn' in cfg.model.train_cfg:  # fewer sampled RoIs (speed)
            cfg.model.train_cfg.rcnn.sampler.num = 64
        else:  # after 2 iterations no RetinaNet score reaches 0.05
            cfg.model.test_cfg.score_thr = 0.
    else:
        cfg.model.data_preprocessor.size = CROP
        cfg.train_cfg.max_iters = iters
        cfg.train_cfg.val_interval = iters
        cfg.default_hooks.checkpoint.interval = iters
        for scheduler in cfg.param_scheduler:
            scheduler.begin = min(scheduler.begin, iters - 1)
            scheduler.end = iters
    path = work_dir / config
    cfg.dump(str(path))
    return path


def _train(cfg_path, work_dir, monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['tools/train.py', str(cfg_path),
                                      '--work-dir', str(work_dir)])
    runpy.run_path(osp.join(ROOT, 'tools', 'train.py'), run_name='__main__')
    scalars, = glob.glob(str(work_dir / '*' / 'vis_data' / 'scalars.json'))
    with open(scalars) as f:
        records = [json.loads(line) for line in f]
    log, = glob.glob(str(work_dir / '*' / '*.log'))
    with open(log) as f:
        return records, f.read()


def _class_rows(log):
    """The first column of the table after 'per class results:'."""
    lines = log.split('per class results:', 1)[1].splitlines()
    while not lines[0].startswith('+'):
        lines.pop(0)
    rows = []
    for line in lines:
        if not line.startswith(('+', '|')):
            break
        if line.startswith('|'):
            rows.append(line.split('|')[1].strip())
    return rows[1:]  # after the header ("Class")


@pytest.mark.parametrize('config', sorted(DET))
def test_detector_on_its_own_classes(config, coco_root, released_file,
                                     tmp_path, monkeypatch):
    cfg = _cpu_sized(config, coco_root, released_file(DET[config]),
                     tmp_path, iters=None)
    records, log = _train(cfg, tmp_path, monkeypatch)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 2  # 4 training images, 2 per iteration
    metrics, = [r for r in records if 'coco/bbox_mAP' in r]
    for name in COCO_CLASSES:  # classwise=True: AP per class, by name
        assert f'coco/{name}_precision' in metrics
        assert name in log
    assert 'Loaded' in log and 'pola_pvt_tiny.pth' in log  # init_cfg ran
    assert (tmp_path / 'best_coco_bbox_mAP_epoch_1.pth').is_file()
    from mmpola.utils.torch_load import safe_load
    meta = safe_load(str(tmp_path / 'epoch_1.pth'))['meta']
    assert tuple(meta['dataset_meta']['classes']) == COCO_CLASSES


@pytest.mark.parametrize('config', sorted(SEG))
def test_segmentor_on_its_own_classes(config, seg_root, released_file,
                                      tmp_path, monkeypatch):
    cfg = _cpu_sized(config, seg_root, released_file(SEG[config]), tmp_path,
                     iters=2)
    if config.startswith('upernet'):
        # TensorBoard as well (docs/training_curves.md)
        pytest.importorskip('tensorboard')
        c = Config.fromfile(str(cfg))
        c.visualizer.vis_backends = [
            dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]
        c.dump(str(cfg))
    records, log = _train(cfg, tmp_path, monkeypatch)
    assert len([r for r in records if 'loss' in r]) == 2
    metrics, = [r for r in records if 'mIoU' in r]
    assert 0 <= metrics['mIoU'] <= 100
    # IoUMetric's per-class table: one row per class, by name
    assert _class_rows(log) == list(SEG_CLASSES)
    assert (tmp_path / 'best_mIoU_iter_2.pth').is_file()
    if config.startswith('upernet'):
        from tensorboard.backend.event_processing.event_accumulator import \
            EventAccumulator
        events, = glob.glob(str(tmp_path / '*' / 'vis_data' /
                                'events.out.tfevents.*'))
        acc = EventAccumulator(events)
        acc.Reload()
        tags = set(acc.Tags()['scalars'])
        assert {'loss', 'lr', 'mIoU'} <= tags, tags
        assert len(acc.Scalars('loss')) == 2
