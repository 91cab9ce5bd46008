"""What Pola-PVT and Pola-Swin share: the pre-norm block, argument checks,
output norms, freezing and initialisation."""
import copy
from collections import defaultdict

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmcv.cnn.bricks.transformer import FFN
from mmengine.model import BaseModule
from mmengine.model.weight_init import (constant_init, trunc_normal_,
                                        trunc_normal_init)

from ..ops import is_graph_capture
from ..ops.fast import block_slices
from . import cpu_executor
from .pola_attention import PolaAttention


class PreNormBlock(BaseModule):
    """Pre-norm block: ``x + drop_path(attn(norm1(x)))``, then ``ffn``.

    Subclasses add ``self.attn`` and may override ``_attention`` (e.g. to run
    it in shifted windows). ``with_cp`` checkpoints the whole block when the
    input needs a gradient.

    Shapes:
        forward(x (B, H*W, C), hw_shape=(H, W)) -> (B, H*W, C).
    """

    def __init__(self, embed_dims, mlp_ratio, drop_rate=0.,
                 drop_path_rate=0., with_cp=False, norm_cfg=dict(type='LN'),
                 init_cfg=None):
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

    def _attention(self, x, hw_shape):
        return self.attn(x, hw_shape)

    def _inner_forward(self, x, hw_shape):
        if cpu_executor.in_use():  # opt-in, whole-model guard passed
            return cpu_executor.block_forward(self, x, hw_shape)
        x = x + self.drop_path(self._attention(self.norm1(x), hw_shape))
        return self.ffn(self.norm2(x), identity=x)

    def forward(self, x, hw_shape):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._inner_forward, x, hw_shape,
                                 use_reentrant=False)
        return self._inner_forward(x, hw_shape)


def static_hw(hw_shape):
    """(H, W) as Python ints: the TorchScript tracer (TorchScript ONNX
    export) hands sizes read from tensor shapes over as tensors; the window
    and padding arithmetic is for one fixed size."""
    return tuple(int(s) for s in hw_shape)


# elements per block of the CPU token transpose in tokens_to_map (512 KB)
TRANSPOSE_BLOCK_ELEMENTS = 1 << 17


