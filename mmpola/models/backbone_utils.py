"""What Pola-PVT and Pola-Swin share: the pre-norm block, argument checks,
output norms, freezing, initialisation and checkpoint conversion."""
import copy

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmcv.cnn.bricks.transformer import FFN
from mmengine.model import BaseModule, initialize
from mmengine.model.weight_init import PretrainedInit, trunc_normal_

# init_cfg None: the released training code's from-scratch values (position
# embeddings and relative position tables in init_weights; the Pola power,
# scale and positional encodings start at zero)
DEFAULT_INIT_CFG = [
    dict(type='TruncNormal', layer='Linear', std=.02, bias=0.),
    dict(type='Constant', layer='LayerNorm', val=1., bias=0.),
]


class PreNormBlock(BaseModule):
    """``x + drop_path(attn(norm1(x), hw_shape))``, then ``ffn`` (mmcv's FFN,
    its own residual and drop path); subclasses may override ``_attention``
    (e.g. shifted windows). ``with_cp``: checkpointed when x needs a grad.
    forward(x (B, H*W, C), hw_shape=(H, W)) -> (B, H*W, C).
    """

    def __init__(self, embed_dims, mlp_ratio, drop_rate=0.,
                 drop_path_rate=0., with_cp=False, norm_cfg=dict(type='LN'),
                 attn=None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.drop_path = (DropPath(drop_path_rate) if drop_path_rate > 0
                          else nn.Identity())
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = FFN(embed_dims, int(embed_dims * mlp_ratio), num_fcs=2,
                       ffn_drop=drop_rate,
                       dropout_layer=dict(type='DropPath',
                                          drop_prob=drop_path_rate),
                       act_cfg=dict(type='GELU'), add_identity=True)
        if attn is not None:
            self.attn = attn

    def _attention(self, x, hw_shape):
        return self.attn(x, hw_shape)

    def _inner_forward(self, x, hw_shape):
        x = x + self.drop_path(self._attention(self.norm1(x), hw_shape))
        return self.ffn(self.norm2(x), identity=x)

    def forward(self, x, hw_shape):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._inner_forward, x, hw_shape,
                                 use_reentrant=False)
        return self._inner_forward(x, hw_shape)


def static_hw(hw_shape):
    """(H, W) as ints: the TorchScript tracer (ONNX export) gives sizes as
    tensors; the window and padding arithmetic is for one fixed size."""
    return tuple(int(s) for s in hw_shape)


