"""Building models for the analysis tools and running them on fake data.

A model spec is one of

* a config file (``configs/mmdet/...py``, ``mmdet::pvt/...py`` also works):
  the whole detector / segmentor / classifier, or only its backbone, or a
  config whose ``model`` is a backbone;
* ``Type:arch`` for a registered backbone, e.g. ``PolaPVT:tiny``,
  ``PolaSwin:small``;
* a released model name of ``mmpola.testing.OFFICIAL_MODELS``
  (``pola_pvt_tiny`` ... ``pola_swin_base_patch4_384``), as a backbone;
* a key of ``NAMED`` (the benchmark's backbones and detectors, e.g.
  ``pvt_t`` = mmdet's ``PyramidVisionTransformer`` with the settings of
  ``pvt/retinanet_pvt-t_fpn_1x_coco.py``).

Models are built without loading any checkpoint (random initialisation).
"""
import copy
import importlib
import os.path as osp

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import DefaultScope

SCOPES = ('mmdet', 'mmseg', 'mmpretrain')

# backbone settings of mmdet 3.3.0's baseline configs
MMDET_PVT_T = dict(type='mmdet.PyramidVisionTransformer',
                   num_layers=[2, 2, 2, 2])  # pvt/retinanet_pvt-t_fpn_1x_coco
MMDET_SWIN_T = dict(  # swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco
    type='mmdet.SwinTransformer', embed_dims=96, depths=[2, 2, 6, 2],
    num_heads=[3, 6, 12, 24], window_size=7, mlp_ratio=4, qkv_bias=True,
    qk_scale=None, drop_rate=0., attn_drop_rate=0., drop_path_rate=0.2,
    patch_norm=True, out_indices=(0, 1, 2, 3), with_cp=False,
    convert_weights=True)

# name -> (spec, description); the Pola models and their baselines
NAMED = {
    'pola_pvt_t': (dict(type='PolaPVT', arch='tiny'), 'Pola-PVT-T backbone'),
    'pvt_t': (MMDET_PVT_T, 'mmdet PVT-T backbone'),
    'pola_swin_t': (dict(type='PolaSwin', arch='tiny'),
                    'Pola-Swin-T backbone (global Pola stages)'),
    'swin_t': (MMDET_SWIN_T, 'mmdet Swin-T backbone'),
    'swin_t_mmpretrain': (dict(type='mmpretrain.SwinTransformer',
                               arch='tiny', out_indices=(0, 1, 2, 3)),
                          'mmpretrain Swin-T backbone (no mmcv ops needed)'),
    'retinanet_pola_pvt_t': (
        'configs/mmdet/pola_pvt/retinanet_pola-pvt-t_fpn_1x_coco.py',
        'RetinaNet + Pola-PVT-T'),
    'retinanet_pvt_t': ('mmdet::pvt/retinanet_pvt-t_fpn_1x_coco.py',
                        'RetinaNet + PVT-T'),
    'mask_rcnn_pola_swin_t': (
        'configs/mmdet/pola_swin/mask-rcnn_pola-swin-t_fpn_ms-crop-1x_coco.py',
        'Mask R-CNN + Pola-Swin-T'),
    'mask_rcnn_swin_t': ('mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
                         'Mask R-CNN + Swin-T'),
}
# Pola model -> its baseline
PAIRS = {
    'pola_pvt_t': 'pvt_t',
    'pola_swin_t': 'swin_t',
    'retinanet_pola_pvt_t': 'retinanet_pvt_t',
    'mask_rcnn_pola_swin_t': 'mask_rcnn_swin_t',
}


def _import_scope(scope, models_only=False):
    """The codebase's MODELS registry, filled (``models_only``: import
    only ``{scope}.models``, enough for backbones)."""
    import mmpola  # noqa: F401  (registers PolaPVT, PolaSwin)
    if models_only:
        importlib.import_module(f'{scope}.models')
    else:
        importlib.import_module(f'{scope}.utils').register_all_modules(
            init_default_scope=False)
    return importlib.import_module(f'{scope}.registry').MODELS


