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
and recomputes the features block by block. In training, everything between
the projections (core, depthwise conv, gate) is one autograd node
(``_PolaMixing``) whose backward writes into one gradient buffer. CPU
inference of a whole block
(norm, attention, residual, FFN) can run over blocks of image rows
(``PolaAttention.forward_in_row_blocks``) with the same arithmetic.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

EPS = 1e-6


TINY = 1e-38  # |x| floor: keeps |x|**(p-1) and log|x| finite at x == 0
LOG_TINY = math.log(TINY)


class Workspace:
    """Scratch buffers reused across the token blocks of one call.

    ``ws(name, *shape)`` is a contiguous tensor of that shape on the first
    elements of buffer ``name`` (grown when too small). On the CPU a fresh
    buffer of a few MB costs more in first-touch page faults than the
    arithmetic on it; a reused one is already mapped and in cache.
    """

    def __init__(self, like: torch.Tensor):
        self.like = like
        self.buffers = {}

    def __call__(self, name: str, *shape: int) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= s
        buf = self.buffers.get(name)
        if buf is None or buf.numel() < n:
            buf = self.buffers[name] = self.like.new_empty(n)
        return buf[:n].view(shape)

    def like_heads(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """A buffer shaped like x; for heads split off a (B, N, C) tensor
        (x (B, h, T, d), heads adjacent in memory) laid out as (B, T, h, d),
        where element-wise passes run over rows of h * d, not d."""
        if x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == x.shape[-1]:
            B, h, T, d = x.shape
            return self(name, B, T, h, d).transpose(1, 2)
        return self(name, *x.shape)


def linear_into(out, x, w, b):
    """``F.linear(x, w, b)`` of a 2-D x written into ``out`` (e.g. a
    :class:`Workspace` buffer: no fresh output)."""
    if b is None:
        return torch.mm(x, w.t(), out=out)
    return torch.addmm(b, x, w.t(), out=out)


def polarity_features(x: torch.Tensor, p: torch.Tensor,
                      ws: Optional[Workspace] = None,
                      keep_log: bool = False):
    """``[relu(x)**p, relu(-x)**p]``: (..., d) -> (..., 2d).

    One power, ``|x|**p = exp(p * log|x|)`` (1.7x faster than ``pow`` on
    the CPU, within a few float32 ulp; ``|0|**p = exp(-inf) = 0``), then
    ``relu(-x)**p = |x|**p - relu(x)**p`` exactly (one of the two is 0).
    ``|x|**p`` is computed in x's memory order when x holds heads split off
    a (B, N, C) tensor (:meth:`Workspace.like_heads`): exp and log run
    about 3x faster there than on the rows of d of each head.

    Args:
        ws (Workspace, optional): where the result and temporaries go
            (buffers 'feat', 'mag', 'log'); fresh buffers by default.
        keep_log (bool): also return ``log|x|`` (-inf at 0).
    """
    ws = Workspace(x) if ws is None else ws
    d = x.shape[-1]
    out = ws('feat', *x.shape[:-1], 2 * d)
    mag = ws.like_heads('mag', x)
    if keep_log:
        log_abs = ws.like_heads('log', x)
        torch.abs(x, out=log_abs).log_()
        torch.mul(log_abs, p, out=mag).exp_()
    else:
        torch.abs(x, out=mag).log_().mul_(p).exp_()
    torch.gt(x, 0, out=out[..., :d]).mul_(mag)  # 1. or 0. times |x|**p
    torch.sub(mag, out[..., :d], out=out[..., d:])
    return (out, log_abs) if keep_log else out


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


def _polarity_grad(x, feats, log_abs, dfeats, p, dx, ws):
    """Backward of :func:`polarity_features`: dx written into ``dx``; the
    exponent's gradient summed over batch and tokens returned (1, h, 1, d).

    With f = [f+, f-] the features and a = |x|**p = f+ + f-:
    ``g = dL/da * a = df+ * f+ + df- * f-``, ``dL/dp = g * ln|x|`` and
    ``dL/dx = g * p / x`` (0 at x == 0, where g == 0). ``log_abs`` (log|x|
    from the features) is overwritten.
    """
    d = x.shape[-1]
    g = ws.like_heads('g', x)
    torch.mul(dfeats[..., :d], feats[..., :d], out=g)
    g.addcmul_(dfeats[..., d:], feats[..., d:])
    dp = log_abs.clamp_min_(LOG_TINY).mul_(g).sum(dim=(0, 2), keepdim=True)
    ax = torch.abs(x, out=log_abs).clamp_min_(TINY).copysign_(x)
    torch.div(g, ax, out=dx).mul_(p)
    return dp


# Tokens are processed in blocks so that the 2d-wide features of a block
# stay in cache and are never materialised for the whole sequence (on the
# CPU a fresh N x 2d buffer costs more than the arithmetic on it).
CPU_BLOCK_ELEMENTS = 1 << 19


def block_slices(n: int, step: int):
    """Slices of range(n) of ``step`` items each (the last may be
    shorter)."""
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _token_blocks(x: torch.Tensor):
    """Slices of the token axis (-2) of x (B, h, N, d) to process at once."""
    B, h, N, d = x.shape
    if x.device.type == 'cpu':
        step = max(64, CPU_BLOCK_ELEMENTS // (B * h * 2 * d))
    else:
        step = N
    return block_slices(N, step)


def _key_features(k, p, key_mask, blk, ws, keep_log=False, k_add=None):
    """Polarity features of the keys in token block ``blk``, padded keys
    zeroed: (B, h, T, 2d) (and log|k| if ``keep_log``). ``k_add``
    (broadcastable to k, e.g. a positional encoding) is added first."""
    kb = k[..., blk, :]
    if k_add is not None:
        kb = torch.add(kb, k_add[..., blk, :], out=ws.like_heads('k', kb))
    res = polarity_features(kb, p, ws, keep_log)
    if key_mask is not None:
        (res[0] if keep_log else res).mul_(key_mask[..., blk, :])
    return res, kb


def _bmm(a, b, out):
    """``a @ b`` of (..., n, k) and (..., k, m) tensors into ``out``; the
    batch dims of a and b must flatten without a copy."""
    torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]),
              out=out.view(-1, *out.shape[-2:]))
    return out


