"""Polarity-aware linear attention (PolaFormer, ICLR 2025).

The only place in mmpola where the Pola arithmetic lives. ``PolaAttention``
holds the parameters in the released checkpoints' layout; the functional core
``pola_linear_attention`` computes the released formulation, regrouped so that
it needs one ``|x|**p`` per tensor and one matrix product per side.

Released formulation (``tests/reference_pola.py`` keeps it as the oracle), per
head with q, k, v of shape (N, d) and exponent p of shape (d,)::

    q_sim = [relu(q)**p, relu(-q)**p]     q_opp = [relu(-q)**p, relu(q)**p]
    k'    = [relu(k)**p, relu(-k)**p]     v1, v2 = v[:, :d/2], v[:, d/2:]
    x_sim = q_sim @ (k'^T v1 / n) / (q_sim @ mean(k') + eps)
    x_opp = q_opp @ (k'^T v2 / n) / (q_opp @ mean(k') + eps)
    out   = [x_sim, x_opp]

Regrouping: ``q_opp @ M == q_sim @ swap(M)`` where ``swap`` exchanges the two
row halves of M, so both products and both normalisers come out of a single
``q_sim @ W`` with ``W`` (2d, d + 2) built from ``k'^T [v, 1] / n``.
On the CPU the tokens go through in cache-sized blocks (the 2d-wide features
never exist for the whole sequence); the backward keeps only q, k, v and W
and recomputes the features block by block. CPU inference of a whole block
(norm, attention, residual, FFN) can run over blocks of image rows
(``PolaAttention.forward_in_row_blocks``) with the same arithmetic.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

EPS = 1e-6


TINY = 1e-38  # |x| floor: keeps |x|**(p-1) and log|x| finite at x == 0


def polarity_features(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``[relu(x)**p, relu(-x)**p]``: (..., d) -> (..., 2d).

    One power, ``|x|**p = exp(p * log|x|)`` (1.7x faster than ``pow`` on
    the CPU, within a few float32 ulp; ``|0|**p = exp(-inf) = 0``), then
    ``relu(-x)**p = |x|**p - relu(x)**p`` exactly (one of the two is 0).
    For heads split off a (B, N, C) tensor (x (B, h, N, d) with the heads
    adjacent in memory) ``|x|**p`` is computed in that memory order, where
    exp and log run about 3x faster than on the rows of d of each head.
    """
    d = x.shape[-1]
    out = x.new_empty(*x.shape[:-1], 2 * d)
    if x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == d:
        mag = x.new_empty(x.shape[0], x.shape[2], x.shape[1], d)
        torch.abs(x.transpose(1, 2), out=mag).log_()
        mag = mag.mul_(p.transpose(1, 2)).exp_().transpose(1, 2)
    else:
        mag = torch.abs(x, out=out[..., d:]).log_().mul_(p).exp_()
    torch.gt(x, 0, out=out[..., :d]).mul_(mag)  # 1. or 0. times |x|**p
    torch.sub(mag, out[..., :d], out=out[..., d:])
    return out


def _w_from_key_sums(m, half):
    """W (2d, d+2) from the key sums M = [k+; k-]^T [v, 1] / n (2d, d+1).

    Column groups: [x_sim numerator | x_sim normaliser | x_opp numerator |
    x_opp normaliser]; q_opp's products are q_sim's with M's row halves
    swapped.
    """
    d = m.shape[-1] - 1
    m_swap = torch.cat([m[..., d:, :], m[..., :d, :]], dim=-2)
    return torch.cat([m[..., :half], m[..., d:], m_swap[..., half:d],
                      m_swap[..., d:]], dim=-1)


def _key_sums_grad(dw, half):
    """Adjoint of :func:`_w_from_key_sums`: dW (2d, d+2) -> dM (2d, d+1)."""
    d = dw.shape[-1] - 2
    dw_swap = torch.cat([dw[..., d:, :], dw[..., :d, :]], dim=-2)
    return torch.cat([dw[..., :half], dw_swap[..., half + 1:d + 1],
                      dw[..., half:half + 1] + dw_swap[..., d + 1:]], dim=-1)