def check_int(name, value, low=None):
    """``value`` if an int >= low; TypeError / ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be an int, got {value!r}')
    if low is not None and value < low:
        raise ValueError(f'{name} must be >= {low}, got {value}')
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f'{name} must be one of {list(choices)}, '
                         f'got {value!r}')
    return value


def _init_cfgs(init_cfg):
    """init_cfg (None, a dict or a list of dicts) as a list."""
    cfgs = [init_cfg] if isinstance(init_cfg, dict) else init_cfg or []
    if not isinstance(cfgs, (list, tuple)) or not all(
            isinstance(c, dict) and 'type' in c for c in cfgs):
        raise TypeError('init_cfg must be None, a dict or a list of dicts, '
                        f'each with a "type"; got {init_cfg!r}')
    return list(cfgs)


class DenseBackboneMixin:
    """arch presets, checks, output norms, freezing, initialisation and
    checkpoint conversion of a backbone with ``arch_zoo``, ``family``,
    ``num_stages``, ``num_features``, ``in_channels``, ``_stage_modules(i)``
    and ``_stem_modules()`` (what is frozen with stage i / the stem)."""

    def parse_arch(self, arch, essential_keys, per_stage_keys):
        """A preset name (any case) or a dict with exactly
        ``essential_keys``, one entry per stage in ``per_stage_keys``."""
        if isinstance(arch, str):
            if arch.lower() not in self.arch_zoo:
                raise ValueError(
                    f'arch {arch!r} is not a preset of {type(self).__name__}'
                    f'; choose from {sorted(set(self.arch_zoo))} or pass a '
                    f'dict with the keys {sorted(essential_keys)}')
            settings = copy.deepcopy(self.arch_zoo[arch.lower()])
        elif isinstance(arch, dict):
            missing = set(essential_keys) - set(arch)
            unknown = set(arch) - set(essential_keys)
            if missing or unknown:
                raise ValueError(
                    f'a custom arch must have exactly the keys '
                    f'{sorted(essential_keys)}; missing {sorted(missing)}, '
                    f'unknown {sorted(unknown)} in {arch!r}')
            settings = copy.deepcopy(dict(arch))
        else:
            raise TypeError(f'arch must be a str or a dict, got {arch!r}')
        lengths = {k: len(settings[k]) for k in per_stage_keys}
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise ValueError('the per-stage settings of arch must have one '
                             f'entry per stage; got lengths {lengths}')
        return settings

    def check_common_args(self, out_indices, out_norms, frozen_stages,
                          init_cfg):
        """Sets ``out_indices`` (sorted, distinct, >= 0), ``frozen_stages``;
        checks ``out_norms`` and ``init_cfg``."""
        n = self.num_stages
        if isinstance(out_indices, int) and not isinstance(out_indices, bool):
            out_indices = [out_indices]
        if not isinstance(out_indices, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool)
                for i in out_indices):
            raise TypeError('out_indices must be an int or a sequence of '
                            f'ints, got {out_indices!r}')
        bad = [i for i in out_indices if not -n <= i < n]
        if bad:
            raise ValueError(f'out_indices {list(out_indices)}: {bad} out of '
                             f'range for {n} stages (allowed {-n}..{n - 1})')
        normed = [i % n for i in out_indices]
        if len(set(normed)) != len(normed):
            raise ValueError(
                f'out_indices {list(out_indices)} name a stage twice')
        self.out_indices = tuple(sorted(normed))
        if not isinstance(out_norms, bool):
            raise TypeError(f'out_norms must be a bool, got {out_norms!r}')
        check_int('frozen_stages', frozen_stages, -1)
        if frozen_stages > n:
            raise ValueError(f'frozen_stages must be <= {n}, got '
                             f'{frozen_stages}')
        self.frozen_stages = frozen_stages
        _init_cfgs(init_cfg)

    def add_out_norms(self, out_norms, norm_cfg):
        """LayerNorm ``norm{i}`` per output stage i if ``out_norms``, then
        freezing and the checkpoint converter (end of ``__init__``)."""
        self.out_norms = out_norms
        # names built here: torch 2.1's Dynamo garbles f-strings in forward
        self._out_norm_names = [f'norm{i}' for i in range(self.num_stages)]
        if out_norms:
            for i in self.out_indices:
                self.add_module(f'norm{i}', build_norm_layer(
                    norm_cfg, self.num_features[i])[1])
        self._freeze_stages()
        from ..checkpoint import released_state_dict_pre_hook
        self._register_load_state_dict_pre_hook(
            released_state_dict_pre_hook, with_module=True)

    def check_input(self, x):
        """A batched (B, in_channels, H, W) image tensor with B > 0."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else x
            raise ValueError(
                f'{type(self).__name__} expects a batched image tensor '
                f'(B, {self.in_channels}, H, W), got {shape}; add a batch '
                'dimension with x[None]')
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f'{type(self).__name__} was built with in_channels='
                f'{self.in_channels}, got an input of {x.shape[1]} channels')
        if x.shape[0] == 0:
            raise ValueError(f'{type(self).__name__} got an empty batch '
                             f'(input shape {tuple(x.shape)})')

    def format_output(self, i, tokens, hw_shape):
        """Stage i's (B, H*W, C) tokens -> ``norm{i}`` -> (B, C, H, W)."""
        if self.out_norms:
            tokens = getattr(self, self._out_norm_names[i])(tokens)
        B, _, C = tokens.shape
        return tokens.transpose(1, 2).reshape(B, C, *hw_shape).contiguous()

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        modules = list(self._stem_modules())
        for i in range(self.frozen_stages):
            modules += self._stage_modules(i)
            if self.out_norms and i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
        for m in modules:
            if isinstance(m, nn.Parameter):
                m.requires_grad = False
                continue
            m.eval()
            for param in m.parameters():
                param.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        return self

    def init_weights(self):
        """``init_cfg``'s initialisers (None: :data:`DEFAULT_INIT_CFG`),
        position grids truncated normal (std .02), then a ``Pretrained``
        entry through :func:`mmpola.checkpoint.load_pretrained`."""
        from ..checkpoint import load_pretrained
        cfgs = _init_cfgs(self.init_cfg) or DEFAULT_INIT_CFG
        pretrained = [c for c in cfgs
                      if c['type'] in ('Pretrained', PretrainedInit)]
        initialize(self, [c for c in cfgs if c not in pretrained])
        for name, param in self.named_parameters():
            if name.rsplit('.', 1)[-1].startswith(
                    ('pos_embed', 'relative_position_bias_table')):
                trunc_normal_(param, std=.02)
        if pretrained:
            load_pretrained(self, pretrained[-1]['checkpoint'])
