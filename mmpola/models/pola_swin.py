"""Pola-Swin: Swin Transformer v1 with Pola attention in stages 1-2."""
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn.bricks.transformer import PatchEmbed, PatchMerging
from mmengine.model import BaseModule, ModuleList
from mmengine.registry import MODELS
from mmengine.utils import to_2tuple

from ..layers import PolaAttention
from .backbone_utils import (DenseBackboneMixin, PreNormBlock, check_choice,
                             check_int, static_hw)
from .windows import PAD_LABEL, shifted_window_attention

ATTN_TYPES = ('pola', 'softmax')
POLA_ATTN_MODES = ('global', 'window')


class WindowMSA(BaseModule):
    """Swin v1 window attention with a relative position bias, in the
    released (and mmpretrain's) parameter layout: ``qkv``, ``proj``,
    ``relative_position_bias_table`` ((2w-1)^2, heads); the index buffer is
    rebuilt, never loaded. PyTorch's ``scaled_dot_product_attention`` with
    the bias (and the shift / padding mask) as its additive mask.

    Shapes:
        forward(x (B*nW, w*w, C), mask (nW, w*w, w*w) or None)
        -> (B*nW, w*w, C).
    """

    def __init__(self, embed_dims, window_size, num_heads, qkv_bias=True,
                 attn_drop=0., proj_drop=0., init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if embed_dims % num_heads:
            raise ValueError(f'num_heads ({num_heads}) must divide '
                             f'embed_dims ({embed_dims})')
        self.embed_dims = embed_dims
        self.window_size = to_2tuple(window_size)
        self.num_heads = num_heads
        self.scale = (embed_dims // num_heads)**-0.5
        self.attn_drop = attn_drop
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        coords = torch.stack(torch.meshgrid(
            torch.arange(wh), torch.arange(ww), indexing='ij')).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :]         # (2, N, N)
        index = (rel[0] + wh - 1) * (2 * ww - 1) + rel[1] + ww - 1
        self.register_buffer('relative_position_index', index,
                             persistent=False)
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, mask=None):
        B_, N, C = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(B_, N, 3, h, C // h).permute(
            2, 0, 3, 1, 4).unbind(0)                       # (B_, h, N, d)
        bias = self.relative_position_bias_table[
            self.relative_position_index.view(-1)].view(N, N, h)
        bias = bias.permute(2, 0, 1).unsqueeze(0)             # (1, h, N, N)
        if mask is not None:
            nW = mask.shape[0]
            bias = (bias + mask.unsqueeze(1)).unsqueeze(0).expand(
                B_ // nW, -1, -1, -1, -1).reshape(B_, h, N, N)
        # SDPA's default scale is 1 / sqrt(d) = self.scale; not passed:
        # torch 2.1's TorchScript ONNX exporter cannot take it
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype),
            dropout_p=self.attn_drop if self.training else 0.)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B_, N, C)))