def _drop_pretrained(model_cfg):
    """No checkpoint loading when the model is built (init_weights is not
    called anyway; this also keeps configs from naming missing files)."""
    if isinstance(model_cfg, dict):
        init = model_cfg.get('init_cfg')
        if isinstance(init, dict) and init.get('type') == 'Pretrained':
            model_cfg['init_cfg'] = None
        model_cfg.pop('pretrained', None)
        for value in model_cfg.values():
            _drop_pretrained(value)
    elif isinstance(model_cfg, (list, tuple)):
        for value in model_cfg:
            _drop_pretrained(value)


def load_config(path, cfg_options=None):
    if '::' in path:  # mmdet::pvt/... -> the package's .mim config
        scope, rel = path.split('::', 1)
        pkg = importlib.import_module(scope)
        path = osp.join(osp.dirname(pkg.__file__), '.mim', 'configs', rel)
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def task_of(model_cfg, scope):
    """'backbone', 'det', 'seg' or 'cls'."""
    if 'backbone' not in model_cfg or scope is None:
        return 'backbone'
    return {'mmdet': 'det', 'mmseg': 'seg', 'mmpretrain': 'cls'}[scope]


def build_model(spec, cfg_options=None, backbone_only=False):
    """Build a model (module docstring) and describe it.

    Returns:
        tuple: (model in eval mode, info dict with ``task``
        ('backbone' / 'det' / 'seg' / 'cls'), ``whole_task`` (the task of
        the config's whole model, also with ``backbone_only``), ``name``,
        ``cfg`` (the model config), ``pad_divisor`` (inputs are padded to
        it, det / seg)).
    """
    name = spec
    if isinstance(spec, str) and spec in NAMED:
        spec = NAMED[spec][0]
    if isinstance(spec, str) and not spec.endswith('.py'):
        from mmpola.testing import OFFICIAL_MODELS
        if spec in OFFICIAL_MODELS:
            spec = dict(OFFICIAL_MODELS[spec])
        elif ':' in spec and '::' not in spec:
            type_, arch = spec.split(':', 1)
            spec = dict(type=type_, arch=arch)
        else:
            raise ValueError(
                f'Unknown model {spec!r}: give a config file, Type:arch '
                f'(e.g. PolaPVT:tiny), a released name ({sorted(OFFICIAL_MODELS)})'
                f' or one of {sorted(NAMED)}')
    pad_divisor = 1
    if isinstance(spec, dict):
        # 'mmdet.X' from mmdet's registry, others (PolaPVT...) from the root
        scope = spec['type'].split('.')[0] if '.' in spec['type'] else None
        cfg = Config(dict(model=copy.deepcopy(spec)))
        if cfg_options:  # keys relative to the model ('model.' optional)
            cfg.merge_from_dict({
                k if k.startswith('model.') else f'model.{k}': v
                for k, v in cfg_options.items()})
        model_cfg = cfg.model
    else:
        cfg = load_config(spec, cfg_options)
        scope = cfg.get('default_scope', 'mmdet')
        model_cfg = cfg.model  # a ConfigDict: mmdet reads train_cfg.rpn
    whole_task = task_of(model_cfg, scope)
    if backbone_only and 'backbone' in model_cfg:
        model_cfg = model_cfg['backbone']
    task = task_of(model_cfg, scope)
    if task in ('det', 'seg'):
        pre = model_cfg.get('data_preprocessor') or {}
        pad_divisor = (pre.get('pad_size_divisor') or pre.get('size_divisor')
                       or 1)
    _drop_pretrained(model_cfg)
    if scope is None:
        import mmpola  # noqa: F401
        from mmengine.registry import MODELS as registry
    else:
        registry = _import_scope(scope, models_only=task == 'backbone')
    with DefaultScope.overwrite_default_scope(scope):
        # parts built through the root registry (data preprocessors) are
        # looked up in the codebase's scope
        model = registry.build(model_cfg)
    model.eval()
    return model, dict(task=task, whole_task=whole_task, name=name,
                       cfg=model_cfg, scope=scope, pad_divisor=pad_divisor)


