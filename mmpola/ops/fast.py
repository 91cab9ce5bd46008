"""The fast Pola core (``'fast'`` of :func:`mmpola.ops.pola_linear_attention`):
the released arithmetic (:mod:`mmpola.ops.reference`) regrouped.

The regrouping of :mod:`mmpola.ops.grouped` (one power per tensor,
``|x|**p = exp(p * log|x|)``; one product per side), with tokens in blocks
whose 2d-wide features stay in cache; the features never exist for the whole
sequence. The hand-written backward keeps q, k, v and W only and recomputes
the features block by block. First-order (differentiating its gradients
again raises "trying to differentiate twice"), not traceable.
"""
import math

import torch
from torch.autograd.function import once_differentiable

from .grouped import weights as _weights
from .reference import EPS

#: feature elements per token block (4 MB in float32)
BLOCK_ELEMENTS = 1 << 20


def _blocks(x):
    """Slices of the token axis of x (B, h, N, d), a block each."""
    B, h, N, d = x.shape
    step = max(64, BLOCK_ELEMENTS // (B * h * 2 * d))
    return [slice(i, min(i + step, N)) for i in range(0, N, step)]


def polarity_features(x: torch.Tensor, p: torch.Tensor):
    """``[relu(x)**p, relu(-x)**p]`` (..., 2d) of x (..., d), and
    ``log|x|`` (..., d) (-inf at 0, where ``exp`` gives the power 0)."""
    d = x.shape[-1]
    log_abs = x.abs().log()
    mag = torch.exp(log_abs * p)
    feats = x.new_empty(*x.shape[:-1], 2 * d)
    torch.gt(x, 0, out=feats[..., :d]).mul_(mag)  # 1. or 0. times |x|**p
    torch.sub(mag, feats[..., :d], out=feats[..., d:])
    return feats, log_abs


def _features_grad(x, feats, log_abs, dfeats, p):
    """Gradients of x (..., d) and p (p's shape) through
    :func:`polarity_features`. With a = |x|**p = f+ + f- (one of the two is
    0): ``g = dL/da * a = df+ f+ + df- f-``, ``dL/dp = g ln|x|`` and
    ``dL/dx = g p / x`` (0 at x == 0, where g == 0). |x| is floored at the
    smallest normal number so that neither is NaN with denormals flushed.
    """
    d = x.shape[-1]
    g = dfeats[..., :d] * feats[..., :d] + dfeats[..., d:] * feats[..., d:]
    tiny = torch.finfo(x.dtype).tiny
    dp = (g * log_abs.clamp(min=math.log(tiny))).sum_to_size(p.shape)
    return g * p / x.abs().clamp(min=tiny).copysign(x), dp


def _weights_grad(dw):
    """Adjoint of :func:`_weights`: dW (.., 2d, d+2) -> dM (.., 2d, d+1)."""
    d = dw.shape[-1] - 2
    half = d // 2
    swap = torch.cat([dw[..., d:, :], dw[..., :d, :]], dim=-2)
    return torch.cat([dw[..., :half], swap[..., half + 1:d + 1],
                      dw[..., half:half + 1] + swap[..., d + 1:]], dim=-1)


def _key_features(k, p, key_mask, blk):
    """Features (padded keys zeroed) and log|k| of the keys in ``blk``."""
    kf, log_k = polarity_features(k[..., blk, :], p)
    if key_mask is not None:
        kf.mul_(key_mask[..., blk, :])
    return kf, log_k


def _count(k, key_mask):
    """n: the number of keys, (B, 1, 1, 1) real keys with a mask."""
    if key_mask is None:
        return k.shape[-2]
    return key_mask.sum(dim=-2, keepdim=True).clamp(min=1)


def _forward(q, k, v, p, key_mask):
    """``[x_sim, x_opp]`` (B, h, N, d) in (B, N, h, d) memory order, W."""
    B, h, N, d = v.shape
    half = d // 2
    m = v.new_zeros(B, h, 2 * d, d + 1)           # [k+; k-]^T [v, 1]
    for blk in _blocks(k):
        kt = _key_features(k, p, key_mask, blk)[0].transpose(-2, -1)
        m[..., :d] += kt @ v[..., blk, :]
        m[..., d] += kt.sum(-1)
    w = _weights(m / _count(k, key_mask))
    out = v.new_empty(B, N, h, d).transpose(1, 2)
    for blk in _blocks(q):
        o = polarity_features(q[..., blk, :], p)[0] @ w
        torch.div(o[..., :half], o[..., half:half + 1] + EPS,
                  out=out[..., blk, :half])
        torch.div(o[..., half + 1:-1], o[..., -1:] + EPS,
                  out=out[..., blk, half:])
    return out, w


def _backward(dout, q, k, v, p, w, key_mask):
    """Gradients of q, k, v and p for the output gradient dout."""
    B, h, N, d = v.shape
    half = d // 2
    dq, dk, dv = (torch.empty_like(v) for _ in range(3))
    dw, dp = torch.zeros_like(w), torch.zeros_like(p)
    for blk in _blocks(q):
        qf, log_q = polarity_features(q[..., blk, :], p)
        o = qf @ w
        do = torch.empty_like(o)  # through x = numerators / (normaliser + eps)
        for i in range(2):
            c = i * (half + 1)
            g = dout[..., blk, i * half:(i + 1) * half]
            z = o[..., c + half:c + half + 1] + EPS
            do[..., c:c + half] = g / z
            do[..., c + half:c + half + 1] = -(g * o[..., c:c + half]).sum(
                -1, keepdim=True) / z.square()
        dw += qf.transpose(-2, -1) @ do
        dq[..., blk, :], dpb = _features_grad(q[..., blk, :], qf, log_q,
                                              do @ w.transpose(-2, -1), p)
        dp += dpb
    dm = _weights_grad(dw) / _count(k, key_mask)          # (B, h, 2d, d+1)
    dm_v, dm_1 = dm[..., :d], dm[..., d:].transpose(-2, -1)
    for blk in _blocks(k):
        kf, log_k = _key_features(k, p, key_mask, blk)
        dkf = v[..., blk, :] @ dm_v.transpose(-2, -1) + dm_1
        if key_mask is not None:
            dkf.mul_(key_mask[..., blk, :])
        dv[..., blk, :] = kf @ dm_v
        dk[..., blk, :], dpb = _features_grad(k[..., blk, :], kf, log_k, dkf,
                                              p)
        dp += dpb
    return dq, dk, dv, dp


class _PolaCore(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, p, key_mask):
        out, w = _forward(q, k, v, p, key_mask)
        ctx.save_for_backward(q, k, v, p, w, key_mask)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        return _backward(dout, *ctx.saved_tensors) + (None, )


def pola_attention_fast(q: torch.Tensor,
                        k: torch.Tensor,
                        v: torch.Tensor,
                        p: torch.Tensor,
                        key_mask=None) -> torch.Tensor:
    """The fast core; arguments and result as
    :func:`mmpola.ops.reference.pola_attention_reference` (q, k, v
    (B, heads, N, d), p broadcastable to (1, heads, 1, d), key_mask
    (B, 1, N, 1) or None -> (B, heads, N, d))."""
    return _PolaCore.apply(q, k, v, p, key_mask)
