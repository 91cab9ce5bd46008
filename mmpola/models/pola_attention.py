"""Polarity-aware linear attention (PolaFormer, ICLR 2025) as a module.

``PolaAttention`` holds the parameters in the released checkpoints' layout
and calls its submodules (``qkvg`` or ``qg`` / ``kv``, ``dwc``, ``proj``,
``proj_drop``); the arithmetic between them is
:func:`mmpola.ops.pola_linear_attention`, whose implementation is chosen
by the switch in :mod:`mmpola.ops`.
"""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from ..ops import pola_linear_attention


def _interp_matrix(src: int, dst: int, mode: str, like: torch.Tensor):
    """(dst, src) matrix of ``F.interpolate`` along one axis, in like's
    dtype (built in float32 or float64: torch 2.1 has no half-precision
    ``eye`` / bicubic kernels on the CPU)."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    eye = torch.eye(src, dtype=dtype, device=like.device)
    cols = F.interpolate(eye.view(1, src, src, 1), size=(dst, 1), mode=mode,
                         align_corners=False)
    return cols[0, :, :, 0].T.to(like.dtype)


def resize_grid_tokens(tokens: torch.Tensor, src_hw: Tuple[int, int],
                       dst_hw: Tuple[int, int], mode: str) -> torch.Tensor:
    """(1, Hs*Ws, C) grid tokens resized to (1, Hd*Wd, C): ``F.interpolate``
    (``mode`` 'bilinear' or 'bicubic', ``align_corners=False``; both are
    separable) as two matrix products, the columns first, then the rows (a
    few times faster than the bicubic kernel on large maps). Returned as
    they are when the sizes agree."""
    (hs, ws), (hd, wd) = tuple(src_hw), tuple(dst_hw)
    if (hs, ws) == (hd, wd):
        return tokens
    C = tokens.shape[-1]
    grid = tokens.reshape(hs, ws, C)
    if ws != wd:
        grid = _interp_matrix(ws, wd, mode, tokens) @ grid     # (hs, wd, C)
    grid = grid.reshape(hs, wd * C)
    if hs != hd:
        grid = _interp_matrix(hs, hd, mode, tokens) @ grid     # (hd, wd*C)
    return grid.reshape(1, hd * wd, C)


class PolaAttention(BaseModule):
    """Polarity-aware linear attention with the released parameter layout.

    Args:
        embed_dims (int): C.
        num_heads (int): heads; head dim ``C // heads`` must be even.
        pretrain_hw (tuple[int, int]): grid of ``positional_encoding``
            (56x56 for stage 1 at 224). Other map sizes get it resized
            (bicubic, as the released code resizes it).
        fused_qkvg (bool): Swin layout ``qkvg = Linear(C, 4C)`` (True) or PVT
            layout ``qg, kv = Linear(C, 2C)`` (False).
        alpha (float): exponent range, ``p = 1 + alpha * sigmoid(power)``.
        kernel_size (int): depthwise conv on v (one kernel set shared by
            all heads: weight (C / heads, 1, k, k)).
        qkv_bias (bool): bias of the input projections.
        proj_drop (float): dropout after the output projection.
        init_cfg (dict | list[dict], optional): MMEngine initialisation.

    Shapes:
        forward(x (B, N, C), hw_shape=(H, W), key_mask (B, N) or None)
        -> (B, N, C), N = H * W. ``key_mask`` is 1 for real tokens and 0
        for padding (left out of every sum over keys).
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 pretrain_hw: Tuple[int, int],
                 fused_qkvg: bool,
                 alpha: float = 4.,
                 kernel_size: int = 5,
                 qkv_bias: bool = True,
                 proj_drop: float = 0.,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if num_heads < 1 or embed_dims % num_heads:
            raise ValueError(
                f'num_heads ({num_heads}) must be >= 1 and divide embed_dims '
                f'({embed_dims})')
        if (embed_dims // num_heads) % 2:
            raise ValueError(
                f'Pola attention needs an even head dim (v is split in two '
                f'halves): embed_dims {embed_dims} / num_heads {num_heads} = '
                f'{embed_dims // num_heads}')
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f'kernel_size must be odd and >= 1, got {kernel_size}')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.pretrain_hw = tuple(pretrain_hw)
        self.fused_qkvg = fused_qkvg
        self.alpha = alpha
        if fused_qkvg:
            self.qkvg = nn.Linear(embed_dims, 4 * embed_dims, bias=qkv_bias)
        else:
            self.qg = nn.Linear(embed_dims, 2 * embed_dims, bias=qkv_bias)
            self.kv = nn.Linear(embed_dims, 2 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = nn.Conv2d(self.head_dims, self.head_dims, kernel_size,
                             padding=kernel_size // 2, groups=self.head_dims)
        self.power = nn.Parameter(torch.zeros(1, num_heads, 1, self.head_dims))
        self.scale = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.positional_encoding = nn.Parameter(
            torch.zeros(1, self.pretrain_hw[0] * self.pretrain_hw[1],
                        embed_dims))

    def reset_parameters(self):
        """The released initial values of the Pola parameters: power, scale
        and positional encoding zero (the Linear / conv layers are
        initialised by the backbone or by their own defaults)."""
        for param in (self.power, self.scale, self.positional_encoding):
            nn.init.zeros_(param)

    def key_encoding(self, hw_shape) -> torch.Tensor:
        """The positional encoding for an (H, W) map: (1, H*W, C)."""
        return resize_grid_tokens(self.positional_encoding, self.pretrain_hw,
                                  hw_shape, 'bicubic')

    def exponent(self) -> torch.Tensor:
        """p = 1 + alpha * sigmoid(power): (1, heads, 1, d)."""
        return 1 + self.alpha * torch.sigmoid(self.power)

    def project(self, x, hw_shape):
        """q / s, (k + positional encoding) / s, v and g, each (B, N, C),
        ``s = softplus(scale)``, from tokens x (B, N, C)."""
        if self.fused_qkvg:
            q, k, v, g = self.qkvg(x).chunk(4, dim=-1)
        else:
            q, g = self.qg(x).chunk(2, dim=-1)
            k, v = self.kv(x).chunk(2, dim=-1)
        s = F.softplus(self.scale)
        # (k + encoding) / s: the division in place on the fresh sum
        return q / s, (k + self.key_encoding(hw_shape)).div_(s), v, g

    def forward(self, x, hw_shape, key_mask=None):
        N = x.shape[1]
        H, W = hw_shape
        if N != H * W:
            raise ValueError(f'{N} tokens do not form an {H}x{W} map')
        return self.attend(*self.project(x, hw_shape), hw_shape, key_mask)

    def attend(self, q, k, v, g, hw_shape, key_mask=None, depthwise=None):
        """The attention from the projections (:meth:`project`: q / s,
        (k + encoding) / s, v, g, each (B, N, C)): the core, the depthwise
        conv on v, the gate, ``proj`` and ``proj_drop``. -> (B, N, C).

        ``depthwise`` (callable, optional) stands in for ``self.dwc`` on
        the channels-last (B * heads, d, H, W) map of v: the CPU executor
        passes a conv with its own backward (same arithmetic)."""
        B, N, C = v.shape
        H, W = hw_shape
        h = self.num_heads
        if key_mask is not None:
            v = v * key_mask.reshape(B, N, 1).to(v.dtype)  # nor via dwc
            key_mask = key_mask.reshape(B, 1, N, 1)

        def heads(t):  # (B, N, C) -> (B, heads, N, d)
            return t.reshape(B, N, h, -1).transpose(1, 2)

        v = heads(v)
        out = pola_linear_attention(heads(q), heads(k), v, self.exponent(),
                                    key_mask)
        out = out.transpose(1, 2).reshape(B, N, C)
        # one depthwise kernel set for all heads, as released: v as
        # (B * heads, d, H, W), laid out channels-last (one copy), so the
        # conv's output comes back in the tokens' channel order
        v_map = v.reshape(B * h, H, W, -1).contiguous().permute(0, 3, 1, 2)
        conv = self.dwc if depthwise is None else depthwise
        dwc = conv(v_map).permute(0, 2, 3, 1).reshape(B, h, N, -1)
        dwc = dwc.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj((out + dwc) * g))