def padded_shape(h, w, divisor):
    return -(-h // divisor) * divisor, -(-w // divisor) * divisor


# ------------------------------------------------------- fake data samples


def make_data_samples(task, batch, img_hw, pad_hw, with_gt=False,
                      num_classes=80, seed=0):
    """Data samples with the metainfo a model needs in 'tensor' / 'predict'
    mode and, with ``with_gt``, random ground truth for 'loss' mode."""
    if task in ('backbone', ):
        return None
    gen = torch.Generator().manual_seed(seed)
    H, W = img_hw
    samples = []
    for _ in range(batch):
        if task == 'det':
            from mmdet.structures import DetDataSample
            from mmdet.structures.mask import BitmapMasks
            from mmengine.structures import InstanceData
            s = DetDataSample(metainfo=dict(
                img_shape=(H, W), ori_shape=(H, W), pad_shape=tuple(pad_hw),
                batch_input_shape=tuple(pad_hw), scale_factor=(1., 1.)))
            if with_gt:
                k = 3
                xy = torch.rand(k, 2, generator=gen) * torch.tensor(
                    [W * 0.6, H * 0.6])
                wh = (torch.rand(k, 2, generator=gen) * 0.3 + 0.1) * \
                    torch.tensor([W, H])
                boxes = torch.cat([xy, xy + wh], dim=1)
                masks = np.zeros((k, H, W), dtype=np.uint8)
                for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
                    masks[i, y0:y1, x0:x1] = 1
                s.gt_instances = InstanceData(
                    bboxes=boxes,
                    labels=torch.randint(0, num_classes, (k, ), generator=gen),
                    masks=BitmapMasks(masks, H, W))
        elif task == 'seg':
            from mmseg.structures import SegDataSample
            from mmengine.structures import PixelData
            s = SegDataSample(metainfo=dict(
                img_shape=(H, W), ori_shape=(H, W), pad_shape=tuple(pad_hw),
                batch_input_shape=tuple(pad_hw)))
            if with_gt:
                s.gt_sem_seg = PixelData(data=torch.randint(
                    0, num_classes, (1, *pad_hw), generator=gen))
        else:  # cls
            from mmpretrain.structures import DataSample
            s = DataSample(metainfo=dict(img_shape=(H, W)))
            if with_gt:
                s.set_gt_label(int(torch.randint(0, num_classes, (1, ),
                                                 generator=gen)))
        samples.append(s)
    return samples


def num_classes_of(model_cfg):
    for key in ('bbox_head', 'decode_head', 'head'):
        head = model_cfg.get(key)
        if isinstance(head, dict) and 'num_classes' in head:
            return head['num_classes']
    roi = model_cfg.get('roi_head') or {}
    bbox = roi.get('bbox_head')
    if isinstance(bbox, list):
        bbox = bbox[0]
    if isinstance(bbox, dict) and 'num_classes' in bbox:
        return bbox['num_classes']
    return 80


class TensorForward(nn.Module):
    """``forward(x)``: a backbone's outputs or a whole model's raw head
    outputs (mode 'tensor': no post-processing, as MMDetection's and
    MMSegmentation's get_flops tools count them), traceable by the jit."""

    def __init__(self, model, task, data_samples=None):
        super().__init__()
        self.model = model
        self.task = task
        self.data_samples = data_samples

    def forward(self, x):
        if self.task == 'backbone':
            return self.model(x)
        return self.model(x, self.data_samples, mode='tensor')


def flatten_tensors(out):
    """All tensors of a nested output (tuple / list / dict)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flatten_tensors(o)]
    return []


def training_loss(model, task, x, data_samples):
    """A scalar loss for a training step: the model's losses in 'loss' mode
    (whole models, random ground truth), or the mean of every output
    (backbones)."""
    if task == 'backbone':
        return sum(t.float().mean() for t in flatten_tensors(model(x)))
    losses = model(x, data_samples, mode='loss')
    return sum(t.sum() for t in flatten_tensors(losses) if t.requires_grad)
