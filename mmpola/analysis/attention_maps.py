"""Attention maps of a Pola layer, and of softmax / ReLU linear attention
computed from the same queries and keys (PolaFormer, Figures 1 and 5).

Effective weights of the released Pola core. Per head, with
``q_sim = [relu(q)**p, relu(-q)**p]``, ``q_opp = [relu(-q)**p, relu(q)**p]``
and ``k' = [relu(k)**p, relu(-k)**p]`` (``ops.pola_attention_reference``)::

    x_sim_i = q_sim_i @ (k'^T v1 / n) / (q_sim_i @ mean(k') + eps)
            = sum_j (q_sim_i . k'_j) v1_j / (sum_j q_sim_i . k'_j + n eps)

so query i mixes the values of the first half of the channels with weights
``A_sim[i, j] = q_sim_i . k'_j / sum_j' q_sim_i . k'_j'`` and those of the
second half with ``A_opp`` (``q_opp`` in place of ``q_sim``). The dot
products are non-negative, so both are proper distributions over keys: the
same-sign part ``A_sim`` (q+ k+ and q- k-) attends where q and k agree in
sign, the opposite-sign part ``A_opp`` (q+ k- and q- k+) where they differ.
``A_pola = (A_sim + A_opp) / 2`` is the average weight key j receives over
all value channels. The released ``eps`` (1e-6) scales every row by
``S / (S + n eps)`` (S the row sum); it is left out here so rows sum to 1.

Softmax attention: ``softmax(q k^T / sqrt(d))``; ReLU linear attention:
``relu(q) . relu(k) / sum_j relu(q) . relu(k_j)``. q and k are the Pola
layer's own (projected, k with its positional encoding, both divided by
softplus(scale)). Rows of ReLU attention whose query is entirely
non-positive have no defined weights and are spread uniformly.
"""
import math
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from mmpola.ops.fast import polarity_features

METHODS = ('softmax', 'relu', 'pola_sim', 'pola_opp', 'pola')


def pola_qkvp(module, x: torch.Tensor, hw_shape: Tuple[int, int]):
    """q, k, v (B, heads, N, d) and p (1, heads, 1, d) of a
    ``PolaAttention`` for input tokens x (B, N, C), recomputed with its own
    ``project`` as its forward computes them."""
    B, N, C = x.shape
    q, k, v, _ = module.project(x, hw_shape)

    def heads(t):
        return t.reshape(B, N, module.num_heads, -1).transpose(1, 2)

    return heads(q), heads(k), heads(v), module.exponent()


def capture_qkvp(model, module, *inputs):
    """Run ``model(*inputs)`` and return what ``module`` (a
    ``PolaAttention`` of the model) fed its attention core on its first
    call: dict(q, k, v (B, heads, N, d), p, key_mask, hw, source).

    The core's arguments are taken as they are (``source='core'``: the
    module's own q and k, nothing recomputed); should the module not reach
    ``mmpola.layers.pola_attention.pola_linear_attention``, they are
    recomputed from its input with ``pola_qkvp`` (``source='recomputed'``).
    """
    import mmpola.layers.pola_attention as pa
    original = pa.pola_linear_attention
    seen, active = {}, []

    def spy(q, k, v, p, key_mask=None, *args, **kwargs):
        if active and 'q' not in seen:
            seen.update(q=q.detach(), k=k.detach(), v=v.detach(),
                        p=p.detach(), key_mask=key_mask, source='core')
        return original(q, k, v, p, key_mask, *args, **kwargs)

    def pre_hook(mod, args, kwargs):
        active.append(True)
        if 'x' not in seen:
            seen['x'] = args[0].detach()
            seen['hw'] = tuple(args[1] if len(args) > 1 else
                               kwargs['hw_shape'])

    def post_hook(mod, args, kwargs, output):
        active.pop()

    handles = [module.register_forward_pre_hook(pre_hook, with_kwargs=True),
               module.register_forward_hook(post_hook, with_kwargs=True)]
    pa.pola_linear_attention = spy
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        pa.pola_linear_attention = original
        for handle in handles:
            handle.remove()
    if 'x' not in seen:
        raise RuntimeError('the layer was not called')
    if 'q' not in seen:
        with torch.no_grad():
            q, k, v, p = pola_qkvp(module, seen['x'], seen['hw'])
        seen.update(q=q, k=k, v=v, p=p, key_mask=None, source='recomputed')
    return seen


def _normalise(scores, uniform_if_zero=False):
    total = scores.sum(dim=-1, keepdim=True)
    if uniform_if_zero:
        zero = total <= 0
        scores = torch.where(zero, torch.ones_like(scores), scores)
        total = torch.where(zero, torch.full_like(total, scores.shape[-1]),
                            total)
    return scores / total


