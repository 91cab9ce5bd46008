"""Every config under ``configs/`` loads, builds and trains one step on CPU.

The configs are found on disk, so a new config is tested without touching
this file. Each one is loaded with ``Config.fromfile`` (which imports mmpola
through its ``custom_imports``), its model is built through the registry of
its package (``configs/<package>/...``) with the backbone's ``init_cfg``
removed, and one forward + backward pass in loss mode runs on a small input
(two-stage detectors sample fewer RoIs). Also checked: every parameter gets a
gradient (DDP), the weight-decay groups the optimizer gets, a missing
checkpoint failing at ``init_weights``, and each config folder's README and
metafile.
"""
import glob
import importlib
import math
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

import mmpola  # noqa: F401  (registers PolaPVT / PolaSwin)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs')
CONFIGS = sorted(
    osp.relpath(p, CONFIG_DIR)
    for p in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True))
PACKAGES = ('mmdet', 'mmseg', 'mmpretrain')

# Small inputs: detection 2 x 128x160 with 2 boxes + masks each,
# segmentation 2 x 128x160, classification 2 x 64x64.
DET_HW = SEG_HW = (128, 160)
CLS_HW = (64, 64)
# Two-stage detectors: RoIs sampled per image in the test (512 in the
# configs, which makes the box heads dominate the CPU time).
TEST_ROIS = 64

# Backbone parameters that the Swin-recipe and classification configs
# exempt from weight decay: Pola positional encodings, scale and power, and
# PVT's position embeddings.
EXEMPT = re.compile(
    r'(\.positional_encoding|\.attn\.scale|\.attn\.power|^pos_embed\d)$')


def _package(rel_path):
    package = rel_path.split(osp.sep)[0]
    assert package in PACKAGES, (
        f'{rel_path}: configs live under configs/<{"|".join(PACKAGES)}>/')
    return package


def _load(rel_path):
    cfg = Config.fromfile(osp.join(CONFIG_DIR, rel_path))
    assert cfg.default_scope == _package(rel_path)
    return cfg


def _build_model(cfg):
    """Build ``cfg.model`` in its package's scope (as a Runner would)."""
    scope = cfg.default_scope
    importlib.import_module(f'{scope}.utils').register_all_modules(
        init_default_scope=False)
    registry = importlib.import_module(f'{scope}.registry').MODELS
    model_cfg = cfg.model.copy()
    if cfg.get('data_preprocessor') is not None:
        # mmpretrain keeps it at the top level; the Runner moves it.
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    with DefaultScope.overwrite_default_scope(scope):
        model = registry.build(model_cfg)
    # SyncBN (seg/cascade heads) -> BN: no process group in the tests.
    return revert_sync_batchnorm(model)


def _fewer_rois(train_cfg):
    """Cut the RoIs of two-stage detectors (test speed only)."""
    if 'rpn_proposal' in train_cfg:
        train_cfg.rpn_proposal.max_per_img = 4 * TEST_ROIS
    stages = train_cfg.get('rcnn') or []
    for stage in stages if isinstance(stages, list) else [stages]:
        stage.sampler.num = TEST_ROIS


def _det_batch(model):
    from mmdet.testing import demo_mm_inputs
    packed = demo_mm_inputs(
        batch_size=2,
        image_shapes=[(3, *DET_HW)] * 2,
        num_items=[2, 2],
        num_classes=80,
        with_mask=True)
    return model.data_preprocessor(packed, True)


