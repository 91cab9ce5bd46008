"""The fast Pola core (``'fast'`` of :func:`mmpola.ops.pola_linear_attention`):
the released arithmetic (:mod:`mmpola.ops.reference`) regrouped.

``q_opp @ M == q_sim @ swap(M)`` (``swap`` exchanges M's row halves), so
both numerators and both normalisers come out of one product
``q_sim @ W``, W (2d, d + 2) built from the key sums ``M = k'^T [v, 1] / n``.
One power per tensor: ``|x|**p = exp(p * log|x|)`` is ``relu(x)**p`` where
x > 0 and ``relu(-x)**p`` elsewhere. The hand-written backward keeps q, k, v
and W only (it recomputes the features). First-order (differentiating its
gradients again raises "trying to differentiate twice"), not traceable.
"""
import math

import torch
from torch.autograd.function import once_differentiable

from .reference import EPS


def polarity_features(x: torch.Tensor, p: torch.Tensor):
    """``[relu(x)**p, relu(-x)**p]`` (..., 2d) of x (..., d), and
    ``log|x|`` (..., d) (-inf at 0, where ``exp`` gives the power 0)."""
    log_abs = x.abs().log()
    mag = torch.exp(log_abs * p)
    pos = mag * (x > 0)
    return torch.cat([pos, mag - pos], dim=-1), log_abs


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
    dx = g * p / x.abs().clamp(min=tiny).copysign(x)
    return dx, dp


def _weights(m):
    """W (..., 2d, d + 2) from the key sums M (..., 2d, d + 1), columns
    [x_sim numerators | x_sim normaliser | x_opp numerators | x_opp
    normaliser]; x_opp's columns are M's with its row halves swapped."""
    d = m.shape[-1] - 1
    half = d // 2
    swap = torch.cat([m[..., d:, :], m[..., :d, :]], dim=-2)
    return torch.cat([m[..., :half], m[..., d:], swap[..., half:d],
                      swap[..., d:]], dim=-1)


def _weights_grad(dw):
    """Adjoint of :func:`_weights`: dW (..., 2d, d + 2) -> dM
    (..., 2d, d + 1)."""
    d = dw.shape[-1] - 2
    half = d // 2
    swap = torch.cat([dw[..., d:, :], dw[..., :d, :]], dim=-2)
    return torch.cat([dw[..., :half], swap[..., half + 1:d + 1],
                      dw[..., half:half + 1] + swap[..., d + 1:]], dim=-1)


def _key_features(k, p, key_mask):
    """Key features (padded keys zeroed), log|k| and the key count n."""
    kf, log_k = polarity_features(k, p)
    if key_mask is None:
        return kf, log_k, k.shape[-2]
    n = key_mask.sum(dim=-2, keepdim=True).clamp(min=1)    # (B, 1, 1, 1)
    return kf * key_mask, log_k, n


def _forward(q, k, v, p, key_mask):
    """``[x_sim, x_opp]`` (B, h, N, d) and W (B, h, 2d, d + 2)."""
    kf, _, n = _key_features(k, p, key_mask)
    kt = kf.transpose(-2, -1)
    w = _weights(torch.cat([kt @ v, kt.sum(-1, keepdim=True)], dim=-1) / n)
    o = polarity_features(q, p)[0] @ w                     # (B, h, N, d+2)
    half = v.shape[-1] // 2
    return torch.cat([o[..., :half] / (o[..., half:half + 1] + EPS),
                      o[..., half + 1:-1] / (o[..., -1:] + EPS)], dim=-1), w


def _backward(dout, q, k, v, p, w, key_mask):
    """Gradients of q, k, v and p for the output gradient dout
    (B, h, N, d)."""
    d = v.shape[-1]
    half = d // 2
    qf, log_q = polarity_features(q, p)
    o = qf @ w
    do = torch.empty_like(o)  # through x = numerators / (normaliser + eps)
    for i, g in enumerate((dout[..., :half], dout[..., half:])):
        c = i * (half + 1)
        z = o[..., c + half:c + half + 1] + EPS
        do[..., c:c + half] = g / z
        do[..., c + half:c + half + 1] = -(g * o[..., c:c + half]).sum(
            -1, keepdim=True) / z.square()
    dq, dp = _features_grad(q, qf, log_q, do @ w.transpose(-2, -1), p)
    kf, log_k, n = _key_features(k, p, key_mask)
    dm = _weights_grad(qf.transpose(-2, -1) @ do) / n     # (B, h, 2d, d+1)
    dkf = v @ dm[..., :d].transpose(-2, -1) + dm[..., d:].transpose(-2, -1)
    if key_mask is not None:
        dkf = dkf * key_mask
    dk, dpk = _features_grad(k, kf, log_k, dkf, p)
    return dq, dk, kf @ dm[..., :d], dp + dpk


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
