"""Helpers for tests and demos: released-layout checkpoints, fixtures, the
released attention module's forward (the oracle for ``PolaAttention``)."""
import contextlib
import json
import os.path as osp
import sys
import types

import torch
import torch.nn.functional as F

from ..ops.reference import pola_attention_reference

SHAPES_FILE = osp.join(osp.dirname(__file__), 'official_state_dict_shapes.json')

# released checkpoint name -> backbone config that reproduces it
OFFICIAL_MODELS = {
    'pola_pvt_tiny': dict(type='PolaPVT', arch='tiny'),
    'pola_pvt_small': dict(type='PolaPVT', arch='small'),
    'pola_pvt_medium': dict(type='PolaPVT', arch='medium'),
    'pola_pvt_large': dict(type='PolaPVT', arch='large'),
    'pola_swin_tiny_patch4_224': dict(type='PolaSwin', arch='tiny'),
    'pola_swin_small_patch4_224': dict(type='PolaSwin', arch='small'),
    'pola_swin_base_patch4_224': dict(type='PolaSwin', arch='base'),
    'pola_swin_base_patch4_384': dict(
        type='PolaSwin', arch='base', pretrain_img_size=384, window_size=12,
        pola_window_size=96),
}


def official_shapes(name):
    """{key: shape} of a released checkpoint (see OFFICIAL_MODELS)."""
    with open(SHAPES_FILE) as f:
        return json.load(f)[name]


class _YacsCfgNode(dict):
    """Pickles as ``yacs.config.CfgNode`` does (yacs 0.1.8): a dict
    subclass whose ``__dict__`` holds the immutability flag, deprecated
    keys (a set), renamed keys and the new-allowed flag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__['__immutable__'] = False
        self.__dict__['__deprecated_keys__'] = set()
        self.__dict__['__renamed_keys__'] = {}
        self.__dict__['__new_allowed__'] = False


_YacsCfgNode.__module__ = 'yacs.config'
_YacsCfgNode.__qualname__ = _YacsCfgNode.__name__ = 'CfgNode'


def _fake_yacs_config():
    """A config that pickles as a yacs ``CfgNode`` tree without yacs."""
    module = types.ModuleType('yacs.config')
    module.CfgNode = _YacsCfgNode
    cfg = _YacsCfgNode(
        MODEL=_YacsCfgNode(TYPE='pola', DROP_PATH_RATE=0.1,
                           PVT=_YacsCfgNode(DEPTHS=[2, 2, 2, 2])),
        TRAIN=_YacsCfgNode(EPOCHS=300, BASE_LR=1e-3, CLIP_GRAD=5.0),
        DATA=_YacsCfgNode(IMG_SIZE=224, INTERPOLATION='bicubic'))
    cfg.__dict__['__immutable__'] = True  # released configs are frozen
    return cfg, module


def make_official_checkpoint(name, path, seed=0):
    """Write a random-valued checkpoint in the released training code's
    layout: ``{'model', 'optimizer', 'lr_scheduler', 'max_accuracy',
    'epoch', 'config'}`` with a yacs ``CfgNode`` as ``config``.

    Returns the state dict written.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes(name).items():
        if key.endswith('relative_position_index'):
            state[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith('weight') and 'norm' in key.split('.')[-2]:
            state[key] = torch.ones(shape)
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.02
    cfg, module = _fake_yacs_config()
    ckpt = dict(model=state, optimizer={'state': {}, 'param_groups': []},
                lr_scheduler={}, max_accuracy=78.8, epoch=299, config=cfg)
    with _yacs_modules(module), open(path, 'wb') as f:
        torch.save(ckpt, f)  # torch.save's defaults, as released
    return state


@contextlib.contextmanager
def _yacs_modules(module):
    """``yacs.config`` importable as ``module`` while the fake config is
    pickled (by name, as yacs' own class); nothing when ``module`` is
    None."""
    if module is None:
        yield
        return
    saved = {m: sys.modules.get(m) for m in ('yacs', 'yacs.config')}
    sys.modules['yacs'] = types.ModuleType('yacs')
    sys.modules['yacs.config'] = module
    try:
        yield
    finally:
        for m, old in saved.items():
            if old is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = old


def released_attention_forward(m, x, hw_shape):
    """The released attention module's forward, written literally with the
    parameters of an mmpola ``PolaAttention`` ``m``: the oracle for the
    layer. x: (B, N, C) tokens of an (H, W) map -> (B, N, C)."""
    B, N, C = x.shape
    H, W = hw_shape
    if m.fused_qkvg:
        q, k, v, g = m.qkvg(x).reshape(B, N, 4, C).unbind(2)
    else:
        q, g = m.qg(x).reshape(B, N, 2, C).unbind(2)
        k, v = m.kv(x).reshape(B, N, 2, C).unbind(2)
    pe = m.positional_encoding
    if tuple(m.pretrain_hw) != (H, W):
        pe = F.interpolate(
            pe.reshape(1, *m.pretrain_hw, C).permute(0, 3, 1, 2), size=(H, W),
            mode='bicubic', align_corners=False).permute(0, 2, 3, 1)
        pe = pe.reshape(1, N, C)
    k = k + pe
    s = F.softplus(m.scale)
    q, k = q / s, k / s
    q, k, v = (t.reshape(B, N, m.num_heads, -1).permute(0, 2, 1, 3)
               for t in (q, k, v))
    p = 1 + m.alpha * torch.sigmoid(m.power)
    out = pola_attention_reference(q, k, v, p).transpose(1, 2).reshape(B, N, C)
    v = v.reshape(B * m.num_heads, H, W, -1).permute(0, 3, 1, 2)
    v = m.dwc(v).reshape(B, C, N).permute(0, 2, 1)
    return m.proj((out + v) * g)