def tokens_to_map(tokens, hw_shape):
    """(B, H*W, C) tokens -> contiguous (B, C, H, W).

    On the CPU without autograd the transposing copy goes block by block
    over the tokens (the same bits; 2-4x faster on large maps than one
    ``contiguous()``, whose writes stride over the whole map). With
    gradients, while tracing / compiling / exporting, and on other devices
    it is the single ``contiguous()``.
    """
    B, N, C = tokens.shape
    if (tokens.device.type != 'cpu' or is_graph_capture(tokens)
            or (tokens.requires_grad and torch.is_grad_enabled())):
        return tokens.transpose(1, 2).reshape(B, C, *hw_shape).contiguous()
    out = tokens.new_empty(B, C, N)
    step = max(64, TRANSPOSE_BLOCK_ELEMENTS // (B * C))
    for s in block_slices(N, step):
        out[:, :, s].copy_(tokens[:, s].transpose(1, 2))
    return out.view(B, C, *hw_shape)


# ------------------------------------------------------ argument checks


def check_int(name, value, low=None, high=None):
    """``value`` as an int in [low, high] (None: unbounded); TypeError or
    ValueError naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be an int, got {value!r}')
    if (low is not None and value < low) or (high is not None
                                             and value > high):
        bounds = (f'>= {low}' if high is None else
                  f'in [{low}, {high}]' if low is not None else
                  f'<= {high}')
        raise ValueError(f'{name} must be {bounds}, got {value}')
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f'{name} must be one of {list(choices)}, '
                         f'got {value!r}')
    return value


def check_init_cfg(init_cfg):
    """``init_cfg`` as MMEngine's BaseModule takes it: None, a dict or a
    list of dicts, each with a 'type'. Returns it as a list."""
    if init_cfg is None:
        return []
    cfgs = [init_cfg] if isinstance(init_cfg, dict) else init_cfg
    if not isinstance(cfgs, (list, tuple)) or not all(
            isinstance(c, dict) for c in cfgs):
        raise TypeError('init_cfg must be None, a dict or a list of dicts, '
                        f'got {init_cfg!r}')
    for c in cfgs:
        if 'type' not in c:
            raise ValueError(f'every init_cfg needs a "type", got {c!r}')
    return list(cfgs)


def _is_pretrained(cfg):
    kind = cfg.get('type')
    return kind == 'Pretrained' or getattr(kind, '__name__',
                                           None) == 'PretrainedInit'


class DenseBackboneMixin:
    """arch presets, argument checks, output norms, freezing and
    initialisation of a dense-prediction backbone.

    A backbone using it defines ``arch_zoo``, ``family`` ('pvt' / 'swin'),
    ``num_stages``, ``num_features``, ``in_channels`` and
    ``_stage_modules(i)`` / ``_stem_modules()`` (the modules frozen with
    stage i / with the stem).
    """

    def parse_arch(self, arch, essential_keys, per_stage_keys):
        """A preset name (case-insensitive) or a dict with exactly
        ``essential_keys``; per-stage lists must have one entry per
        stage."""
        if isinstance(arch, str):
            name = arch.lower()
            if name not in self.arch_zoo:
                raise ValueError(
                    f'arch {arch!r} is not a preset of {type(self).__name__}'
                    f'; choose from {sorted(set(self.arch_zoo))} or pass a '
                    f'dict with the keys {sorted(essential_keys)}')
            settings = copy.deepcopy(self.arch_zoo[name])
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

    def check_out_indices(self, out_indices):
        """Stage indices (negative ones count from the end) -> sorted
        tuple of distinct indices in [0, num_stages)."""
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
        return tuple(sorted(normed))

    def check_common_args(self, out_norms, frozen_stages, init_cfg):
        if not isinstance(out_norms, bool):
            raise TypeError(f'out_norms must be a bool, got {out_norms!r}')
        check_int('frozen_stages', frozen_stages, -1, self.num_stages)
        check_init_cfg(init_cfg)

    def add_out_norms(self, out_norms, norm_cfg):
        """Add LayerNorm ``norm{i}`` for each output stage i if requested."""
        self.out_norms = out_norms
        self._out_norm_names = tuple(f'norm{i}'
                                     for i in range(self.num_stages))
        if out_norms:
            for i in self.out_indices:
                self.add_module(f'norm{i}', build_norm_layer(
                    norm_cfg, self.num_features[i])[1])

    def register_checkpoint_conversion(self):
        """Every ``load_state_dict`` (``mmengine.runner.load_checkpoint``,
        a detector's ``load_from``) converts released keys and resizes
        grids (:func:`mmpola.checkpoint.released_state_dict_pre_hook`)."""
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
        """Stage i's (B, H*W, C) tokens -> (B, C, H, W), through
        ``norm{i}``."""
        if self.out_norms:
            # a name built beforehand: torch 2.1's Dynamo garbles the
            # f-string when it resumes after a graph break
            tokens = getattr(self, self._out_norm_names[i])(tokens)
        return tokens_to_map(tokens, hw_shape)

    # ------------------------------------------------- freezing

    def _frozen_modules(self):
        if self.frozen_stages < 0:
            return []
        modules = list(self._stem_modules())
        for i in range(min(self.frozen_stages, self.num_stages)):
            modules += self._stage_modules(i)
            if self.out_norms and i in self.out_indices:
                modules.append(getattr(self, f'norm{i}'))
        return modules

    def _freeze_stages(self):
        for m in self._frozen_modules():
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

    # ------------------------------------------------- initialisation

    def init_from_scratch(self):
        """The from-scratch values of the released training code: Linear
        weights truncated normal (std .02) with zero bias, LayerNorms 1 / 0,
        position embeddings and relative position bias tables truncated
        normal (std .02), the Pola power, scale and positional encodings
        zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_init(m, std=.02, bias=0.)
            elif isinstance(m, nn.LayerNorm):
                constant_init(m, val=1.0, bias=0.)
            elif isinstance(m, PolaAttention):
                m.reset_parameters()
        for name, param in self.named_parameters():
            leaf = name.rsplit('.', 1)[-1]
            if (leaf.startswith('pos_embed')
                    or leaf == 'relative_position_bias_table'):
                trunc_normal_(param, std=.02)

    def init_weights(self):
        """MMEngine's ``init_weights`` with ``init_cfg`` None, a dict or a
        list of dicts: first :meth:`init_from_scratch`, then the
        initialisers of ``init_cfg`` (and the submodules' own), then a
        ``Pretrained`` checkpoint through
        :func:`mmpola.checkpoint.load_pretrained` (released files are
        converted and grids resized)."""
        from mmengine.model.weight_init import update_init_info
        cfgs = check_init_cfg(self.init_cfg)
        if self.is_init:  # MMEngine warns and leaves the weights alone
            return super().init_weights()
        pretrained = [c for c in cfgs if _is_pretrained(c)]
        others = [c for c in cfgs if not _is_pretrained(c)]
        top = not hasattr(self, '_params_init_info')
        if top:  # as BaseModule.init_weights does for the top module
            self._params_init_info = defaultdict(dict)
            for param in self.parameters():
                self._params_init_info[param]['init_info'] = (
                    'The value is the same before and after calling '
                    f'`init_weights` of {type(self).__name__} ')
                self._params_init_info[param]['tmp_mean_value'] = \
                    param.data.mean().cpu()
            for m in self.modules():
                m._params_init_info = self._params_init_info
        self.init_from_scratch()
        update_init_info(self, init_info=(
            f'{type(self).__name__}.init_from_scratch (released training '
            'code values)'))
        init_cfg, self.init_cfg = self.init_cfg, others or None
        try:
            super().init_weights()  # init_cfg initialisers, submodules
        finally:
            self.init_cfg = init_cfg
        if pretrained:
            from ..checkpoint import load_pretrained
            path = pretrained[-1]['checkpoint']
            load_pretrained(self, path)
            update_init_info(self, init_info=f'Loaded from {path}')
        if top:
            self._dump_init_info()
            for m in self.modules():
                del m._params_init_info