def _polarity_grad(x, feats, dfeats, p):
    """Backward of :func:`polarity_features`: (dx, dp per element).

    Float 1/0 masks instead of ``torch.where`` (about 10x slower on the CPU).
    """
    d = x.shape[-1]
    pos = torch.gt(x, 0, out=torch.empty_like(x))             # 1. / 0.
    neg = 1 - pos
    g = (dfeats[..., :d] * pos).addcmul_(dfeats[..., d:], neg)  # d |x|^p
    g.mul_(feats[..., :d] + feats[..., d:])                   # * |x|^p
    ax = x.abs().clamp_min_(TINY)
    dp = g * ax.log()                                         # ln|x| |x|^p
    dx = g.div_(ax).mul_(p).mul_(pos.sub_(neg))               # p |x|^(p-1)
    return dx, dp


# Tokens are processed in blocks so that the 2d-wide features of a block
# stay in cache and are never materialised for the whole sequence (on the
# CPU a fresh N x 2d buffer costs more than the arithmetic on it).
CPU_BLOCK_ELEMENTS = 1 << 19


def _token_blocks(x: torch.Tensor):
    """Slices of the token axis (-2) of x (B, h, N, d) to process at once."""
    B, h, N, d = x.shape
    if x.device.type == 'cpu':
        step = max(64, CPU_BLOCK_ELEMENTS // (B * h * 2 * d))
    else:
        step = N
    return [slice(i, min(i + step, N)) for i in range(0, N, step)]


def _key_features(k, p, key_mask, blk):
    """Polarity features of the keys in token block ``blk``, padded keys
    zeroed: (B, h, T, 2d)."""
    kf = polarity_features(k[..., blk, :], p)
    if key_mask is not None:
        kf.mul_(key_mask[..., blk, :])
    return kf


def _add_key_sums(m, kf, v):
    """Accumulate a block of keys: ``m (B, h, 2d, d+1) += kf^T [v, 1]``,
    kf (B, h, T, 2d) its key features, v (B, h, T, d)."""
    d = v.shape[-1]
    m[..., :d].add_(kf.transpose(-2, -1) @ v)
    m[..., d].add_(kf.sum(dim=-2))


def _query_output(qf, w, out):
    """``[x_sim, x_opp]`` of a block of queries into ``out`` (B, h, T, d):
    one product of its features qf (B, h, T, 2d) with W (B, h, 2d, d+2),
    then the two normalisations."""
    half = out.shape[-1] // 2
    o = qf @ w
    o[..., half].add_(EPS)
    o[..., -1].add_(EPS)
    torch.div(o[..., :half], o[..., half:half + 1], out=out[..., :half])
    torch.div(o[..., half + 1:-1], o[..., -1:], out=out[..., half:])


class _PolaCore(torch.autograd.Function):
    """Regrouped released arithmetic, blocked over tokens, with a
    hand-written backward.

    Per block: one ``|x|**p`` per tensor, the key sums M accumulated, then
    one query-side product with W (q_opp and the normalisers folded in).
    Only q, k, v and the small W are kept for backward, which recomputes
    the features block by block.
    """

    @staticmethod
    def forward(ctx, q, k, v, p, key_mask):
        B, h, N, d = v.shape
        half = d // 2
        if key_mask is None:
            n = N
        else:
            n = key_mask.sum(dim=-2, keepdim=True).clamp_(min=1)
        m = v.new_zeros(B, h, 2 * d, d + 1)        # [k+; k-]^T [v, 1]
        for blk in _token_blocks(k):
            _add_key_sums(m, _key_features(k, p, key_mask, blk),
                          v[..., blk, :])
        w = _w_from_key_sums(m.div_(n), half)             # (B, h, 2d, d+2)
        buf = v.new_empty(B, N, h, d)              # (B, N, C) memory order
        x = buf.transpose(1, 2)
        for blk in _token_blocks(q):
            _query_output(polarity_features(q[..., blk, :], p), w,
                          x[..., blk, :])
        ctx.save_for_backward(q, k, v, p, w,
                              key_mask if key_mask is not None else m[:0])
        ctx.n, ctx.half = n, half
        return buf

    @staticmethod
    def backward(ctx, dbuf):
        dx = dbuf.transpose(1, 2)
        q, k, v, p, w, key_mask = ctx.saved_tensors
        half, n = ctx.half, ctx.n
        d = 2 * half
        key_mask = key_mask if key_mask.numel() else None
        dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))
        dw = torch.zeros_like(w)
        dp = torch.zeros_like(p.expand(1, q.shape[1], 1, d))
        wt = w.transpose(-2, -1)
        for blk in _token_blocks(q):
            qf = polarity_features(q[..., blk, :], p)
            out = qf @ w                                   # (B, h, T, d+2)
            dxb = dx[..., blk, :]
            # through x_sim = num / (z + eps), x_opp likewise
            z_sim = out[..., half:half + 1].add_(EPS)
            z_opp = out[..., -1:].add_(EPS)
            d_out = torch.empty_like(out)  # column groups as in W
            for i, (g, z) in enumerate(((dxb[..., :half], z_sim),
                                        (dxb[..., half:], z_opp))):
                c, cz = i * (half + 1), i * (half + 1) + half  # num., z
                torch.div(g, z, out=d_out[..., c:cz])
                torch.div((g * out[..., c:cz]).sum(-1, keepdim=True).neg_(),
                          z.square(), out=d_out[..., cz:cz + 1])
            dw.add_(qf.transpose(-2, -1) @ d_out)
            dqb, dpb = _polarity_grad(q[..., blk, :], qf, d_out @ wt, p)
            dq[..., blk, :] = dqb
            dp.add_(dpb.sum(dim=(0, 2), keepdim=True))
        ds = _key_sums_grad(dw, half).div_(n)           # d[k+; k-]^T [v, 1]
        ds_v, ds_1 = ds[..., :d], ds[..., d:].transpose(-2, -1)
        ds_vt = ds_v.transpose(-2, -1)
        for blk in _token_blocks(k):
            kf = _key_features(k, p, key_mask, blk)
            dkf = (v[..., blk, :] @ ds_vt).add_(ds_1)      # (B, h, T, 2d)
            if key_mask is not None:
                dkf.mul_(key_mask[..., blk, :])
            dv[..., blk, :] = kf @ ds_v
            dkb, dpb = _polarity_grad(k[..., blk, :], kf, dkf, p)
            dk[..., blk, :] = dkb
            dp.add_(dpb.sum(dim=(0, 2), keepdim=True))
        return dq, dk, dv, dp.sum_to_size(p.shape), None


