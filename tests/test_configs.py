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
# configs/custom: the fine-tuning examples of docs/custom_dataset.md (not
# model-zoo recipes), trained by tests/test_custom_dataset.py
CONFIGS = sorted(
    osp.relpath(p, CONFIG_DIR)
    for p in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True)
    if not osp.relpath(p, CONFIG_DIR).startswith('custom' + osp.sep))
PACKAGES = ('mmdet', 'mmseg', 'mmpretrain')

# Small inputs: detection 2 x 128x160 with 2 boxes + masks each,
# segmentation 2 x 128x160, classification 2 x 64x64.
DET_HW = SEG_HW = (128, 160)
CLS_HW = (64, 64)
# Two-stage detectors: RoIs sampled per image in the test (512 in the
# configs, which makes the box heads dominate the CPU time).
TEST_ROIS = 64

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
    if package in ('mmdet', 'mmseg') and backbone.type == 'PolaPVT':
        # Raw block outputs into the FPN, as every PVT reference.
        assert backbone.out_norms is False
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


def _expected_decay(cfg, package, name, param):
    """The weight decay the reference recipe gives a backbone parameter.

    * ImageNet (the released code, PF ``optimizer.py``): none on 1-d
      tensors, biases and the skip lists (Swin: relative position tables);
      positional encodings, position embeddings, ``scale`` and ``power``
      decayed.
    * Swin detection / segmentation (the Swin authors' and Agent-Attention
      configs): none on ``*norm*``, relative position tables and
      ``absolute_pos_embed``; everything else decayed, biases included.
    * PVT detection / segmentation (PVT, Agent-Attention): every parameter.
    """
    base_wd = cfg.optim_wrapper.optimizer.weight_decay
    if package == 'mmpretrain':
        exempt = (param.ndim <= 1 or name.endswith('.bias')
                  or 'relative_position_bias_table' in name)
    elif cfg.model.backbone.type == 'PolaSwin':
        exempt = any(k in name for k in (
            'norm', 'relative_position_bias_table', 'absolute_pos_embed'))
    else:
        exempt = False
    return 0. if exempt else base_wd


def _check_weight_decay(cfg, model, package):
    """The optimizer the config builds decays what its recipe says, for
    every backbone parameter; the Pola parameters are decayed everywhere."""
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    base_wd = cfg.optim_wrapper.optimizer.weight_decay
    decay_of = {}
    for group in optim_wrapper.optimizer.param_groups:
        for p in group['params']:
            decay_of[id(p)] = group.get('weight_decay', base_wd)
    named = {f'backbone.{n}': p for n, p in model.backbone.named_parameters()}
    expected = {n: _expected_decay(cfg, package, n, p)
                for n, p in named.items()}
    wrong = {n: (decay_of[id(p)], expected[n]) for n, p in named.items()
             if decay_of[id(p)] != pytest.approx(expected[n])}
    assert not wrong, f'(weight decay, expected): {wrong}'
    pola = [n for n in named if re.search(
        r'(\.positional_encoding|\.attn\.scale|\.attn\.power|pos_embed\d)$',
        n)]
    assert pola and all(decay_of[id(named[n])] == pytest.approx(base_wd)
                        for n in pola)
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


# --------------------------------------------------------------------------
# The recipes behind the paper's numbers (../shared/docs/recipes.md), pinned.

# ImageNet: images per GPU (8 GPUs), lr, gradient clipping, drop path,
# epochs, warm-up epochs, warm-up start factor, min lr / lr.
CLS_RECIPES = {
    'mmpretrain/pola_pvt/pola-pvt-tiny_8xb128_in1k.py':
        (128, 1e-3, None, 0.1, 310, 5, 2e-3, 0.02),
    'mmpretrain/pola_pvt/pola-pvt-small_8xb64_in1k.py':
        (64, 5e-4, None, 0.1, 310, 5, 2e-3, 0.02),
    'mmpretrain/pola_pvt/pola-pvt-medium_8xb64_in1k.py':
        (64, 5e-4, 1.0, 0.3, 310, 5, 2e-3, 0.02),
    'mmpretrain/pola_pvt/pola-pvt-large_8xb32_in1k.py':
        (32, 2.5e-4, 1.0, 0.3, 310, 5, 2e-3, 0.02),
    'mmpretrain/pola_swin/pola-swin-tiny_8xb128_in1k.py':
        (128, 1e-3, 5.0, 0.2, 300, 20, 1e-3, 0.01),
    'mmpretrain/pola_swin/pola-swin-small_8xb128_in1k.py':
        (128, 1e-3, 5.0, 0.3, 300, 20, 1e-3, 0.01),
    'mmpretrain/pola_swin/pola-swin-base_8xb64_in1k.py':
        (64, 5e-4, 5.0, 0.5, 300, 20, 1e-3, 0.01),
    'mmpretrain/pola_swin/pola-swin-base_in1k-pre_8xb64_in1k-384px.py':
        (64, 2e-5, 5.0, 0.5, 30, 5, 1e-3, 0.01),
}