def attention_weights(q, k, p=None, methods=METHODS, eps: float = 0.,
                      key_mask=None) -> Dict[str, torch.Tensor]:
    """Row-stochastic attention matrices (..., Nq, Nk) for each method.

    Args:
        q (Tensor): (..., Nq, d) queries (a subset of rows is fine).
        k (Tensor): (..., Nk, d) keys.
        p (Tensor): Pola exponents broadcastable to (..., 1, d).
        methods: names from ``METHODS``.
        eps (float): the released normaliser's eps (per key); 0 gives rows
            that sum to exactly 1, 1e-6 the weights the released core
            applies (``x_sim = A_sim @ v1``).
        key_mask (Tensor, optional): (Nk, ) bool, False for keys to leave
            out (padding of a window): their weight is 0 in every method
            (the Pola features of a zeroed key are 0, as in the core).
    """
    out = {}
    d = q.shape[-1]
    keep = None
    if key_mask is not None:
        keep = key_mask.reshape(-1).bool()
        # zero the padded keys: linear kernels then ignore them exactly
        k = k * keep[:, None].to(k.dtype)
    if 'softmax' in methods:
        logits = (q @ k.transpose(-2, -1)) * d**-0.5
        if keep is not None:
            logits = logits.masked_fill(~keep, float('-inf'))
        out['softmax'] = torch.softmax(logits, dim=-1)
    if 'relu' in methods:
        scores = F.relu(q) @ F.relu(k).transpose(-2, -1)
        if keep is not None:  # uniform over the real keys when all are 0
            empty = (scores.sum(-1, keepdim=True) <= 0).to(scores.dtype)
            scores = scores + empty * keep.to(scores.dtype)
        out['relu'] = _normalise(scores, uniform_if_zero=True)
    if any(m.startswith('pola') for m in methods):
        assert p is not None, 'Pola weights need the exponents p'
        kf = polarity_features(k, p)[0].transpose(-2, -1)     # (.., 2d, Nk)
        qs = polarity_features(q, p)[0]                       # (.., Nq, 2d)
        qo = torch.cat([qs[..., d:], qs[..., :d]], dim=-1)    # q_opp
        n = k.shape[-2] if keep is None else int(keep.sum())
        sims = {}
        for name, qf in (('pola_sim', qs), ('pola_opp', qo)):
            scores = qf @ kf
            total = scores.sum(dim=-1, keepdim=True) + n * eps
            sims[name] = scores / total
        for name in ('pola_sim', 'pola_opp'):
            if name in methods:
                out[name] = sims[name]
        if 'pola' in methods:
            out['pola'] = (sims['pola_sim'] + sims['pola_opp']) / 2
    return {m: out[m] for m in methods}


def row_entropy(a: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of a row-stochastic matrix: -sum a log a,
    with 0 log 0 = 0. Uniform over n keys gives log n, one-hot gives 0."""
    a = a.double()
    return -(torch.where(a > 0, a * a.clamp_min(1e-300).log(),
                         torch.zeros_like(a))).sum(dim=-1)


def entropies(q, k, p, methods=METHODS, chunk: int = 512,
              head_reduce: str = 'mean',
              key_mask=None) -> Dict[str, torch.Tensor]:
    """Row entropies of every query for each method, computed in chunks of
    queries (N x N never held at once for all methods).

    Args:
        q, k (Tensor): (heads, N, d).
        head_reduce (str): 'mean' (entropy of the head-averaged rows),
            'all' (every head's rows) or an int as str (one head).

    Returns:
        dict: method -> 1-D tensor of entropies.
    """
    result = {m: [] for m in methods}
    for start in range(0, q.shape[-2], chunk):
        maps = attention_weights(q[..., start:start + chunk, :], k, p,
                                 methods, key_mask=key_mask)
        for m, a in maps.items():
            result[m].append(row_entropy(reduce_heads(a, head_reduce))
                             .reshape(-1))
    return {m: torch.cat(v) for m, v in result.items()}


def reduce_heads(a: torch.Tensor, head_reduce: str = 'mean'):
    """(heads, Nq, Nk) -> (Nq, Nk) ('mean' / a head index) or as is
    ('all')."""
    if head_reduce == 'mean':
        return a.mean(dim=0)
    if head_reduce == 'all':
        return a
    return a[int(head_reduce)]


def demo_image(h: int = 224, w: int = 224, seed: int = 0):
    """An RGB uint8 image (H, W, 3) with a few coloured shapes on a smooth
    background, for when no image is given."""
    import numpy as np
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([90 + 60 * xx / w, 110 + 40 * yy / h,
                   150 - 50 * xx / w], axis=-1)
    img = Image.fromarray(np.clip(bg + rng.normal(0, 6, bg.shape), 0,
                                  255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse([0.12 * w, 0.15 * h, 0.45 * w, 0.5 * h],
                 fill=(230, 60, 50))
    draw.rectangle([0.55 * w, 0.2 * h, 0.88 * w, 0.45 * h],
                   fill=(40, 180, 80))
    draw.polygon([(0.3 * w, 0.9 * h), (0.5 * w, 0.55 * h),
                  (0.7 * w, 0.9 * h)], fill=(50, 70, 220))
    draw.ellipse([0.75 * w, 0.6 * h, 0.92 * w, 0.8 * h],
                 fill=(235, 220, 60))
    return np.asarray(img)


def uniform_entropy(n: int) -> float:
    return math.log(n)