def _add_key_sums(m, kf, v, ws):
    """Accumulate a block of keys: ``m (B, h, 2d, d+1) += kf^T [v, 1]``,
    kf (B, h, T, 2d) its key features, v (B, h, T, d) (any strides)."""
    d = v.shape[-1]
    vb = ws('v', *v.shape).copy_(v)
    kv = _bmm(kf.transpose(-2, -1), vb, ws('kv', *m[..., :d].shape))
    m[..., :d].add_(kv)
    m[..., d].add_(kf.sum(dim=-2))


def _query_scores(qf, w, ws):
    """qf (B, h, T, 2d) @ W (B, h, 2d, d+2): numerators and normalisers of
    [x_sim, x_opp] (column groups as in W), normalisers + eps."""
    half = w.shape[-1] // 2 - 1
    o = _bmm(qf, w, ws('qw', *qf.shape[:-1], w.shape[-1]))
    o[..., half].add_(EPS)
    o[..., -1].add_(EPS)
    return o


def _query_output(qf, w, out, ws):
    """``[x_sim, x_opp]`` of a block of queries into ``out`` (B, h, T, d):
    one product of its features qf (B, h, T, 2d) with W (B, h, 2d, d+2),
    then the two normalisations."""
    half = out.shape[-1] // 2
    o = _query_scores(qf, w, ws)
    torch.div(o[..., :half], o[..., half:half + 1], out=out[..., :half])
    torch.div(o[..., half + 1:-1], o[..., -1:], out=out[..., half:])