def test_every_imagenet_config_has_a_recipe():
    assert sorted(CLS_RECIPES) == sorted(
        p for p in CONFIGS if _package(p) == 'mmpretrain')


@pytest.mark.parametrize('rel_path', sorted(CLS_RECIPES))
def test_imagenet_recipe(rel_path):
    batch, lr, clip, drop_path, epochs, warmup, start, min_ratio = \
        CLS_RECIPES[rel_path]
    cfg = _load(rel_path)
    assert f'_8xb{batch}_' in osp.basename(rel_path)  # the name says it
    assert cfg.train_dataloader.batch_size == batch
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=8 * batch)
    opt = cfg.optim_wrapper.optimizer
    assert opt.type == 'AdamW' and opt.lr == pytest.approx(lr)
    if '384px' not in rel_path:
        # the released code's linear scaling: 5e-4 per 512 images
        assert opt.lr == pytest.approx(5e-4 * 8 * batch / 512)
        assert opt.weight_decay == 0.05
    clip_cfg = cfg.optim_wrapper.get('clip_grad')
    assert (clip_cfg and clip_cfg.max_norm) == clip
    assert cfg.model.backbone.drop_path_rate == drop_path
    assert cfg.train_cfg.max_epochs == epochs
    warm, cosine = cfg.param_scheduler
    assert (warm.type, warm.end, warm.start_factor) == ('LinearLR', warmup,
                                                        start)
    assert (cosine.type, cosine.begin, cosine.eta_min_ratio) == (
        'CosineAnnealingLR', warmup, min_ratio)
    assert warm.convert_to_iter_based and cosine.convert_to_iter_based
    # the best epoch is kept (the reported number), with bounded disk use
    ckpt = cfg.default_hooks.checkpoint
    assert ckpt.save_best == 'accuracy/top1' and ckpt.rule == 'greater'
    assert 0 < ckpt.max_keep_ckpts <= 3


def _lr_curve(cfg, epoch_length):
    """lr at the start of every iteration of ``cfg``'s schedule, stepped as
    the Runner does (iteration-based schedulers after every iteration)."""
    from mmengine.registry import PARAM_SCHEDULERS
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=cfg.optim_wrapper.optimizer.lr)
    schedulers = []
    for sched in cfg.param_scheduler:
        sched = sched.copy()
        if sched.pop('convert_to_iter_based', False):
            cls = PARAM_SCHEDULERS.get(sched.pop('type'))
            schedulers.append(cls.build_iter_from_epoch(
                optimizer, epoch_length=epoch_length, **sched))
        else:
            schedulers.append(PARAM_SCHEDULERS.build(
                dict(sched, optimizer=optimizer)))
    lrs = []
    for _ in range(cfg.train_cfg.max_epochs * epoch_length):
        lrs.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        for s in schedulers:
            s.step()
    return lrs


