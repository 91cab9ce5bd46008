"""Polarity-aware linear attention (PolaFormer, ICLR 2025): a layer that
needs torch alone. It calls its submodules; the arithmetic between them is
:func:`mmpola.ops.pola_linear_attention`."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import pola_linear_attention


def _axis_weights(src: int, dst: int, mode: str, like: torch.Tensor):
    """(src, dst) weights of ``F.interpolate`` along one axis: column j holds
    the taps of output j (exactly what interpolate computes, borders
    included)."""
    eye = torch.eye(src, dtype=like.dtype, device=like.device)
    return F.interpolate(eye[None, :, :, None], size=(dst, 1), mode=mode,
                         align_corners=False)[0, :, :, 0]


def resize_grid_tokens(tokens: torch.Tensor, src_hw: Tuple[int, int],
                       dst_hw: Tuple[int, int], mode: str) -> torch.Tensor:
    """(1, Hs*Ws, C) grid tokens -> (1, Hd*Wd, C): ``F.interpolate``
    (``mode`` 'bilinear' / 'bicubic', no corner alignment) in float32 (or
    float64), as two products with the separable interpolation weights
    (compiled graphs run products well, gathers badly); the tokens
    themselves when the sizes agree."""
    src_hw, dst_hw = tuple(src_hw), tuple(dst_hw)
    if src_hw == dst_hw:
        return tokens
    dtype = torch.float64 if tokens.dtype == torch.float64 else torch.float32
    grid = tokens.reshape(*src_hw, -1).to(dtype)
    wh = _axis_weights(src_hw[0], dst_hw[0], mode, grid)
    ww = _axis_weights(src_hw[1], dst_hw[1], mode, grid)
    out = torch.einsum('hwc,hi,wj->ijc', grid, wh, ww)
    return out.to(tokens.dtype).reshape(1, dst_hw[0] * dst_hw[1], -1)


class PolaAttention(nn.Module):
    """Polarity-aware linear attention with the released parameter layout.

    Args:
        embed_dims (int): C.
        num_heads (int): heads; the head dim ``C // heads`` must be even.
        pretrain_hw (tuple[int, int]): grid of ``positional_encoding``
            (56x56 for stage 1 at 224). Other map sizes get it resized
            (bicubic, as the released code resizes it).
        fused_qkvg (bool): Swin layout ``qkvg = Linear(C, 4C)`` (True) or
            PVT layout ``qg, kv = Linear(C, 2C)`` (False).
        alpha (float): exponent range, ``p = 1 + alpha * sigmoid(power)``.
        kernel_size (int): depthwise conv on v, odd (one kernel set shared
            by all heads: weight (C / heads, 1, k, k)).
        qkv_bias (bool): bias of the input projections.
        proj_drop (float): dropout after the output projection.

    Shapes:
        forward(x (B, N, C), hw_shape=(H, W), key_mask (B, N) or None)
        -> (B, N, C), N = H * W. ``key_mask`` is 1 for real tokens and 0
        for padding (left out of every sum over keys and of the depthwise
        conv's input).

    Example:
        >>> attn = PolaAttention(64, 2, pretrain_hw=(14, 14))
        >>> attn(torch.rand(2, 10 * 12, 64), (10, 12)).shape
        torch.Size([2, 120, 64])
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 pretrain_hw: Tuple[int, int],
                 fused_qkvg: bool = False,
                 alpha: float = 4.,
                 kernel_size: int = 5,
                 qkv_bias: bool = True,
                 proj_drop: float = 0.):
        super().__init__()
        if num_heads < 1 or embed_dims % num_heads:
            raise ValueError(
                f'num_heads ({num_heads}) must be >= 1 and divide embed_dims '
                f'({embed_dims})')
        head_dims = embed_dims // num_heads
        if head_dims % 2:
            raise ValueError(
                f'Pola attention needs an even head dim (v is split in two '
                f'halves): embed_dims {embed_dims} / num_heads {num_heads} = '
                f'{head_dims}')
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f'kernel_size must be odd and >= 1, got {kernel_size}')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
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
        self.dwc = nn.Conv2d(head_dims, head_dims, kernel_size,
                             padding=kernel_size // 2, groups=head_dims)
        # released initial values: zero
        self.power = nn.Parameter(torch.zeros(1, num_heads, 1, head_dims))
        self.scale = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.positional_encoding = nn.Parameter(
            torch.zeros(1, self.pretrain_hw[0] * self.pretrain_hw[1],
                        embed_dims))

    def exponent(self) -> torch.Tensor:
        """p = 1 + alpha * sigmoid(power): (1, heads, 1, d)."""
        return 1 + self.alpha * torch.sigmoid(self.power)

    def project(self, x: torch.Tensor, hw_shape: Tuple[int, int]):
        """q / s, (k + positional encoding) / s, v and g (each (B, N, C),
        ``s = softplus(scale)``) of tokens x (B, N, C) of an (H, W) map."""
        if self.fused_qkvg:
            q, k, v, g = self.qkvg(x).chunk(4, dim=-1)
        else:
            q, g = self.qg(x).chunk(2, dim=-1)
            k, v = self.kv(x).chunk(2, dim=-1)
        k = k + resize_grid_tokens(self.positional_encoding, self.pretrain_hw,
                                   hw_shape, 'bicubic')
        s = F.softplus(self.scale)
        return q / s, k / s, v, g

    def forward(self,
                x: torch.Tensor,
                hw_shape: Tuple[int, int],
                key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, C = x.shape
        H, W = hw_shape
        if N != H * W:
            raise ValueError(f'{N} tokens do not form an {H}x{W} map')
        q, k, v, g = self.project(x, hw_shape)
        if key_mask is not None:
            v = v * key_mask.reshape(B, N, 1).to(v.dtype)
            key_mask = key_mask.reshape(B, 1, N, 1)
        h = self.num_heads
        q, k, v = (t.reshape(B, N, h, -1).transpose(1, 2) for t in (q, k, v))
        out = pola_linear_attention(q, k, v, self.exponent(), key_mask)
        out = out.transpose(1, 2).reshape(B, N, C)
        # one depthwise kernel set for all heads, as released: v as
        # (B * heads, d, H, W), a channels-last view of one copy, so the
        # conv's output comes back in the tokens' channel order
        v = v.reshape(B * h, H, W, -1).contiguous().permute(0, 3, 1, 2)
        v = self.dwc(v).permute(0, 2, 3, 1).reshape(B, h, N, -1)
        v = v.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj((out + v) * g))