def _core_forward(q, k, v, p, key_mask, out, k_add=None):
    """Regrouped released arithmetic, blocked over tokens.

    Per block: one ``|x|**p`` per tensor, the key sums M accumulated, then
    one query-side product with W (q_opp and the normalisers folded in).
    Writes ``[x_sim, x_opp]`` into ``out`` (B, h, N, d) and returns W
    (B, h, 2d, d+2) and the key count n, which with q, k, v is all that
    :func:`_core_backward` needs (it recomputes the features). The keys
    are ``k + k_add``. Per-block temporaries live in one
    :class:`Workspace`.
    """
    B, h, N, d = v.shape
    if key_mask is None:
        n = N
    else:
        n = key_mask.sum(dim=-2, keepdim=True).clamp_(min=1)
    ws = Workspace(v)
    m = v.new_zeros(B, h, 2 * d, d + 1)        # [k+; k-]^T [v, 1]
    for blk in _token_blocks(k):
        kf, _ = _key_features(k, p, key_mask, blk, ws, k_add=k_add)
        _add_key_sums(m, kf, v[..., blk, :], ws)
    w = _w_from_key_sums(m.div_(n), d // 2)                # (B, h, 2d, d+2)
    for blk in _token_blocks(q):
        _query_output(polarity_features(q[..., blk, :], p, ws), w,
                      out[..., blk, :], ws)
    return w, n


def _core_backward(dx, q, k, v, p, w, n, key_mask, dq, dk, dv, k_add=None):
    """Backward of :func:`_core_forward` for the output gradient dx
    (B, h, N, d): writes the gradients of q, k (= of k_add's sum) and v
    into dq, dk, dv (any strides) and returns the exponent's (1, h, 1, d).
    """
    B, h, N, d = v.shape
    half = d // 2
    dw = torch.zeros_like(w)
    dp = torch.zeros_like(p.expand(1, h, 1, d))
    wt = w.transpose(-2, -1).contiguous()
    ws = Workspace(v)
    for blk in _token_blocks(q):
        qf, log_q = polarity_features(q[..., blk, :], p, ws, True)
        out = _query_scores(qf, w, ws)                     # (B, h, T, d+2)
        dxb = dx[..., blk, :]
        # through x_sim = num / (z + eps), x_opp likewise
        d_out = ws('d_out', *out.shape)  # column groups as in W
        for i, g in enumerate((dxb[..., :half], dxb[..., half:])):
            c, cz = i * (half + 1), i * (half + 1) + half  # num., z
            z = out[..., cz:cz + 1]
            torch.div(g, z, out=d_out[..., c:cz])
            gx = torch.mul(g, out[..., c:cz], out=ws('gx', *g.shape))
            torch.div(gx.sum(-1, keepdim=True).neg_(), z.square(),
                      out=d_out[..., cz:cz + 1])
        dw.add_(_bmm(qf.transpose(-2, -1), d_out, ws('dw', *w.shape)))
        dqf = _bmm(d_out, wt, ws('dfeat', *qf.shape))
        dp.add_(_polarity_grad(q[..., blk, :], qf, log_q, dqf, p,
                               dq[..., blk, :], ws))
    ds = _key_sums_grad(dw, half).div_(n)               # d[k+; k-]^T [v, 1]
    ds_v, ds_1 = ds[..., :d], ds[..., d:].transpose(-2, -1)
    ds_vt = ds_v.transpose(-2, -1).contiguous()
    ds_v = ds_v.contiguous()
    for blk in _token_blocks(k):
        (kf, log_k), kb = _key_features(k, p, key_mask, blk, ws, True, k_add)
        T = kf.shape[-2]
        vb = ws('v', B, h, T, d).copy_(v[..., blk, :])
        dkf = _bmm(vb, ds_vt, ws('dfeat', B, h, T, 2 * d)).add_(ds_1)
        if key_mask is not None:
            dkf.mul_(key_mask[..., blk, :])
        dv[..., blk, :] = _bmm(kf, ds_v, ws('dv', B, h, T, d))
        dp.add_(_polarity_grad(kb, kf, log_k, dkf, p, dk[..., blk, :], ws))
    return dp.sum_to_size(p.shape)


class _PolaCore(torch.autograd.Function):
    """:func:`_core_forward` with its hand-written backward; only q, k, v
    and the small W are kept for it."""

    @staticmethod
    def forward(ctx, q, k, v, p, key_mask):
        B, h, N, d = v.shape
        buf = v.new_empty(B, N, h, d)              # (B, N, C) memory order
        w, n = _core_forward(q, k, v, p, key_mask, buf.transpose(1, 2))
        ctx.save_for_backward(q, k, v, p, w,
                              key_mask if key_mask is not None else w[:0])
        ctx.n = n
        return buf

    @staticmethod
    def backward(ctx, dbuf):
        q, k, v, p, w, key_mask = ctx.saved_tensors
        key_mask = key_mask if key_mask.numel() else None
        dq, dk, dv = (torch.empty_like(v) for _ in range(3))
        dp = _core_backward(dbuf.transpose(1, 2), q, k, v, p, w, ctx.n,
                            key_mask, dq, dk, dv)
        return dq, dk, dv, dp, None


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


def _depthwise_conv_backward(x, w, g, need_x, need_w, need_b, native=None):
    """Gradients (dx, dw, db; None where not needed) of
    ``F.conv2d(x, w, b, padding=k // 2, groups=C)`` for the output gradient
    g (B, C, H, W). On the CPU oneDNN's depthwise weight gradient takes
    about 10x the forward: there it is one grouped convolution of the
    padded input with g (one group per image and channel), and dx the
    convolution of g with the flipped kernel. ``native`` (default: not on
    the CPU): PyTorch's own convolution backward instead."""
    B, C, H, W = x.shape
    k = w.shape[-1]
    pad = k // 2
    if x.device.type != 'cpu' if native is None else native:
        return torch.ops.aten.convolution_backward(
            g, x, w, [C], [1, 1], [pad, pad], [1, 1], False, [0, 0], C,
            [need_x, need_w, need_b])
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


class _DepthwiseConvCPU(torch.autograd.Function):
    """``F.conv2d(x, w, b, padding=k // 2, groups=C)`` with the faster CPU
    backward of :func:`_depthwise_conv_backward`."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w, b, padding=w.shape[-1] // 2, groups=x.shape[1])

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return _depthwise_conv_backward(x, w, g, *ctx.needs_input_grad)


def depthwise_conv(x, w, b):
    """Depthwise 'same' convolution (odd kernel) of x (B, C, H, W)."""
    if (x.device.type == 'cpu' and torch.is_grad_enabled()
            and not torch.is_autocast_enabled('cpu')):
        return _DepthwiseConvCPU.apply(x, w, b)
    return F.conv2d(x, w, b, padding=w.shape[-1] // 2, groups=x.shape[1])


def _split_heads(qkvg, hw_shape, num_heads):
    """Views of a (B, N, 4C) projection [q | k | v | g]: q, k, v as heads
    (B, heads, N, d), v as a channels-last map (B, C, H, W), and g
    (B, N, C)."""
    B, N, C4 = qkvg.shape
    C = C4 // 4
    q, k, v, g = qkvg.chunk(4, dim=-1)

    def heads(t):
        return t.view(B, N, num_heads, -1).transpose(1, 2)

    v_map = v.view(B, *hw_shape, C).permute(0, 3, 1, 2)
    return heads(q), heads(k), heads(v), v_map, g


class _PolaMixing(torch.autograd.Function):
    """Training path of :class:`PolaAttention` between its projections:
    ``(core(q, k + enc, v) + dwc(v)) * g`` (B, N, C) from the projection
    qkvg (B, N, 4C) = [q | k | v | g] (q, k already divided by s) and the
    key encoding enc (1, N, C).

    One autograd node instead of about ten: the forward adds the encoding
    to the keys block by block; the backward writes the gradients of q, k,
    v and g straight into one (B, N, 4C) buffer (no per-part buffers, no
    concatenation, the dwc's input gradient added in place). Kept for
    backward: qkvg, enc, W, and ``core + dwc`` (the gate's other factor).
    """

    @staticmethod
    def forward(ctx, qkvg, enc, p, dwc_w, dwc_b, num_heads, hw_shape):
        B, N, C4 = qkvg.shape
        C = C4 // 4
        q, k, v, v_map, g = _split_heads(qkvg, hw_shape, num_heads)
        k_add = enc.view(1, N, num_heads, -1).transpose(1, 2)
        mixed = qkvg.new_empty(B, N, C)
        w, _ = _core_forward(q, k, v, p, None,
                             mixed.view(B, N, num_heads, -1).transpose(1, 2),
                             k_add)
        dwc = F.conv2d(v_map, dwc_w, dwc_b, padding=dwc_w.shape[-1] // 2,
                       groups=C)
        mixed.view(B, *hw_shape, C).add_(dwc.permute(0, 2, 3, 1))
        ctx.save_for_backward(qkvg, enc, p, w, dwc_w, mixed)
        ctx.num_heads, ctx.hw_shape = num_heads, hw_shape
        return mixed * g

    @staticmethod
    def backward(ctx, dy):
        qkvg, enc, p, w, dwc_w, mixed = ctx.saved_tensors
        num_heads, hw_shape = ctx.num_heads, ctx.hw_shape
        B, N, C4 = qkvg.shape
        C = C4 // 4
        q, k, v, v_map, g = _split_heads(qkvg, hw_shape, num_heads)
        dqkvg = torch.empty_like(qkvg)
        dq, dk, dv, dv_map, dg = _split_heads(dqkvg, hw_shape, num_heads)
        torch.mul(dy, mixed, out=dg)
        dmixed = dy * g
        k_add = enc.view(1, N, num_heads, -1).transpose(1, 2)
        dp = _core_backward(
            dmixed.view(B, N, num_heads, -1).transpose(1, 2), q, k, v, p, w,
            N, None, dq, dk, dv, k_add)
        _, need_enc, _, need_w, need_b, _, _ = ctx.needs_input_grad
        dv_dwc, dw, db = _depthwise_conv_backward(
            v_map, dwc_w, dmixed.view(B, *hw_shape, C).permute(0, 3, 1, 2),
            True, need_w, need_b)
        dv_map.add_(dv_dwc)  # the dwc's share of v's gradient
        denc = dqkvg[..., C:2 * C].sum(0, keepdim=True) if need_enc else None
        return dqkvg, denc, dp, dw, db, None, None


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
        if row_matrix is None:
            return grid[sl].reshape(1, -1, C)
        m, lo, hi = row_matrix[sl], 0, hs
        if m.shape[0] < hd:
            # only the source rows these rows are made of (4 each for
            # bicubic): a block of rows costs a few, not all hs
            used = m.ne(0).any(0).nonzero()
            if used.numel():
                lo, hi = int(used[0]), int(used[-1]) + 1
        return (m[:, lo:hi] @ grid[lo:hi]).reshape(1, -1, C)

    return rows


def resize_token_grid(tokens: torch.Tensor, src_hw: Tuple[int, int],
                      dst_hw: Tuple[int, int], mode: str) -> torch.Tensor:
    """Resize (1, Hs*Ws, C) grid tokens to (1, Hd*Wd, C) (see
    :func:`token_grid_rows`)."""
    if tuple(src_hw) == tuple(dst_hw):
        return tokens
    return token_grid_rows(tokens, src_hw, dst_hw, mode)(slice(None))


def cpu_inference_in_parts(x: torch.Tensor,
                           module: Optional[nn.Module] = None) -> bool:
    """Whether CPU inference may compute ``module``'s result in parts of
    the token map instead of calling its forward: CPU, no gradient, no
    autocast, and nothing that observes the module (forward hooks, e.g.
    of the attention-map tool; tracing, e.g. of the FLOP counter)."""
    return (x.device.type == 'cpu' and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled('cpu')
            and (module is None or not (module._forward_hooks
                                        or module._forward_pre_hooks))
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

    def _mixing_in_one_node(self, x, key_mask):
        """Whether training may use :class:`_PolaMixing`: gradients on,
        float32 without autocast, no key mask, not traced."""
        return (torch.is_grad_enabled() and key_mask is None
                and x.dtype == torch.float32
                and not torch.is_autocast_enabled(x.device.type)
                and not torch.jit.is_tracing()
                and not torch.jit.is_scripting())

    def forward(self, x, hw_shape, key_mask=None):
        B, N, C = x.shape
        H, W = hw_shape
        assert N == H * W, f'{N} tokens do not form a {H}x{W} map'
        if self._mixing_in_one_node(x, key_mask):
            w, b, s = self._projection()
            enc = self._key_encoding(hw_shape, s)(slice(None))
            out = _PolaMixing.apply(F.linear(x, w, b), enc, self.exponent(),
                                    *self._dwc_params(), self.num_heads,
                                    (H, W))
            return self.proj_drop(self.proj(out))
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
    def forward_in_row_blocks(self, x, hw_shape, norm, epilogue, out=None,
                              maps=None):
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
            maps (Workspace, optional): where v (B, N, C) goes, e.g. one
                shared by the blocks of a stage; a new one by default.

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
        ws = Workspace(x)  # the blocks' temporaries
        v = (Workspace(x) if maps is None else maps)('v', B, N, C)
        m = x.new_zeros(B, h, 2 * d, d + 1)

        def project(xb, name, w, b):  # norm, then (B, T, C) -> (B, T, 2C)
            u = norm(xb).reshape(-1, C)
            return linear_into(ws(name, u.shape[0], 2 * C), u, w, b).view(
                B, -1, 2 * C)

        for r0, r1 in blocks:
            blk = slice(r0 * W, r1 * W)
            kv = project(x[:, blk], 'x_kv', w_kv, b_kv)
            k = kv[..., :C].add_(k_enc(slice(r0, r1)))
            v[:, blk] = kv[..., C:]
            _add_key_sums(m, polarity_features(heads(k), p, ws),
                          heads(kv[..., C:]), ws)
        w_att = _w_from_key_sums(m.div_(N), d // 2)

        out = torch.empty_like(x) if out is None else out
        v_map = v.view(B, H, W, C).permute(0, 3, 1, 2)
        dwc_w, dwc_b = self._dwc_params()
        pad = dwc_w.shape[-1] // 2
        for r0, r1 in blocks:
            blk = slice(r0 * W, r1 * W)
            xb = x[:, blk]
            qg = project(xb, 'x_qg', w_qg, b_qg)
            a = ws('a', B, r1 - r0, W, C)
            _query_output(polarity_features(heads(qg[..., :C]), p, ws),
                          w_att, heads(a.view(B, -1, C)), ws)
            # rows r0..r1 of the conv need v's rows r0 - pad .. r1 + pad
            lo, hi = max(0, r0 - pad), min(H, r1 + pad)
            dwc = F.conv2d(v_map[:, :, lo:hi], dwc_w, dwc_b, padding=pad,
                           groups=C)[:, :, r0 - lo:r1 - lo]
            a.add_(dwc.permute(0, 2, 3, 1))
            a = a.view(-1, C).mul_(qg[..., C:].reshape(-1, C))
            a = linear_into(ws('proj', *a.shape), a, self.proj.weight,
                            self.proj.bias).view(B, -1, C)
            out[:, blk] = epilogue(xb, self.proj_drop(a))
        return out
