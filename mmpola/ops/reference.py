"""The released PolaFormer attention arithmetic, written literally: the
reference every other implementation is tested against.

Per head, with q, k, v of shape (N, d) (q and k already divided by
``softplus(scale)``, k with its positional encoding) and exponents p (d,)::

    q_sim = [relu(q)**p, relu(-q)**p]     q_opp = [relu(-q)**p, relu(q)**p]
    k'    = [relu(k)**p, relu(-k)**p]     v1, v2 = v[:, :d/2], v[:, d/2:]
    x_sim = q_sim @ ((k'^T n^-.5) @ (v1 n^-.5)) / (q_sim @ mean(k') + eps)
    x_opp = q_opp @ ((k'^T n^-.5) @ (v2 n^-.5)) / (q_opp @ mean(k') + eps)
    out   = [x_sim, x_opp]

Plain PyTorch (no in-place writes, no Python loops over data), so it also
serves ``torch.compile``, ``torch.export``, ONNX export and tracing.
"""
import contextlib

import torch
import torch.nn.functional as F

EPS = 1e-6


def released_pola_core(q, k, v, p):
    """The released core, literally: no key mask, the inputs' dtype.

    Args:
        q, k, v (Tensor): (B, heads, N, d).
        p (Tensor): exponents broadcastable to (1, heads, 1, d).

    Returns:
        Tensor: (B, heads, N, d), channels ``[x_sim, x_opp]``.
    """
    n = k.shape[-2]
    q_pos, q_neg = F.relu(q) ** p, F.relu(-q) ** p
    k_pos, k_neg = F.relu(k) ** p, F.relu(-k) ** p
    q_sim = torch.cat([q_pos, q_neg], dim=-1)
    q_opp = torch.cat([q_neg, q_pos], dim=-1)
    k_ = torch.cat([k_pos, k_neg], dim=-1)
    v1, v2 = torch.chunk(v, 2, dim=-1)
    z = 1 / (q_sim @ k_.mean(dim=-2, keepdim=True).transpose(-2, -1) + EPS)
    kv = (k_.transpose(-2, -1) * (n ** -0.5)) @ (v1 * (n ** -0.5))
    x_sim = q_sim @ kv * z
    z = 1 / (q_opp @ k_.mean(dim=-2, keepdim=True).transpose(-2, -1) + EPS)
    kv = (k_.transpose(-2, -1) * (n ** -0.5)) @ (v2 * (n ** -0.5))
    x_opp = q_opp @ kv * z
    return torch.cat([x_sim, x_opp], dim=-1)


def _masked_core(q, k, v, p, key_mask):
    """:func:`released_pola_core` with padded keys (key_mask 0) left out of
    every sum over keys, n counting the real keys only."""
    n = key_mask.sum(dim=-2, keepdim=True).clamp(min=1)    # (B, 1, 1, 1)
    q_pos, q_neg = F.relu(q) ** p, F.relu(-q) ** p
    k_ = torch.cat([F.relu(k) ** p, F.relu(-k) ** p], dim=-1) * key_mask
    q_sim = torch.cat([q_pos, q_neg], dim=-1)
    q_opp = torch.cat([q_neg, q_pos], dim=-1)
    v1, v2 = torch.chunk(v * key_mask, 2, dim=-1)
    k_mean = (k_.sum(dim=-2, keepdim=True) / n).transpose(-2, -1)
    k_t = k_.transpose(-2, -1) * n ** -0.5
    x_sim = q_sim @ (k_t @ (v1 * n ** -0.5)) / (q_sim @ k_mean + EPS)
    x_opp = q_opp @ (k_t @ (v2 * n ** -0.5)) / (q_opp @ k_mean + EPS)
    return torch.cat([x_sim, x_opp], dim=-1)


try:  # torch >= 2.4 takes the device type (decided once: dynamo traces it)
    torch.is_autocast_enabled('cpu')
    _AUTOCAST_TAKES_DEVICE = True