def pola_linear_attention(q: torch.Tensor,
                          k: torch.Tensor,
                          v: torch.Tensor,
                          p: torch.Tensor,
                          key_mask: Optional[torch.Tensor] = None
                          ) -> torch.Tensor:
    """Polarity-aware linear attention core.

    Runs in float32 whatever the autocast state: the powers (up to 5) of
    ``q / softplus(scale)`` overflow float16 above about 9.2.

    Args:
        q, k (Tensor): (B, heads, N, d), already divided by ``softplus(scale)``
            (k with the positional encoding added).
        v (Tensor): (B, heads, N, d), d even.
        p (Tensor): exponents, broadcastable to (1, heads, 1, d).
        key_mask (Tensor, optional): (B, 1, N, 1), 1 for real tokens and 0
            for padding; padded keys are left out of every sum over keys.

    Returns:
        Tensor: (B, heads, N, d) in v's dtype, channels ``[x_sim, x_opp]``,
        laid out in memory as (B, N, heads, d) so that merging the heads is
        free. Inputs may be strided views (e.g. heads split off a (B, N, C)
        projection): the first pass over each reads them in place.
    """
    out_dtype = v.dtype
    dtype = torch.promote_types(v.dtype, torch.float32)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v, p = (t.to(dtype) for t in (q, k, v, p))
        if key_mask is not None:
            key_mask = key_mask.to(dtype)
        out = _PolaCore.apply(q, k, v, p, key_mask)
        return out.transpose(1, 2).to(out_dtype)


