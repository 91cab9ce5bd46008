"""The released PolaFormer classifiers as timm models.

``import mmpola`` (with timm installed) registers

    pola_pvt_tiny, pola_pvt_small, pola_pvt_medium, pola_pvt_large,
    pola_swin_tiny, pola_swin_small, pola_swin_base, pola_swin_base_384

so that ``timm.create_model(name, pretrained=True, ...)`` builds the
classifier the authors released: mmpola's backbone (the same ``PolaPVT`` /
``PolaSwin`` the MMEngine configs use) with timm's conventions around it
(``forward_features`` / ``forward_head``, ``reset_classifier``,
``forward_intermediates``, ``features_only``, ``feature_info``, the released
evaluation view in ``pretrained_cfg``).

Weights are always read by mmpola's safe reader
(:func:`mmpola.utils.torch_load.safe_load`): released ``.pth`` files,
converted ``.pth`` / ``.safetensors`` (``backbone.*``, ``head.fc.*``) and
timm/Hugging Face folders (``config.json`` + ``model.safetensors``), e.g.
``pretrained_cfg_overlay=dict(file='pola_pvt_tiny.pth')`` or
``timm.create_model('local-dir:/path/to/folder')``.
"""
import os.path as osp
from collections import OrderedDict

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import (build_model_with_cfg, generate_default_cfgs,
                         register_model)
from timm.models._features import FeatureGetterNet, feature_take_indices

__all__ = ['PolaFormerClassifier', 'load_weights', 'MODEL_ARGS']

HUB = 'https://huggingface.co/ZachMeng/PolaFormer/resolve/main/'

# timm name -> (family, backbone arguments) of the released models
MODEL_ARGS = {
    'pola_pvt_tiny': ('pvt', dict(arch='tiny', drop_path_rate=0.1)),
    'pola_pvt_small': ('pvt', dict(arch='small', drop_path_rate=0.1)),
    'pola_pvt_medium': ('pvt', dict(arch='medium', drop_path_rate=0.3)),
    'pola_pvt_large': ('pvt', dict(arch='large', drop_path_rate=0.3)),
    'pola_swin_tiny': ('swin', dict(arch='tiny', drop_path_rate=0.2)),
    'pola_swin_small': ('swin', dict(arch='small', drop_path_rate=0.3)),
    'pola_swin_base': ('swin', dict(arch='base', drop_path_rate=0.5)),
    'pola_swin_base_384': ('swin', dict(
        arch='base', drop_path_rate=0.5, pretrain_img_size=384,
        window_size=12, pola_window_size=96)),
}


def _cfg(name, size=224):
    family = MODEL_ARGS[name][0]
    stem = 'patch_embed1' if family == 'pvt' else 'patch_embed'
    return {
        'url': HUB + name + '.pth',
        'custom_load': True,
        'num_classes': 1000,
        'input_size': (3, size, size),
        'pool_size': None,
        # the released evaluation view (recipes: PF data/build.py): a
        # bicubic resize of the whole image to a square, then a centre crop
        # of 224 / 256 (224 models) or none (384)
        'crop_pct': 0.875 if size == 224 else 1.0,
        'crop_mode': 'squash',
        'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': f'backbone.{stem}.projection',
        'classifier': 'head',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2501.15061',
        'origin_url': 'https://github.com/ZacharyMeng/PolaFormer',
    }


default_cfgs = generate_default_cfgs({
    f'{name}.in1k': _cfg(name, 384 if name.endswith('384') else 224)
    for name in MODEL_ARGS})


