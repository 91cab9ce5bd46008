"""The fast Pola core: the released arithmetic regrouped and blocked over
tokens, with a hand-written backward (implementation ``'fast'`` of
:func:`mmpola.ops.pola_linear_attention`).

Regrouping (see :mod:`mmpola.ops.reference` for the released formulation):
``q_opp @ M == q_sim @ swap(M)`` where ``swap`` exchanges the two row halves
of M, so both products and both normalisers come out of a single
``q_sim @ W`` with ``W`` (2d, d + 2) built from ``k'^T [v, 1] / n``. One
``|x|**p`` per tensor (``exp(p * log|x|)``), then
``relu(-x)**p = |x|**p - relu(x)**p``.

Tokens go through in cache-sized blocks on the CPU (the 2d-wide features
never exist for the whole sequence); the backward keeps only q, k, v and W
and recomputes the features block by block. Scratch buffers are reused
across the blocks of one call (:class:`Workspace`); every in-place write
goes to a buffer this module created in that call.

Not traceable (``out=`` writes, Python loops over blocks, an autograd
Function): :func:`mmpola.ops.pola_linear_attention` uses the reference
under tracing, ``torch.compile`` and ``torch.export``.
"""
import math
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from .reference import EPS, compute_dtype, no_autocast

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
    tiny = torch.finfo(x.dtype).tiny  # a normal number (not flushed)
    g = ws.like_heads('g', x)
    torch.mul(dfeats[..., :d], feats[..., :d], out=g)
    g.addcmul_(dfeats[..., d:], feats[..., d:])
    dp = log_abs.clamp_min_(math.log(tiny)).mul_(g).sum(dim=(0, 2),
                                                        keepdim=True)
    ax = torch.abs(x, out=log_abs).clamp_min_(tiny).copysign_(x)
    torch.div(g, ax, out=dx).mul_(p)
    return dp


# Tokens are processed in blocks so that the 2d-wide features of a block
# stay in cache and are never materialised for the whole sequence (on the
# CPU a fresh N x 2d buffer costs more than the arithmetic on it). 4 MB of
# features per block: measured against 1 << 19 .. 1 << 22 (PVT / Swin stage-1
# shapes), 3-10% faster than 1 << 19 in inference, best for forward +
# backward.
CPU_BLOCK_ELEMENTS = 1 << 20


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


def _key_features(k, p, key_mask, blk, ws, keep_log=False):
    """Polarity features of the keys in token block ``blk``, padded keys
    zeroed: (B, h, T, 2d) (and log|k| if ``keep_log``)."""
    kb = k[..., blk, :]
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


def _dense(x, ws, name):
    """x itself if contiguous, else a contiguous copy in buffer ``name``
    (the batched products need batch dims that flatten without a copy)."""
    return x if x.is_contiguous() else ws(name, *x.shape).copy_(x)


def _add_key_sums(m, kf, v, ws):
    """Accumulate a block of keys: ``m (B, h, 2d, d+1) += kf^T [v, 1]``,
    kf (B, h, T, 2d) its key features, v (B, h, T, d) (any strides)."""
    d = v.shape[-1]
    vb = _dense(v, ws, 'v')
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


def _core_forward(q, k, v, p, key_mask, out):
    """Regrouped released arithmetic, blocked over tokens.

    Per block: one ``|x|**p`` per tensor, the key sums M accumulated, then
    one query-side product with W (q_opp and the normalisers folded in).
    Writes ``[x_sim, x_opp]`` into ``out`` (B, h, N, d) and returns W
    (B, h, 2d, d+2) and the key count n, which with q, k, v is all that
    :func:`_core_backward` needs (it recomputes the features). Per-block
    temporaries live in one :class:`Workspace`.
    """
    B, h, N, d = v.shape
    if key_mask is None:
        n = N
    else:
        n = key_mask.sum(dim=-2, keepdim=True).clamp_(min=1)
    ws = Workspace(v)
    m = v.new_zeros(B, h, 2 * d, d + 1)        # [k+; k-]^T [v, 1]
    for blk in _token_blocks(k):
        kf, _ = _key_features(k, p, key_mask, blk, ws)
        _add_key_sums(m, kf, v[..., blk, :], ws)
    w = _w_from_key_sums(m.div_(n), d // 2)                # (B, h, 2d, d+2)
    for blk in _token_blocks(q):
        _query_output(polarity_features(q[..., blk, :], p, ws), w,
                      out[..., blk, :], ws)
    return w, n


def _core_backward(dx, q, k, v, p, w, n, key_mask, dq, dk, dv):
    """Backward of :func:`_core_forward` for the output gradient dx
    (B, h, N, d): writes the gradients of q, k and v
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
        (kf, log_k), kb = _key_features(k, p, key_mask, blk, ws, True)
        T = kf.shape[-2]
        vb = _dense(v[..., blk, :], ws, 'v')
        dkf = _bmm(vb, ds_vt, ws('dfeat', B, h, T, 2 * d)).add_(ds_1)
        if key_mask is not None:
            dkf.mul_(key_mask[..., blk, :])
        dv[..., blk, :] = _bmm(kf, ds_v, ws('dv', B, h, T, d))
        dp.add_(_polarity_grad(kb, kf, log_k, dkf, p, dk[..., blk, :], ws))
    return dp.sum_to_size(p.shape)


class _PolaCore(torch.autograd.Function):
    """:func:`_core_forward` with its hand-written backward; only q, k, v
    and the small W are kept for it. First-order: differentiating its
    gradients again raises "trying to differentiate twice"."""

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
    @once_differentiable  # hand-written, into buffers: first order only
    def backward(ctx, dbuf):
        q, k, v, p, w, key_mask = ctx.saved_tensors
        key_mask = key_mask if key_mask.numel() else None
        dq, dk, dv = (torch.empty_like(v) for _ in range(3))
        dp = _core_backward(dbuf.transpose(1, 2), q, k, v, p, w, ctx.n,
                            key_mask, dq, dk, dv)
        return dq, dk, dv, dp, None




def pola_attention_fast(q: torch.Tensor,
                        k: torch.Tensor,
                        v: torch.Tensor,
                        p: torch.Tensor,
                        key_mask=None) -> torch.Tensor:
    """The fast core; arguments and result as
    :func:`mmpola.ops.reference.pola_attention_reference` (computed in
    float32, or float64 for float64 inputs; result in v's dtype, laid out
    in memory as (B, N, heads, d))."""
    out_dtype = v.dtype
    dtype = compute_dtype(v.dtype)
    with no_autocast(q.device.type):
        q, k, v, p = q.to(dtype), k.to(dtype), v.to(dtype), p.to(dtype)
        if key_mask is not None:
            key_mask = key_mask.to(dtype)
        out = _PolaCore.apply(q, k, v, p, key_mask)
    return out.transpose(1, 2).to(out_dtype)