class _DepthwiseConvCPU(torch.autograd.Function):
    """``F.conv2d(x, w, b, padding=k // 2, groups=C)`` with a faster CPU
    backward: oneDNN's depthwise weight gradient takes about 10x the
    forward; here it is one grouped convolution of the padded input with
    the output gradient (one group per image and channel), and the input
    gradient the convolution with the flipped kernel."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w, b, padding=w.shape[-1] // 2, groups=x.shape[1])

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        B, C, H, W = x.shape
        k = w.shape[-1]
        pad = k // 2
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = dw = db = None
        if need_x:
            dx = F.conv2d(g, w.flip(-2, -1), padding=pad, groups=C)
        if need_w:
            xp = F.pad(x, (pad, pad, pad, pad)).reshape(
                1, B * C, H + 2 * pad, W + 2 * pad)
            dw = F.conv2d(xp, g.reshape(B * C, 1, H, W), groups=B * C)
            dw = dw.view(B, C, 1, k, k).sum(0)
        if need_b:
            db = g.sum((0, 2, 3))
        return dx, dw, db


def depthwise_conv(x, w, b):
    """Depthwise 'same' convolution (odd kernel) of x (B, C, H, W)."""
    if (x.device.type == 'cpu' and torch.is_grad_enabled()
            and not torch.is_autocast_enabled('cpu')):
        return _DepthwiseConvCPU.apply(x, w, b)
    return F.conv2d(x, w, b, padding=w.shape[-1] // 2, groups=x.shape[1])


def _interp_matrix(src: int, dst: int, mode: str, like: torch.Tensor):
    """(dst, src) matrix of ``F.interpolate`` along one axis."""
    eye = torch.eye(src, dtype=like.dtype, device=like.device)
    cols = F.interpolate(eye.view(1, src, src, 1), size=(dst, 1), mode=mode,
                         align_corners=False)
    return cols[0, :, :, 0].T


def token_grid_rows(tokens: torch.Tensor, src_hw: Tuple[int, int],
                    dst_hw: Tuple[int, int], mode: str):
    """Rows of (1, Hs*Ws, C) grid tokens resized to (Hd, Wd), on demand.

    Equals ``F.interpolate`` (bilinear / bicubic, align_corners=False: both
    separable), as two matrix products, forward and backward: the columns
    of the small grid first, then one product per request for the rows.

    Returns:
        callable: ``rows(sl)`` -> (1, len(sl) * Wd, C), rows ``sl`` (a
        slice of 0..Hd) of the resized grid.
    """
    (hs, ws), (hd, wd) = src_hw, dst_hw
    C = tokens.shape[-1]
    grid = tokens.reshape(hs, ws, C)
    if ws != wd:
        grid = _interp_matrix(ws, wd, mode, tokens) @ grid   # (hs, wd, C)
    grid = grid.reshape(hs, wd * C)
    row_matrix = _interp_matrix(hs, hd, mode, tokens) if hs != hd else None

    def rows(sl: slice) -> torch.Tensor:
        out = grid[sl] if row_matrix is None else row_matrix[sl] @ grid
        return out.reshape(1, -1, C)

    return rows


def resize_token_grid(tokens: torch.Tensor, src_hw: Tuple[int, int],
                      dst_hw: Tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (1, Hs*Ws, C) grid tokens to (1, Hd*Wd, C) (see
    :func:`token_grid_rows`)."""
    if tuple(src_hw) == tuple(dst_hw):
        return tokens
    return token_grid_rows(tokens, src_hw, dst_hw, mode)(slice(None))