def _seg_batch(model):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    h, w = SEG_HW
    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=gen,
                                    dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(
            img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        sample.gt_sem_seg = PixelData(
            data=torch.randint(0, 150, (1, h, w), generator=gen))
        samples.append(sample)
    return model.data_preprocessor(
        dict(inputs=inputs, data_samples=samples), True)


def _cls_batch(model):
    from mmpretrain.structures import DataSample
    gen = torch.Generator().manual_seed(0)
    inputs = [
        torch.randint(0, 256, (3, *CLS_HW), generator=gen, dtype=torch.uint8)
        for _ in range(2)
    ]
    samples = [DataSample().set_gt_label(label) for label in (3, 997)]
    return model.data_preprocessor(
        dict(inputs=inputs, data_samples=samples), True)


BATCH = dict(mmdet=_det_batch, mmseg=_seg_batch, mmpretrain=_cls_batch)


@pytest.mark.parametrize('rel_path', CONFIGS)
def test_config_trains_one_step(rel_path):
    cfg = _load(rel_path)
    package = _package(rel_path)
    assert 'mmpola' in cfg.custom_imports['imports'], (
        'configs must import mmpola themselves (custom_imports)')
    backbone = cfg.model.backbone
    assert backbone.type in ('PolaPVT', 'PolaSwin')

    if package in ('mmdet', 'mmseg'):
        # Dense models start from the released ImageNet weights.
        family = 'pvt' if backbone.type == 'PolaPVT' else 'swin'
        assert backbone.init_cfg == dict(
            type='Pretrained',
            checkpoint=f'checkpoints/pola_{family}_{backbone.arch}.pth')
    backbone.init_cfg = None
    if package == 'mmseg':
        # Do not pad the small test images to the 512x512 training crop.
        cfg.model.data_preprocessor.size = SEG_HW
    if package == 'mmdet':
        _fewer_rois(cfg.model.train_cfg)

    torch.manual_seed(0)
    model = _build_model(cfg)
    model.train()

    data = BATCH[package](model)
    losses = model(**data, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert math.isfinite(loss.item()), losses
    loss.backward()

    # Every trainable parameter takes part (DDP's default,
    # find_unused_parameters=False, fails otherwise) with a finite gradient.
    no_grad = [
        name for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None
                                or not torch.isfinite(p.grad).all())
    ]
    assert not no_grad, f'parameters without a finite grad: {no_grad}'
    assert any(p.grad.abs().sum() > 0 for p in model.backbone.parameters())

    _check_weight_decay(cfg, model, package)


def _check_weight_decay(cfg, model, package):
    """The optimizer the config builds decays what its recipe says."""
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_wd = cfg.optim_wrapper.optimizer.weight_decay
    decay_of = {}
    for group in optim_wrapper.optimizer.param_groups:
        for p in group['params']:
            decay_of[id(p)] = group.get('weight_decay', base_wd)
    named = dict(model.backbone.named_parameters())
    special = {n: p for n, p in named.items() if EXEMPT.search(n)}
    assert special, 'no Pola parameters found in the backbone'
    # PVT detection / segmentation follow the PVT recipe: no paramwise_cfg.
    exempt = package == 'mmpretrain' or cfg.model.backbone.type == 'PolaSwin'
    for name, p in special.items():
        expected = 0. if exempt else base_wd
        assert decay_of[id(p)] == pytest.approx(expected), (name,
                                                            decay_of[id(p)])
    # Ordinary weights keep the configured decay.
    linear = next(n for n in named if n.endswith('mlp.fc1.weight')
                  or n.endswith('ffn.layers.0.0.weight'))
    assert decay_of[id(named[linear])] == pytest.approx(base_wd), linear


@pytest.mark.parametrize('rel_path', [
    'mmdet/pola_pvt/retinanet_pola-pvt-t_fpn_1x_coco.py',
    'mmseg/pola_swin/upernet_pola-swin-t_8xb2-160k_ade20k-512x512.py',
])
def test_missing_checkpoint_fails_at_init_weights(rel_path, tmp_path):
    cfg = _load(rel_path)
    missing = str(tmp_path / 'no_such_dir' / 'pola_missing.pth')
    cfg.model.backbone.init_cfg.checkpoint = missing
    model = _build_model(cfg)  # building does not read the checkpoint
    with pytest.raises(FileNotFoundError) as err:
        model.init_weights()
    assert missing in str(err.value)


CONFIG_FOLDERS = sorted({osp.dirname(p) for p in CONFIGS})


@pytest.mark.parametrize('folder', CONFIG_FOLDERS)
def test_folder_documents_its_configs(folder):
    """Each config folder has a README and a metafile listing its configs."""
    import yaml
    path = osp.join(CONFIG_DIR, folder)
    configs = {p for p in CONFIGS if osp.dirname(p) == folder}
    with open(osp.join(path, 'README.md'), encoding='utf-8') as f:
        readme = f.read()
    with open(osp.join(path, 'metafile.yml'), encoding='utf-8') as f:
        meta = yaml.safe_load(f)
    collections = {c['Name'] for c in meta['Collections']}
    listed = []
    for entry in meta['Models']:
        assert entry['In Collection'] in collections, entry['Name']
        config = entry['Config']
        assert config.startswith('configs/'), config
        assert osp.isfile(osp.join(ROOT, config)), config
        assert entry['Name'] == osp.splitext(osp.basename(config))[0]
        listed.append(osp.relpath(osp.join(ROOT, config), CONFIG_DIR))
    assert sorted(listed) == sorted(configs)
    for rel in configs:
        assert osp.basename(rel) in readme, f'{rel} missing from README'