@pytest.mark.parametrize('rel_path, lr, warmup_lr, min_lr', [
    # PVT: WARMUP_LR 1e-6, MIN_LR 1e-5 per 512 images; 300 + 10 cool-down
    ('mmpretrain/pola_pvt/pola-pvt-tiny_8xb128_in1k.py', 1e-3, 2e-6, 2e-5),
    ('mmpretrain/pola_pvt/pola-pvt-large_8xb32_in1k.py', 2.5e-4, 5e-7, 5e-6),
    # Swin: 5e-7, 5e-6 per 512 images
    ('mmpretrain/pola_swin/pola-swin-tiny_8xb128_in1k.py', 1e-3, 1e-6, 1e-5),
    ('mmpretrain/pola_swin/pola-swin-base_8xb64_in1k.py', 5e-4, 5e-7, 5e-6),
    # Swin-B 384 fine-tune: 2e-5, 2e-8, 2e-7 per 512 images
    ('mmpretrain/pola_swin/pola-swin-base_in1k-pre_8xb64_in1k-384px.py',
     2e-5, 2e-8, 2e-7),
])
def test_imagenet_lr_schedule(rel_path, lr, warmup_lr, min_lr):
    cfg = _load(rel_path)
    n = 20  # iterations per epoch
    lrs = _lr_curve(cfg, n)
    warmup = cfg.param_scheduler[0].end
    assert lrs[0] == pytest.approx(warmup_lr)
    assert lrs[warmup * n] == pytest.approx(lr)
    assert max(lrs) == pytest.approx(lr)
    cosine_end = cfg.param_scheduler[1].end
    assert lrs[cosine_end * n - 1] == pytest.approx(min_lr, rel=1e-2)
    # PVT's 10 cool-down epochs stay at the minimum lr
    assert cfg.train_cfg.max_epochs - cosine_end == (
        10 if 'pola_pvt' in rel_path else 0)
    assert all(x == lrs[-1] for x in lrs[cosine_end * n - 1:])


def _write_jpeg(path, hw=(300, 500)):
    from PIL import Image
    gen = torch.Generator().manual_seed(0)
    # smooth content plus noise: a realistic JPEG, not flat colour
    h, w = hw
    ys = torch.linspace(0, 1, h)[:, None, None]
    xs = torch.linspace(0, 1, w)[None, :, None]
    img = 255 * (0.5 + 0.25 * torch.sin(12 * xs + 7 * ys + torch.tensor(
        [0., 2., 4.])))
    img = img + 20 * torch.rand(h, w, 3, generator=gen)
    Image.fromarray(img.clamp(0, 255).to(torch.uint8).numpy()).save(
        path, quality=90)
    return path


def _run_test_pipeline(cfg, path):
    from mmcv.transforms import Compose
    from mmpretrain.registry import TRANSFORMS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        pipeline = Compose([
            TRANSFORMS.build(t) for t in cfg.test_dataloader.dataset.pipeline
        ])
        packed = pipeline(dict(img_path=str(path)))
    # PackInputs: (C, H, W) in the loaded (BGR) order -> (H, W, RGB)
    return packed['inputs'].flip(0).permute(1, 2, 0).numpy()


@pytest.mark.parametrize('rel_path', sorted(CLS_RECIPES))
def test_imagenet_test_pipeline_is_the_released_evaluation(rel_path,
                                                           tmp_path):
    """On a non-square JPEG: PIL decoding, bicubic resize to a 256x256
    square (aspect ratio not kept), centre crop 224 -- exactly; at 384 a
    bicubic resize to 384x384 and no crop."""
    import numpy as np
    from PIL import Image
    import mmpretrain.datasets  # noqa: F401  (registers the transforms)
    cfg = _load(rel_path)
    path = _write_jpeg(tmp_path / 'img.jpg', (300, 500))
    out = _run_test_pipeline(cfg, path)

    ref = Image.open(path).convert('RGB')
    if '384px' in rel_path:
        ref = ref.resize((384, 384), Image.BICUBIC)
    else:
        ref = ref.resize((256, 256), Image.BICUBIC).crop((16, 16, 240, 240))
    ref = np.asarray(ref)
    assert out.shape == ref.shape == ((384, 384, 3) if '384px' in rel_path
                                      else (224, 224, 3))
    assert np.array_equal(out, ref)
    if '384px' not in rel_path:
        # not the aspect-preserving view (short side 256, centre crop)
        short = Image.open(path).convert('RGB').resize((427, 256),
                                                       Image.BICUBIC)
        left = (427 - 224) // 2
        kept = np.asarray(short.crop((left, 16, left + 224, 240)))
        assert np.abs(out.astype(int) - kept).mean() > 5