class PolaFormerClassifier(nn.Module):
    """A released PolaFormer ImageNet classifier in timm's form.

    ``backbone`` (mmpola's ``PolaPVT`` / ``PolaSwin``, all four stage maps,
    no extra norms) -> ``norm`` (Swin's final LayerNorm; PVT has none
    applied) -> mean over the map -> ``head``.

    Args:
        family (str): 'pvt' or 'swin'.
        num_classes (int): classes of ``head`` (0: no head, features).
        in_chans (int): input channels.
        global_pool (str): 'avg' (mean over the map) or '' (no pooling).
        drop_rate (float): dropout before the head.
        **backbone_args: ``PolaPVT`` / ``PolaSwin`` arguments (``arch``,
            ``drop_path_rate``, ...).

    Shapes: ``forward_features``: (B, 3, H, W) -> (B, C, H/32, W/32);
    ``forward``: (B, 3, H, W) -> (B, num_classes).
    """

    def __init__(self, family, num_classes=1000, in_chans=3, global_pool='avg',
                 drop_rate=0., **backbone_args):
        super().__init__()
        try:
            from mmpola.models import PolaPVT, PolaSwin
        except ImportError as e:
            raise ImportError(
                f'the Pola timm models are mmpola\'s backbones, which need '
                f'MMEngine and mmcv\'s Python bricks ({e}): pip install '
                '"mmpola[openmmlab]" (or mmengine and mmcv-lite)') from e
        if family not in ('pvt', 'swin'):
            raise ValueError(f"family must be 'pvt' or 'swin', got {family!r}")
        if global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '', got "
                             f'{global_pool!r}')
        backbone_cls = PolaPVT if family == 'pvt' else PolaSwin
        self.family = family
        self.backbone = backbone_cls(in_channels=in_chans,
                                     out_indices=(0, 1, 2, 3),
                                     out_norms=False, **backbone_args)
        dims = self.backbone.arch_settings['embed_dims']
        if isinstance(dims, int):  # Swin: the first stage's, doubled
            dims = [dims * 2**i for i in range(4)]
        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = nn.LayerNorm(dims[-1]) if family == 'swin' \
            else nn.Identity()
        self.global_pool = global_pool
        self.head_drop = nn.Dropout(drop_rate)
        self.num_classes = num_classes
        self.head = nn.Linear(dims[-1], num_classes) if num_classes \
            else nn.Identity()
        stage = 'backbone.block{}' if family == 'pvt' else 'backbone.layers.{}'
        self.feature_info = [
            dict(num_chs=c, reduction=4 * 2**i,
                 module=stage.format(i + (family == 'pvt')))
            for i, c in enumerate(dims)]

    # ------------------------------------------------------------- timm API

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes, global_pool=None):
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise ValueError(f'global_pool {global_pool!r}')
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) \
            if num_classes else nn.Identity()

    def _final_norm(self, x):
        """LayerNorm over the channels of a (B, C, H, W) map."""
        if isinstance(self.norm, nn.Identity):
            return x
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_features(self, x):
        return self._final_norm(self.backbone(x)[-1])

    def forward_head(self, x, pre_logits=False):
        if self.global_pool == 'avg':
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x, indices=None, norm=False,
                              stop_early=False, output_fmt='NCHW',
                              intermediates_only=False):
        """Stage maps (B, C_i, H/2^(i+2), W/2^(i+2)) for ``indices`` (None:
        all; an int n: the last n), and the final features unless
        ``intermediates_only``; ``norm`` applies the final norm to the last
        stage's map."""
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f'output_fmt must be NCHW or NHWC, got '
                             f'{output_fmt!r}')
        take, _ = feature_take_indices(4, indices)
        maps = list(self.backbone(x))
        final = self._final_norm(maps[-1])
        if norm:
            maps[-1] = final
        out = [maps[i] for i in take]
        if output_fmt == 'NHWC':
            out = [m.permute(0, 2, 3, 1) for m in out]
        return out if intermediates_only else (final, out)

    def prune_intermediate_layers(self, indices=1, prune_norm=False,
                                  prune_head=True):
        take, _ = feature_take_indices(4, indices)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    # -------------------------------------------------------------- weights

    def load_pretrained(self, path):
        """timm's hook for its ``custom_load`` configs: ``load_weights``."""
        load_weights(self, path)


