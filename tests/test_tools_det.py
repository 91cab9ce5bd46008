"""tools/{train,test}.py and tools/dist_{train,test}.sh with the Mask R-CNN
Pola-PVT-T config on generated COCO data (CPU: gloo, 2 processes)."""
import pickle

import pytest
import torch

CONFIG = 'configs/mmdet/pola_pvt/mask-rcnn_pola-pvt-t_fpn_1x_coco.py'


def det_options(data, ckpt, epochs):
    """Generated data at 160x128 with 3 classes, ``epochs`` epochs, fewer
    RoIs (the CPU time goes there), and the backbone loaded from a
    released-layout checkpoint."""
    opts = [f'model.backbone.init_cfg.checkpoint={ckpt}',
            'model.roi_head.bbox_head.num_classes=3',
            'model.roi_head.mask_head.num_classes=3',
            'model.train_cfg.rcnn.sampler.num=64',
            'model.test_cfg.rcnn.max_per_img=20',
            f'train_cfg.max_epochs={epochs}',
            'default_hooks.logger.interval=1']
    for split, resize in (('train', 2), ('val', 1), ('test', 1)):
        opts += [f'{split}_dataloader.dataset.data_root={data}/',
                 f'{split}_dataloader.dataset.metainfo.classes='
                 '(rectangle,ellipse,triangle)',
                 f'{split}_dataloader.dataset.pipeline.{resize}.scale='
                 '(160,128)',
                 f'{split}_dataloader.num_workers=0',
                 f'{split}_dataloader.persistent_workers=False']
    ann = f'{data}/annotations/instances_val2017.json'
    return opts + [f'val_evaluator.ann_file={ann}',
                   f'test_evaluator.ann_file={ann}']


def load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


@pytest.fixture(scope='module')
def backbone_ckpt(tmp_path_factory):
    from mmpola.testing import make_official_checkpoint
    path = tmp_path_factory.mktemp('released') / 'pola_pvt_tiny.pth'
    make_official_checkpoint('pola_pvt_tiny', str(path))
    return path


@pytest.fixture(scope='module')
def dist_trained(tmp_path_factory, coco_root, backbone_ckpt, run_tool):
    """One epoch with 2 processes: 4 images, 2 per process = 1 iteration."""
    work = tmp_path_factory.mktemp('dist_train')
    out = run_tool('tools/dist_train.sh', CONFIG, 2, '--work-dir', work,
                   '--cfg-options',
                   *det_options(coco_root, backbone_ckpt, epochs=1))
    return work, out


def test_dist_train_cpu(dist_trained):
    work, out = dist_trained
    assert "-> 'gloo'" in out and 'Distributed training: True' in out
    assert 'Epoch(train) [1][1/1]' in out
    assert 'coco/bbox_mAP:' in out and 'coco/segm_mAP:' in out  # validation
    meta = load(work / 'epoch_1.pth')['meta']
    assert (meta['epoch'], meta['iter']) == (1, 1)


def test_dist_test(dist_trained, coco_root, backbone_ckpt, run_tool):
    work, _ = dist_trained
    out = run_tool('tools/dist_test.sh', CONFIG, work / 'epoch_1.pth', 2,
                   '--work-dir', work / 'dist_test', '--cfg-options',
                   *det_options(coco_root, backbone_ckpt, epochs=1))
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95' in out
    assert 'coco/bbox_mAP:' in out and 'coco/segm_mAP:' in out


def test_test_py(dist_trained, coco_root, backbone_ckpt, run_tool, tmp_path):
    work, _ = dist_trained
    out = run_tool('tools/test.py', CONFIG, work / 'epoch_1.pth',
                   '--work-dir', tmp_path, '--out', tmp_path / 'pred.pkl',
                   '--cfg-options',
                   *det_options(coco_root, backbone_ckpt, epochs=1))
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95' in out
    assert 'coco/bbox_mAP:' in out and 'coco/segm_mAP:' in out
    with open(tmp_path / 'pred.pkl', 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 2 and 'masks' in preds[0]['pred_instances']


def test_interrupt_and_resume(tmp_path, coco_root, backbone_ckpt, run_tool):
    """A run stopped after 2 epochs (a checkpoint every 2 iterations) goes on
    with ``--resume`` from iteration 4, not from the start."""
    opts = det_options(coco_root, backbone_ckpt, epochs=2)
    opts.append('train_cfg.val_begin=100')  # no validation: faster
    run_tool('tools/train.py', CONFIG, '--work-dir', tmp_path,
             '--cfg-options', *opts)
    assert load(tmp_path / 'epoch_2.pth')['meta']['iter'] == 4

    opts[opts.index('train_cfg.max_epochs=2')] = 'train_cfg.max_epochs=3'
    out = run_tool('tools/train.py', CONFIG, '--work-dir', tmp_path,
                   '--resume', '--cfg-options', *opts)
    assert 'resumed epoch: 2, iter: 4' in out
    assert 'Epoch(train) [1]' not in out and 'Epoch(train) [3][2/2]' in out
    meta = load(tmp_path / 'epoch_3.pth')['meta']
    assert (meta['epoch'], meta['iter']) == (3, 6)