def cpu_inference_in_parts(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether CPU inference may compute ``module``'s result in parts of
    the token map instead of calling its forward: CPU, no gradient, no
    autocast, and nothing that observes the module (forward hooks, e.g.
    of the attention-map tool; tracing, e.g. of the FLOP counter)."""
    return (x.device.type == 'cpu' and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled('cpu')
            and not module._forward_hooks and not module._forward_pre_hooks
            and not torch.jit.is_tracing() and not torch.jit.is_scripting())


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
            all heads).
        qkv_bias (bool): bias of the input projections.
        proj_drop (float): dropout after the output projection.

    Shapes:
        forward(x (B, N, C), hw_shape=(H, W), key_mask (B, N) or None)
        -> (B, N, C), N = H * W.
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
        assert embed_dims % num_heads == 0
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        assert self.head_dims % 2 == 0, 'head dim must be even (v is split)'
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
            torch.zeros(1, pretrain_hw[0] * pretrain_hw[1], embed_dims))

    def _projection(self):
        """Weight (4C, C) and bias of the q | k | v | g projection with the
        q and k rows divided by ``s = softplus(scale)``, and s (C,)."""
        C = self.embed_dims
        s = F.softplus(self.scale).view(C)
        if self.fused_qkvg:  # rows q | k | v | g
            w, b = self.qkvg.weight, self.qkvg.bias
        else:  # q | g and k | v -> q | k | v | g
            w = torch.cat([self.qg.weight[:C], self.kv.weight,
                           self.qg.weight[C:]])
            b = None if self.qg.bias is None else torch.cat(
                [self.qg.bias[:C], self.kv.bias, self.qg.bias[C:]])
        div = torch.cat([s, s, s.new_ones(2 * C)])
        return w / div[:, None], None if b is None else b / div, s

    def _key_encoding(self, hw_shape, s):
        """Positional encoding divided by s, resized to the map: its rows on
        demand (:func:`token_grid_rows`), each (1, rows * W, C)."""
        return token_grid_rows(self.positional_encoding / s,
                               self.pretrain_hw, tuple(hw_shape), 'bicubic')

    def project(self, x, hw_shape):
        """q / s, (k + positional encoding) / s, v and g, each (B, N, C),
        ``s = softplus(scale)``, from tokens x (B, N, C).

        One matrix product; the division by s is folded into its q and k
        rows (``x (W / s)^T + b / s``), so no (B, N, C) pass, forward or
        backward, is spent on it.
        """
        w, b, s = self._projection()
        q, k, v, g = F.linear(x, w, b).chunk(4, dim=-1)
        return q, k + self._key_encoding(hw_shape, s)(slice(None)), v, g

    def _dwc_params(self):
        """The shared depthwise kernel repeated for every head: (C, 1, k, k)
        weight and (C,) bias."""
        return (self.dwc.weight.repeat(self.num_heads, 1, 1, 1),
                self.dwc.bias.repeat(self.num_heads))

    def exponent(self):
        """p = 1 + alpha * sigmoid(power): (1, heads, 1, d)."""
        return 1 + self.alpha * torch.sigmoid(self.power)

    def forward(self, x, hw_shape, key_mask=None):
        B, N, C = x.shape
        H, W = hw_shape
        assert N == H * W, f'{N} tokens do not form a {H}x{W} map'
        q, k, v, g = self.project(x, hw_shape)
        if key_mask is not None:
            v = v * key_mask.reshape(B, N, 1).to(v.dtype)  # nor via dwc

        def heads(t):  # (B, N, C) -> (B, heads, N, d), a view
            return t.view(B, N, self.num_heads, -1).transpose(1, 2)

        p = self.exponent()
        if key_mask is not None:
            key_mask = key_mask.reshape(B, 1, N, 1)
        out = pola_linear_attention(heads(q), heads(k), heads(v), p, key_mask)
        out = out.transpose(1, 2).reshape(B, N, C)
        # one kernel set for all heads: a C-channel depthwise conv on v as
        # a channels-last map (its memory is v's (B, N, C): no permute)
        v_map = v.view(B, H, W, C).permute(0, 3, 1, 2)
        dwc = depthwise_conv(v_map, *self._dwc_params())
        dwc = dwc.permute(0, 2, 3, 1).reshape(B, N, C)
        if torch.is_grad_enabled():
            out = (out + dwc) * g
        else:  # inference: in place, no new (B, N, C) buffers
            out = out.add_(dwc).mul_(g)
        return self.proj_drop(self.proj(out))

    # forward_in_row_blocks: whole rows per block, so that its (B, T, 4C)
    # projection has about this many elements
    CPU_ROW_BLOCK_ELEMENTS = 1 << 21

    def row_blocks_apply(self, x):
        """Whether :meth:`forward_in_row_blocks` may stand in for
        :meth:`forward` (:func:`cpu_inference_in_parts`)."""
        return cpu_inference_in_parts(x, self)

    @torch.no_grad()
    def forward_in_row_blocks(self, x, hw_shape, norm, epilogue, out=None):
        """Inference of ``epilogue(x, self(norm(x), hw_shape))``, row-wise.

        The same arithmetic as :meth:`forward` without a key mask, run over
        blocks of whole image rows so that only v and the result are
        allocated for the whole map (fresh large buffers cost page faults
        on the CPU; per-block ones are reused and stay in cache). Two
        passes: keys and values (the key sums M, v kept for the depthwise
        conv), then per block the queries, the conv of its rows (with a
        halo of k // 2 rows), the gate, ``proj`` and ``epilogue``, which
        must be row-wise (e.g. the residual and the FFN).

        Args:
            x (Tensor): (B, N, C) tokens of an (H, W) map.
            hw_shape (tuple): (H, W).
            norm (callable): row-wise map applied to x before the attention.
            epilogue (callable): ``(x rows (B, T, C), attention of those
                rows (B, T, C), may be modified in place) -> (B, T, C)``.
            out (Tensor, optional): (B, N, C) to write the result to; may
                be x itself (each block of rows is read before it is
                written, and x is not read after that).

        Returns:
            Tensor: (B, N, C).
        """
        B, N, C = x.shape
        H, W = hw_shape
        assert N == H * W, f'{N} tokens do not form a {H}x{W} map'
        h, d = self.num_heads, self.head_dims
        rows = max(1, self.CPU_ROW_BLOCK_ELEMENTS // (4 * B * C * W))
        blocks = [(r, min(r + rows, H)) for r in range(0, H, rows)]

        def heads(t):  # (B, T, C) -> (B, h, T, d), a view
            return t.view(B, -1, h, d).transpose(1, 2)

        w, b, s = self._projection()
        w_qg, w_kv = torch.cat([w[:C], w[3 * C:]]), w[C:3 * C]
        b_qg, b_kv = ((None, None) if b is None else
                      (torch.cat([b[:C], b[3 * C:]]), b[C:3 * C]))
        k_enc = self._key_encoding(hw_shape, s)
        p = self.exponent()
        v = x.new_empty(B, N, C)
        m = x.new_zeros(B, h, 2 * d, d + 1)
        for r0, r1 in blocks:
            blk = slice(r0 * W, r1 * W)
            kv = F.linear(norm(x[:, blk]), w_kv, b_kv)        # (B, T, 2C)
            k = kv[..., :C].add_(k_enc(slice(r0, r1)))
            v[:, blk] = kv[..., C:]
            _add_key_sums(m, polarity_features(heads(k), p),
                          heads(kv[..., C:]))
        w_att = _w_from_key_sums(m.div_(N), d // 2)

        out = torch.empty_like(x) if out is None else out
        v_map = v.view(B, H, W, C).permute(0, 3, 1, 2)
        dwc_w, dwc_b = self._dwc_params()
        pad = dwc_w.shape[-1] // 2
        for r0, r1 in blocks:
            blk = slice(r0 * W, r1 * W)
            xb = x[:, blk]
            qg = F.linear(norm(xb), w_qg, b_qg)                # (B, T, 2C)
            a = x.new_empty(B, r1 - r0, W, C)
            _query_output(polarity_features(heads(qg[..., :C]), p), w_att,
                          heads(a.view(B, -1, C)))
            # rows r0..r1 of the conv need v's rows r0 - pad .. r1 + pad
            lo, hi = max(0, r0 - pad), min(H, r1 + pad)
            dwc = F.conv2d(v_map[:, :, lo:hi], dwc_w, dwc_b, padding=pad,
                           groups=C)[:, :, r0 - lo:r1 - lo]
            a.add_(dwc.permute(0, 2, 3, 1))
            a = a.view(B, -1, C).mul_(qg[..., C:])
            out[:, blk] = epilogue(xb, self.proj_drop(self.proj(a)))
        return out