def _timm_state_dict(sd, family):
    """Any supported layout (released, mmpretrain-converted, this model's
    own) -> this model's keys: the classifier layout with ``head.fc.`` as
    ``head.`` and Swin's final norm (``backbone.norm3.``) as ``norm.``."""
    from mmpola.checkpoint import is_released_layout, released_to_classifier
    if not any(k.startswith('backbone.') for k in sd):
        if not is_released_layout(sd):
            raise ValueError('not a PolaFormer checkpoint (keys '
                             f'{list(sd)[:4]})')
        sd = released_to_classifier(sd, family)[0]
    out = OrderedDict()
    for k, v in sd.items():
        if k.startswith('head.fc.'):
            k = 'head.' + k[len('head.fc.'):]
        elif family == 'swin' and k.startswith('backbone.norm3.'):
            k = 'norm.' + k[len('backbone.norm3.'):]
        out[k] = v
    return out


def load_weights(model, path):
    """Load a released / converted / timm-format file (or a folder with
    ``model.safetensors``) into a :class:`PolaFormerClassifier`, through
    mmpola's safe reader. A head of another size is left as initialised
    (timm's behaviour for ``num_classes`` != 1000); anything else that does
    not fit is an error naming the keys."""
    from mmpola.checkpoint import extract_state_dict, read_checkpoint
    if osp.isdir(path):
        path = next((osp.join(path, f) for f in (
            'model.safetensors', 'pytorch_model.bin', 'open_clip_model.'
            'safetensors') if osp.isfile(osp.join(path, f))), path)
    sd = _timm_state_dict(extract_state_dict(read_checkpoint(path), path),
                          model.family)
    own = model.state_dict()
    head = [k for k in sd if k.startswith('head.')]
    if any(k not in own or own[k].shape != sd[k].shape for k in head):
        for k in head:
            del sd[k]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith('head.')]
    if missing or unexpected:
        raise ValueError(f'{path} does not fit {type(model).__name__}'
                         f'({model.family}): missing {missing[:6]}, '
                         f'unexpected {unexpected[:6]}')


def _resolve_file(cfg):
    """The local file (or folder) a resolved pretrained config points to:
    ``file``, else the hub ``url`` (downloaded once into torch.hub's cache)."""
    if cfg.get('file'):
        return cfg['file']
    if cfg.get('hf_hub_id'):
        from huggingface_hub import hf_hub_download
        return hf_hub_download(cfg['hf_hub_id'],
                               cfg.get('hf_hub_filename') or
                               'model.safetensors')
    if cfg.get('url'):
        from mmpola.utils.torch_load import _download
        return _download(cfg['url'])
    raise RuntimeError(f"no weights for {cfg.get('architecture')}: pass "
                       "pretrained_cfg_overlay=dict(file=PATH)")


def _create(variant, pretrained=False, **kwargs):
    """timm's ``build_model_with_cfg`` for the model and its pretrained
    config; the weights are read here, by mmpola's reader (timm's own would
    refuse the released files' yacs config), then ``features_only`` wraps
    the model with timm's ``FeatureGetterNet``."""
    family, args = MODEL_ARGS[variant]
    features_only = kwargs.pop('features_only', False)
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    kwargs.pop('feature_cls', None)
    model = build_model_with_cfg(PolaFormerClassifier, variant, False,
                                 family=family, **dict(args, **kwargs))
    if pretrained:
        load_weights(model, _resolve_file(model.pretrained_cfg))
    if features_only:
        cfg = model.pretrained_cfg
        model = FeatureGetterNet(model, out_indices=out_indices,
                                 output_fmt='NCHW')
        model.pretrained_cfg = model.default_cfg = cfg
    return model


def _register(name):
    def builder(pretrained=False, **kwargs):
        return _create(name, pretrained=pretrained, **kwargs)
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f'Pola{MODEL_ARGS[name][0].upper()} {name}: the ' \
        'released ImageNet classifier (PolaFormer, ICLR 2025).'
    builder.__module__ = __name__
    return register_model(builder)


for _name in MODEL_ARGS:
    globals()[_name] = _register(_name)
del _name