except TypeError:
    _AUTOCAST_TAKES_DEVICE = False


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)`` (torch >= 2.4) with the
    older per-device functions as the fallback."""
    if _AUTOCAST_TAKES_DEVICE:
        return torch.is_autocast_enabled(device_type)
    if device_type == 'cpu':
        return torch.is_autocast_cpu_enabled()
    return torch.is_autocast_enabled()


def no_autocast(device_type: str):
    """A context that switches autocast off, if it is on."""
    if autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def pola_attention_reference(q: torch.Tensor,
                             k: torch.Tensor,
                             v: torch.Tensor,
                             p: torch.Tensor,
                             key_mask=None) -> torch.Tensor:
    """Polarity-aware linear attention, the released arithmetic.

    Computes in float32 (float64 for float64 inputs) whatever the inputs'
    dtype and the autocast state: the powers (p up to 5) of
    ``q / softplus(scale)`` overflow float16 above about 9.2.

    Args:
        q, k (Tensor): (B, heads, N, d), divided by ``softplus(scale)``
            (k with the positional encoding added).
        v (Tensor): (B, heads, N, d), d even.
        p (Tensor): exponents ``1 + alpha * sigmoid(power)``,
            broadcastable to (1, heads, 1, d).
        key_mask (Tensor, optional): (B, 1, N, 1), 1 for real tokens and
            0 for padding; padded keys are left out of every sum over keys.

    Returns:
        Tensor: (B, heads, N, d) in v's dtype, channels ``[x_sim, x_opp]``.
    """
    out_dtype = v.dtype
    dtype = compute_dtype(v.dtype)
    with no_autocast(q.device.type):
        q, k, v, p = q.to(dtype), k.to(dtype), v.to(dtype), p.to(dtype)
        if key_mask is None:
            out = released_pola_core(q, k, v, p)
        else:
            out = _masked_core(q, k, v, p, key_mask.to(dtype))
    return out.to(out_dtype)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The core's computing dtype for inputs of ``dtype``: float64 for
    float64, float32 otherwise (what ``torch.promote_types(dtype,
    torch.float32)`` gives for real types, written so that torch 2.1's
    Dynamo can trace it)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def polarity_features(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``[relu(x)**p, relu(-x)**p]``: (..., d) -> (..., 2d)."""
    return torch.cat([F.relu(x) ** p, F.relu(-x) ** p], dim=-1)


def pola_attention_module_reference(m, x, hw_shape):
    """The released attention module's forward, written literally with the
    parameters of an mmpola ``PolaAttention`` ``m``: the oracle for the
    module. x: (B, N, C) tokens of an (H, W) map -> (B, N, C)."""
    B, N, C = x.shape
    H, W = hw_shape
    if m.fused_qkvg:
        q, k, v, g = m.qkvg(x).reshape(B, N, 4, C).unbind(2)
    else:
        q, g = m.qg(x).reshape(B, N, 2, C).unbind(2)
        k, v = m.kv(x).reshape(B, N, 2, C).unbind(2)
    pe = m.positional_encoding
    if tuple(m.pretrain_hw) != (H, W):
        pe = F.interpolate(
            pe.reshape(1, *m.pretrain_hw, C).permute(0, 3, 1, 2), size=(H, W),
            mode='bicubic', align_corners=False).permute(0, 2, 3, 1)
        pe = pe.reshape(1, N, C)
    k = k + pe
    s = F.softplus(m.scale)
    q, k = q / s, k / s
    q, k, v = (t.reshape(B, N, m.num_heads, -1).permute(0, 2, 1, 3)
               for t in (q, k, v))
    p = 1 + m.alpha * torch.sigmoid(m.power)
    out = released_pola_core(q, k, v, p).transpose(1, 2).reshape(B, N, C)
    v = v.reshape(B * m.num_heads, H, W, -1).permute(0, 3, 1, 2)
    v = m.dwc(v).reshape(B, C, N).permute(0, 2, 1)
    return m.proj((out + v) * g)
