"""The released PolaFormer attention core, written literally: the reference
every other implementation is tested against.

Per head, with q, k, v of shape (N, d) (q and k already divided by
``softplus(scale)``, k with its positional encoding) and exponents p (d,)::

    q_sim = [relu(q)**p, relu(-q)**p]     q_opp = [relu(-q)**p, relu(q)**p]
    k'    = [relu(k)**p, relu(-k)**p]     v1, v2 = v[:, :d/2], v[:, d/2:]
    x_sim = q_sim @ ((k'^T n^-.5) @ (v1 n^-.5)) / (q_sim @ mean(k')^T + eps)
    x_opp = q_opp @ ((k'^T n^-.5) @ (v2 n^-.5)) / (q_opp @ mean(k')^T + eps)
    out   = [x_sim, x_opp]

Plain PyTorch, no in-place writes: it also serves tracing and export.
"""
from typing import Optional

import torch
import torch.nn.functional as F

EPS = 1e-6


def pola_attention_reference(q: torch.Tensor,
                             k: torch.Tensor,
                             v: torch.Tensor,
                             p: torch.Tensor,
                             key_mask: Optional[torch.Tensor] = None
                             ) -> torch.Tensor:
    """Polarity-aware linear attention, the released arithmetic, computed
    in the inputs' dtype.

    Args:
        q, k (Tensor): (B, heads, N, d), divided by ``softplus(scale)``
            (k with the positional encoding added).
        v (Tensor): (B, heads, N, d), d even.
        p (Tensor): exponents ``1 + alpha * sigmoid(power)``,
            broadcastable to (1, heads, 1, d).
        key_mask (Tensor, optional): (B, 1, N, 1), 1 for real tokens and
            0 for padding: padded keys are left out of every sum over keys
            and n counts the real keys only. None: every key is real (the
            released code).

    Returns:
        Tensor: (B, heads, N, d), channels ``[x_sim, x_opp]``.
    """
    q_pos, q_neg = F.relu(q) ** p, F.relu(-q) ** p
    k_ = torch.cat([F.relu(k) ** p, F.relu(-k) ** p], dim=-1)
    if key_mask is None:
        n = k.shape[-2]
        k_mean = k_.mean(dim=-2, keepdim=True)
    else:
        n = key_mask.sum(dim=-2, keepdim=True).clamp(min=1)  # (B, 1, 1, 1)
        k_, v = k_ * key_mask, v * key_mask
        k_mean = k_.sum(dim=-2, keepdim=True) / n
    q_sim = torch.cat([q_pos, q_neg], dim=-1)
    q_opp = torch.cat([q_neg, q_pos], dim=-1)
    v1, v2 = torch.chunk(v, 2, dim=-1)
    k_t = k_.transpose(-2, -1) * n ** -0.5
    k_mean = k_mean.transpose(-2, -1)
    x_sim = q_sim @ (k_t @ (v1 * n ** -0.5)) * (1 / (q_sim @ k_mean + EPS))
    x_opp = q_opp @ (k_t @ (v2 * n ** -0.5)) * (1 / (q_opp @ k_mean + EPS))
    return torch.cat([x_sim, x_opp], dim=-1)
