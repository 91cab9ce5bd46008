"""The released PolaFormer attention arithmetic, written literally.

The oracle for mmpola's fast core: two powers and two ReLUs per tensor,
materialised q_sim / q_opp / k', two key-value products, two normalisers.
"""
import torch
import torch.nn.functional as F


def released_pola_core(q, k, v, p):
    """q, k, v: (B, heads, N, d) after the scale division; p: exponents."""
    n = k.shape[-2]
    q_pos, q_neg = F.relu(q) ** p, F.relu(-q) ** p
    k_pos, k_neg = F.relu(k) ** p, F.relu(-k) ** p
    q_sim = torch.cat([q_pos, q_neg], dim=-1)
    q_opp = torch.cat([q_neg, q_pos], dim=-1)
    k_ = torch.cat([k_pos, k_neg], dim=-1)
    v1, v2 = torch.chunk(v, 2, dim=-1)
    z = 1 / (q_sim @ k_.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = (k_.transpose(-2, -1) * (n ** -0.5)) @ (v1 * (n ** -0.5))
    x_sim = q_sim @ kv * z
    z = 1 / (q_opp @ k_.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = (k_.transpose(-2, -1) * (n ** -0.5)) @ (v2 * (n ** -0.5))
    x_opp = q_opp @ kv * z
    return torch.cat([x_sim, x_opp], dim=-1)


def released_pola_attention(m, x, hw_shape):
    """The released attention module's forward, written literally with the
    parameters of an mmpola ``PolaAttention`` ``m``; x: (B, N, C)."""
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