def test_swin_b_384_is_a_finetune_of_the_224_model(tmp_path):
    """The 384 config starts from the converted 224 classifier: backbone
    positional encodings and relative position tables resized to the 384
    sizes, every other tensor and the head loaded as they are. Checked on
    the Tiny layout (same mechanism, a quarter of the size)."""
    from mmpola.checkpoint import convert_to_mmpretrain, resize_grid_param
    from mmpola.testing import make_official_checkpoint
    rel = 'mmpretrain/pola_swin/pola-swin-base_in1k-pre_8xb64_in1k-384px.py'
    cfg = _load(rel)
    backbone = cfg.model.backbone
    ckpt = 'checkpoints/pola-swin-base_in1k.pth'
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=ckpt)
    assert cfg.model.head.init_cfg == dict(
        type='Pretrained', checkpoint=ckpt, prefix='head.')
    assert (backbone.arch, backbone.pretrain_img_size, backbone.window_size,
            backbone.pola_window_size) == ('base', 384, 12, 96)
    assert cfg.optim_wrapper.optimizer.weight_decay == 1e-8
    assert cfg.model.head.in_channels == 1024
    assert cfg.load_from is None

    # the 224 classifier, released -> converted (the converter's format)
    weights = make_official_checkpoint('pola_swin_tiny_patch4_224',
                                       str(tmp_path / 'unused.pth'))
    released = tmp_path / 'pola_swin_tiny.pth'
    torch.save(dict(model=weights, epoch=299), str(released))
    state, _ = convert_to_mmpretrain(str(released))
    converted = tmp_path / 'pola-swin-tiny_in1k.pth'
    torch.save(dict(state_dict=state), str(converted))

    backbone.arch = 'tiny'
    backbone.init_cfg.checkpoint = str(converted)
    cfg.model.head.in_channels = 768
    cfg.model.head.init_cfg.checkpoint = str(converted)
    model = _build_model(cfg)
    model.init_weights()

    own = model.state_dict()
    resized = 0
    for key, value in state.items():
        if key not in own:
            continue  # buffers rebuilt for the 384 sizes
        if own[key].shape == value.shape:
            assert torch.equal(own[key], value), key
        else:
            assert re.search(r'(positional_encoding|relative_position_bias_'
                             r'table)$', key), key
            expected = resize_grid_param(key[len('backbone.'):], value,
                                         own[key].shape)
            assert torch.allclose(own[key], expected), key
            resized += 1
    assert resized > 0
    assert torch.equal(own['head.fc.weight'], state['head.fc.weight'])


# Detection and segmentation: the decisions of issue 20, item 4
# (README "Provenance" of each folder).
DENSE_RECIPES = {
    # config: (lr, weight decay, drop path, images per GPU, warm-up iters)
    'mmdet/pola_pvt/retinanet_pola-pvt-t_fpn_1x_coco.py':
        (1e-4, 1e-4, 0.1, 2, 500),
    'mmdet/pola_pvt/retinanet_pola-pvt-s_fpn_1x_coco.py':
        (1e-4, 1e-4, 0.1, 2, 500),
    'mmdet/pola_pvt/mask-rcnn_pola-pvt-t_fpn_1x_coco.py':
        (2e-4, 1e-4, 0.1, 2, 500),
    'mmdet/pola_pvt/mask-rcnn_pola-pvt-s_fpn_1x_coco.py':
        (2e-4, 1e-4, 0.2, 2, 500),
    'mmdet/pola_swin/mask-rcnn_pola-swin-t_fpn_ms-crop-1x_coco.py':
        (1e-4, 0.05, 0.1, 2, 500),
    'mmdet/pola_swin/mask-rcnn_pola-swin-t_fpn_ms-crop-3x_coco.py':
        (1e-4, 0.05, 0.1, 2, 500),
    'mmdet/pola_swin/cascade-mask-rcnn_pola-swin-t_fpn_4conv1fc-giou_ms-crop-3x_coco.py':  # noqa
        (1e-4, 0.05, 0.1, 2, 500),
    'mmseg/pola_pvt/fpn_pola-pvt-t_8xb2-40k_ade20k-512x512.py':
        (2e-4, 1e-4, 0.1, 2, 0),
    'mmseg/pola_pvt/fpn_pola-pvt-s_8xb2-40k_ade20k-512x512.py':
        (2e-4, 1e-4, 0.1, 2, 0),
    'mmseg/pola_swin/upernet_pola-swin-t_8xb2-160k_ade20k-512x512.py':
        (6e-5, 0.01, 0.3, 2, 1500),
}