class PolaSwinBlock(PreNormBlock):
    """Pre-norm Swin block (``norm1``, ``attn``, ``drop_path``, ``norm2``,
    ``ffn``) with ``attn_type`` 'softmax' (:class:`WindowMSA` in shifted
    windows) or 'pola' (:class:`PolaAttention`, global or in windows of
    ``window_size``: ``pola_attn_mode`` of :class:`PolaSwin`). ``shift``:
    windows shifted by half, unless the map is not larger than the window
    (as released); ``pretrain_hw``: the Pola positional-encoding grid.

    Shapes:
        forward(x (B, H*W, C), hw_shape=(H, W)) -> (B, H*W, C).
    """

    def __init__(self, embed_dims, num_heads, attn_type, window_size, shift,
                 pretrain_hw=None, pola_attn_mode='global', mlp_ratio=4.,
                 drop_rate=0., drop_path_rate=0., with_cp=False,
                 norm_cfg=dict(type='LN'), init_cfg=None):
        super().__init__(embed_dims, mlp_ratio, drop_rate, drop_path_rate,
                         with_cp, norm_cfg, init_cfg)
        self.attn_type = attn_type
        self.pola_attn_mode = pola_attn_mode
        self.window_size = window_size
        self.shift = shift
        if attn_type == 'softmax':
            self.attn = WindowMSA(embed_dims, window_size, num_heads,
                                  proj_drop=drop_rate)
        else:
            self.attn = PolaAttention(
                embed_dims, num_heads, pretrain_hw, fused_qkvg=True,
                proj_drop=drop_rate)

    def _is_global(self, hw_shape):
        """Whether a Pola block attends over the whole map."""
        return self.attn_type == 'pola' and (
            self.pola_attn_mode == 'global'
            or max(hw_shape) <= self.window_size)

    def _shift(self, hw_shape):
        ws = self.window_size
        return ws // 2 if self.shift and min(hw_shape) > ws else 0

    def _attend(self, windows, labels):
        """Attention within windows (B*nW, w*w, C); tokens attend only to
        tokens of the same label (nW, w*w)."""
        window = self.window_size
        if self.attn_type == 'softmax':
            mask = None
            if labels is not None:
                mask = (labels[:, :, None] != labels[:, None, :]).to(
                    windows.dtype) * -100.
            return self.attn(windows, mask=mask)
        # Released Pola windows ignore the shift mask; only padding is
        # kept out of the sums.
        key_mask = None
        if labels is not None:
            key_mask = (labels != PAD_LABEL).to(windows.dtype).repeat(
                windows.shape[0] // labels.shape[0], 1)
        return self.attn(windows, (window, window), key_mask)

    def _attention(self, x, hw_shape):
        if self._is_global(hw_shape):
            return self.attn(x, hw_shape)
        return shifted_window_attention(x, hw_shape, self.window_size,
                                        self._shift(hw_shape), self._attend)


class PolaSwinStage(BaseModule):
    """``depth`` blocks (odd ones shifted), then mmcv's ``PatchMerging``
    (mmcv's channel order; released weights are converted when loaded).

    Shapes:
        forward(x (B, H*W, C), hw_shape) ->
        (x_out, out_hw, x_stage (B, H*W, C), hw_shape): the downsampled
        tokens and the stage output before downsampling.
    """

    def __init__(self, embed_dims, depth, num_heads, attn_type, window_size,
                 drop_path_rates, downsample, pretrain_hw=None,
                 pola_attn_mode='global', mlp_ratio=4., drop_rate=0.,
                 with_cp=False, norm_cfg=dict(type='LN'), init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.blocks = ModuleList([
            PolaSwinBlock(embed_dims, num_heads, attn_type, window_size,
                          shift=i % 2 == 1, pretrain_hw=pretrain_hw,
                          pola_attn_mode=pola_attn_mode, mlp_ratio=mlp_ratio,
                          drop_rate=drop_rate,
                          drop_path_rate=drop_path_rates[i],
                          with_cp=with_cp, norm_cfg=norm_cfg)
            for i in range(depth)
        ])
        self.downsample = PatchMerging(
            embed_dims, 2 * embed_dims,
            norm_cfg=norm_cfg) if downsample else None

    def forward(self, x, hw_shape):
        for block in self.blocks:
            x = block(x, hw_shape)
        if self.downsample is None:
            return x, hw_shape, x, hw_shape
        x_down, down_hw = self.downsample(x, hw_shape)
        return x_down, static_hw(down_hw), x, hw_shape


@MODELS.register_module()
class PolaSwin(DenseBackboneMixin, BaseModule):
    """Pola-Swin backbone (PolaFormer, ICLR 2025) for any input size.

    Swin v1 layout; stages with ``attn_types == 'pola'`` (1 and 2 in every
    released model) use polarity-aware linear attention, the others shifted
    softmax windows (:class:`WindowMSA`). Released checkpoints load through
    every route (:mod:`mmpola.checkpoint`).

    Args:
        arch (str | dict): 'tiny', 'small', 'base' (or 't', 's', 'b') or a
            dict with exactly the keys ``embed_dims`` (int), ``depths``,
            ``num_heads``.
        pretrain_img_size (int): image size of the released weights (224 or
            384); sets the grid of the Pola positional encodings.
        in_channels (int): input channels.
        patch_size (int): patch embedding stride.
        window_size (int): softmax window (7; 12 for the 384 model).
        pola_window_size (int): the released Pola "window" (56; 96 at 384),
            at 224 the whole stage-1 map.
        pola_attn_mode (str): how Pola stages run on larger maps.
            'global' (default): one window over the whole map, positional
            encodings resized to it (each Pola stage was one global window
            in training at 224). 'window': windows of the trained grid (56
            and 28 at 224), odd blocks shifted by half a window, no shift
            mask: what the released code does on larger maps.
        attn_types (sequence[str]): 'pola' / 'softmax' per stage.
        mlp_ratio (float): FFN ratio.
        out_indices (int | sequence[int]): stages whose outputs are
            returned (negative: from the end; distinct).
        out_norms (bool): LayerNorm ``norm{i}`` on each output (new layers,
            except ``norm3``, which takes the released final ``norm``).
        drop_rate (float): dropout rate.
        drop_path_rate (float): stochastic depth, linear over blocks.
        frozen_stages (int): -1 none, 0 the patch embedding, i > 0 also
            stages 1..i.
        with_cp (bool): gradient checkpointing per block.
        norm_cfg (dict): norm layers (LayerNorm eps 1e-5 as released).
        init_cfg (dict | list[dict], optional): MMEngine initialisers
            (None: the released from-scratch values), e.g.
            ``dict(type='Pretrained', checkpoint=PATH)``.

    Shapes:
        (B, in_channels, H, W), B >= 1, any H, W -> tuple of
        (B, embed_dims * 2^i, ceil(H / (4 * 2^i)), ceil(W / (4 * 2^i))).

    Example:
        >>> import torch, mmpola
        >>> model = PolaSwin(arch='tiny', out_indices=(0, 1, 2, 3))
        >>> [tuple(o.shape) for o in model(torch.rand(1, 3, 97, 131))]
        [(1, 96, 25, 33), (1, 192, 13, 17), (1, 384, 7, 9), (1, 768, 4, 5)]
    """
    arch_zoo = {
        **dict.fromkeys(['t', 'tiny'], dict(
            embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24])),
        **dict.fromkeys(['s', 'small'], dict(
            embed_dims=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24])),
        **dict.fromkeys(['b', 'base'], dict(
            embed_dims=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32])),
    }
    family = 'swin'

    def __init__(self,
                 arch='tiny',
                 pretrain_img_size=224,
                 in_channels=3,
                 patch_size=4,
                 window_size=7,
                 pola_window_size=56,
                 pola_attn_mode='global',
                 attn_types: Sequence[str] = ('pola', 'pola', 'softmax',
                                              'softmax'),
                 mlp_ratio=4.,
                 out_indices=(0, 1, 2, 3),
                 out_norms=True,
                 drop_rate=0.,
                 drop_path_rate=0.2,
                 frozen_stages=-1,
                 with_cp=False,
                 norm_cfg=dict(type='LN'),
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.arch_settings = self.parse_arch(
            arch, ('embed_dims', 'depths', 'num_heads'),
            ('depths', 'num_heads'))
        embed_dims = check_int('arch embed_dims',
                               self.arch_settings['embed_dims'], 1)
        depths = self.arch_settings['depths']
        num_heads = self.arch_settings['num_heads']
        if isinstance(attn_types, str) or len(attn_types) != len(depths):
            raise ValueError(f'attn_types {attn_types!r} needs one entry per '
                             f'stage ({len(depths)})')
        for t in attn_types:
            check_choice('attn_types[i]', t, ATTN_TYPES)
        check_choice('pola_attn_mode', pola_attn_mode, POLA_ATTN_MODES)
        check_int('window_size', window_size, 1)
        check_int('pola_window_size', pola_window_size, 1)
        check_int('patch_size', patch_size, 1)
        check_int('pretrain_img_size', pretrain_img_size, 1)
        self.in_channels = check_int('in_channels', in_channels, 1)
        self.num_stages = len(depths)
        self.check_common_args(out_indices, out_norms, frozen_stages,
                               init_cfg)
        self.pretrain_img_size = pretrain_img_size
        self.pola_attn_mode = pola_attn_mode

        self.patch_embed = PatchEmbed(
            in_channels, embed_dims, kernel_size=patch_size, stride=patch_size,
            norm_cfg=norm_cfg)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = ModuleList()
        self.num_features = []
        grid = pretrain_img_size // patch_size
        for i, depth in enumerate(depths):
            dims = embed_dims * 2**i
            # a Pola window is its positional-encoding grid: the released
            # code clamps pola_window_size to the map (56, 28 at 224)
            pola_ws = max(1, min(grid, pola_window_size))
            pola = attn_types[i] == 'pola'
            self.layers.append(PolaSwinStage(
                dims, depth, num_heads[i], attn_types[i],
                pola_ws if pola else window_size,
                drop_path_rates=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=i < self.num_stages - 1,
                pretrain_hw=(pola_ws, pola_ws),
                pola_attn_mode=pola_attn_mode, mlp_ratio=mlp_ratio,
                drop_rate=drop_rate, with_cp=with_cp, norm_cfg=norm_cfg))
            self.num_features.append(dims)
            grid //= 2
        self.add_out_norms(out_norms, norm_cfg)

    def _stage_modules(self, i):
        return [self.layers[i]]

    def _stem_modules(self):
        return [self.patch_embed]

    def forward(self, x):
        self.check_input(x)
        x, hw = self.patch_embed(x)
        hw = static_hw(hw)
        outs = []
        for i, stage in enumerate(self.layers):
            x, hw_next, x_stage, hw = stage(x, hw)
            if i in self.out_indices:
                outs.append(self.format_output(i, x_stage, hw))
            hw = hw_next
        return tuple(outs)
