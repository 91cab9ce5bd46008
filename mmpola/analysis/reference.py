"""The released PolaFormer attention core, written literally.

A copy of ``tests/reference_pola.py`` (the test suite's oracle) so that the
analysis tools can use it without importing from ``tests/``;
``tests/test_analysis.py`` checks that the two agree.
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
