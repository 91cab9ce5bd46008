"""tools/train.py and tools/test.py with the mmseg and mmpretrain Pola-PVT-T
configs on generated ADE20K / ImageNet data (single process, CPU)."""
import pickle

from mmpola.datasets import make_ade20k, make_imagenet


def loader_options(data, splits=('train', 'val', 'test'), **extra):
    opts = []
    for split in splits:
        opts += [f'{split}_dataloader.dataset.data_root={data}',
                 f'{split}_dataloader.num_workers=0',
                 f'{split}_dataloader.persistent_workers=False']
        opts += [f'{split}_dataloader.{k}={v}' for k, v in extra.items()]
    return opts


def test_mmseg_train_and_test(tmp_path, run_tool):
    from mmpola.testing import make_official_checkpoint
    make_ade20k(str(tmp_path / 'ade'), num_train=4, num_val=2,
                img_size=(96, 128))
    make_official_checkpoint('pola_pvt_tiny', str(tmp_path / 'pvt.pth'))
    config = 'configs/mmseg/pola_pvt/fpn_pola-pvt-t_8xb4-40k_ade20k-512x512.py'
    opts = loader_options(tmp_path / 'ade', batch_size=2) + [
        f'model.backbone.init_cfg.checkpoint={tmp_path}/pvt.pth',
        'model.data_preprocessor.size=(128,128)',
        'train_dataloader.dataset.pipeline.2.scale=(256,128)',
        'train_dataloader.dataset.pipeline.3.crop_size=(128,128)',
        'val_dataloader.dataset.pipeline.1.scale=(256,128)',
        'test_dataloader.dataset.pipeline.1.scale=(256,128)',
        'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1'
    ]
    out = run_tool('tools/train.py', config, '--work-dir', tmp_path / 'work',
                   '--cfg-options', *opts)
    assert 'Iter(train) [2/2]' in out and 'mIoU:' in out
    out = run_tool('tools/test.py', config, tmp_path / 'work' / 'iter_2.pth',
                   '--work-dir', tmp_path / 'test', '--out', tmp_path / 'pred',
                   '--cfg-options', *opts)
    assert 'mIoU:' in out
    assert len(list((tmp_path / 'pred').glob('*.png'))) == 2


def test_mmpretrain_train_and_test(tmp_path, run_tool):
    make_imagenet(str(tmp_path / 'in'), num_classes=3, per_class=4,
                  num_val_per_class=1)
    config = 'configs/mmpretrain/pola_pvt/pola-pvt-tiny_8xb128_in1k.py'
    opts = loader_options(tmp_path / 'in', batch_size=4) + [
        'train_cfg.max_epochs=1', 'param_scheduler.0.end=1',
        'param_scheduler.1.begin=0', 'default_hooks.logger.interval=1'
    ]
    out = run_tool('tools/train.py', config, '--work-dir', tmp_path / 'work',
                   '--cfg-options', *opts)
    assert 'Epoch(train) [1][3/3]' in out and 'accuracy/top1:' in out
    out = run_tool('tools/test.py', config, tmp_path / 'work' / 'epoch_1.pth',
                   '--work-dir', tmp_path / 'test', '--out',
                   tmp_path / 'pred.pkl', '--cfg-options', *opts)
    assert 'accuracy/top1:' in out
    with open(tmp_path / 'pred.pkl', 'rb') as f:
        assert len(pickle.load(f)) == 3