def test_every_dense_config_has_a_recipe():
    assert sorted(DENSE_RECIPES) == sorted(
        p for p in CONFIGS if _package(p) != 'mmpretrain')


@pytest.mark.parametrize('rel_path', sorted(DENSE_RECIPES))
def test_dense_recipe(rel_path):
    lr, wd, drop_path, batch, warmup = DENSE_RECIPES[rel_path]
    cfg = _load(rel_path)
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', lr, wd)
    assert cfg.optim_wrapper.get('type', 'OptimWrapper') == 'OptimWrapper'
    assert not cfg.optim_wrapper.get('clip_grad')
    assert cfg.model.backbone.drop_path_rate == drop_path
    assert cfg.train_dataloader.batch_size == batch
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=8 * batch)
    first = cfg.param_scheduler[0]
    if warmup:
        assert (first.type, first.by_epoch, first.end) == ('LinearLR', False,
                                                           warmup)
    else:  # Semantic FPN: poly 0.9 to 0 from the first iteration
        assert len(cfg.param_scheduler) == 1
        assert (first.type, first.power, first.eta_min, first.end) == (
            'PolyLR', 0.9, 0., cfg.train_cfg.max_iters)
    name = osp.basename(rel_path)
    if '_8xb' in name:
        assert f'_8xb{batch}-' in name


@pytest.mark.parametrize('rel_path', CONFIGS)
def test_auto_scale_lr_present(rel_path):
    cfg = _load(rel_path)
    assert cfg.auto_scale_lr.enable is False
    assert cfg.auto_scale_lr.base_batch_size == \
        8 * cfg.train_dataloader.batch_size


def _load_train_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'mmpola_tools_train', osp.join(ROOT, 'tools', 'train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('rel_path, gpus, expected_lr', [
    # 1 process x 2 images of a 16-image recipe: lr x 1/8
    ('mmseg/pola_pvt/fpn_pola-pvt-t_8xb2-40k_ade20k-512x512.py', 1,
     2e-4 / 8),
    ('mmdet/pola_pvt/retinanet_pola-pvt-t_fpn_1x_coco.py', 1, 1e-4 / 8),
    # 1 x 64 images of a 512-image recipe
    ('mmpretrain/pola_pvt/pola-pvt-small_8xb64_in1k.py', 1, 5e-4 / 8),
])
def test_auto_scale_lr_is_used(rel_path, gpus, expected_lr, tmp_path,
                               monkeypatch):
    """``tools/train.py --auto-scale-lr`` switches it on, and the Runner
    that the tools build (MMEngine's, for all three codebases) scales the
    optimizer's lr by (GPUs x batch) / base_batch_size before building the
    schedulers (so warm-up start and minimum lr follow)."""
    import sys
    tool = _load_train_tool()
    built = {}

    class FakeRunner:
        def train(self):
            pass

    def fake_build_runner(cfg):
        built['cfg'] = cfg
        return FakeRunner()

    monkeypatch.setattr(tool, 'build_runner', fake_build_runner)
    monkeypatch.setattr(sys, 'argv', [
        'tools/train.py', osp.join(CONFIG_DIR, rel_path), '--auto-scale-lr',
        '--work-dir', str(tmp_path)])
    tool.main()
    cfg = built['cfg']
    assert cfg.auto_scale_lr.enable is True

    from mmengine.runner import Runner
    cfg.model.backbone.init_cfg = None
    runner = Runner.from_cfg(cfg)  # what tools/train.py builds
    assert runner.auto_scale_lr == cfg.auto_scale_lr
    assert runner.world_size == gpus
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    runner.scale_lr(runner.optim_wrapper, runner.auto_scale_lr)
    lrs = [g['lr'] for g in runner.optim_wrapper.optimizer.param_groups]
    assert lrs and all(lr == pytest.approx(expected_lr) for lr in lrs), \
        sorted(set(lrs))
