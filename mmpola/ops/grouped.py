"""The released arithmetic in whole-tensor operations (traceable, any
device; what compiled, exported and GPU runs execute): one power per tensor,
``relu(x)**p = |x|**p * [x > 0]``, ``relu(-x)**p = |x|**p - relu(x)**p``
(in TorchScript traces the power is ``exp(p * log|x|)``: :func:`features`);
one product for every key sum, ``M = [k+, k-]^T [v, 1] / n``; one for both
polarities' numerators and normalisers, ``[q+, q-] @ weights(M)``."""
from typing import Optional

import torch

from .reference import EPS


def weights(m: torch.Tensor) -> torch.Tensor:
    """W (..., 2d, d + 2) from the key sums M (..., 2d, d + 1): columns
    [x_sim numerators (v1), normaliser, x_opp's (v2), normaliser], x_opp's
    from M with its row halves swapped (q's positive features meet k's
    negative ones)."""
    d = m.shape[-1] - 1
    half = d // 2
    swap = torch.cat([m[..., d:, half:], m[..., :d, half:]], dim=-2)
    return torch.cat([m[..., :half], m[..., d:], swap], dim=-1)


def features(x: torch.Tensor, p: torch.Tensor,
             exp_log: bool = False) -> torch.Tensor:
    """[relu(x)**p, relu(-x)**p] (..., 2d) of x (..., d).

    ``exp_log``: the power as ``exp(p * log|x|)``, which ONNX Runtime runs
    faster than ``Pow`` with a tensor exponent (mmpola.ops asks for it in
    TorchScript traces, the ONNX route); |x| is clamped to the smallest
    normal number so that x = 0 gets 0 and a zero gradient (the derivative
    of |x|**p at 0 for p > 1), not NaN. Otherwise one power: eagerly fewer
    kernels and fewer tensors kept for the backward, and inductor keeps
    fewer buffers alive for the same speed."""
    if exp_log:
        tiny = torch.finfo(x.dtype).tiny
        a = torch.exp(p * torch.log(x.abs().clamp(min=tiny)))
    else:
        a = x.abs() ** p
    pos = a * (x > 0).to(a.dtype)
    return torch.cat([pos, a - pos], dim=-1)


def pola_attention_grouped(q: torch.Tensor,
                           k: torch.Tensor,
                           v: torch.Tensor,
                           p: torch.Tensor,
                           key_mask: Optional[torch.Tensor] = None,
                           exp_log: bool = False) -> torch.Tensor:
    """Same arguments, result and dtype rules as
    :func:`~mmpola.ops.reference.pola_attention_reference`: (B, heads, N, d)
    q, k, v -> (B, heads, N, d); ``exp_log``: see :func:`features`."""
    d = q.shape[-1]
    half = d // 2
    # (B, h, N, 2d); no generator: torch 2.1's Dynamo cannot unpack one
    q_, k_ = features(q, p, exp_log), features(k, p, exp_log)
    v_ = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (.., d + 1)
    if key_mask is None:
        n = k.shape[-2]
    else:  # masked keys leave every sum; n counts the real ones
        n = key_mask.sum(dim=-2, keepdim=True).clamp(min=1)
        v_ = v_ * key_mask
    m = k_.transpose(-2, -1) @ v_ / n  # (B, h, 2d, d + 1)
    out = (q_ @ weights(m)).unflatten(-1, (2, half + 1))
    return (out[..., :half] / (out[..., half:] + EPS)).flatten(-2)
