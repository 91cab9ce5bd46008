"""The released arithmetic in whole-tensor operations (traceable, any
device; what compiled, exported and GPU runs execute): one power per tensor,
``relu(x)**p = |x|**p * [x > 0]``, ``relu(-x)**p = |x|**p - relu(x)**p``;
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


def pola_attention_grouped(q: torch.Tensor,
                           k: torch.Tensor,
                           v: torch.Tensor,
                           p: torch.Tensor,
                           key_mask: Optional[torch.Tensor] = None
                           ) -> torch.Tensor:
    """Same arguments, result and dtype rules as
    :func:`~mmpola.ops.reference.pola_attention_reference`: (B, heads, N, d)
    q, k, v -> (B, heads, N, d)."""
    d = q.shape[-1]
    half = d // 2
    qa, ka = q.abs() ** p, k.abs() ** p
    qp, kp = qa * (q > 0).to(qa.dtype), ka * (k > 0).to(ka.dtype)
    q_ = torch.cat([qp, qa - qp], dim=-1)  # (B, h, N, 2d)
    k_ = torch.cat([kp, ka - kp], dim=-1)
    v_ = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (.., d + 1)
    if key_mask is None:
        n = k.shape[-2]
    else:  # masked keys leave every sum; n counts the real ones
        n = key_mask.sum(dim=-2, keepdim=True).clamp(min=1)
        v_ = v_ * key_mask
    m = k_.transpose(-2, -1) @ v_ / n  # (B, h, 2d, d + 1)
    out = (q_ @ weights(m)).unflatten(-1, (2, half + 1))
    return (out[..., :half] / (out[..., half:] + EPS)).flatten(-2)
