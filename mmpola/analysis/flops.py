"""FLOP counting for models with Pola attention, on MMEngine's FlopAnalyzer.

MMEngine's ``FlopAnalyzer`` (fvcore's jit-trace counter) counts one FLOP per
multiply-add of ``linear`` / ``matmul`` / ``bmm`` / ``einsum`` / convolutions
(plus rough costs for norms and a few resampling ops) and nothing for other
element-wise arithmetic: ``pow``, ``abs``, ``relu``, ``mul``, ``div``,
``add``, ``sigmoid``, ``softmax`` ... are ignored or reported as
"unsupported". For a softmax Transformer that is the usual convention (the
papers' FLOPs are multiply-adds of the matrix products); for Pola attention
it misses real work: the polarity features (two ReLUs and two powers per
q/k element), the normalisers, the gating.

mmpola's core is moreover a ``torch.autograd.Function`` (hand-written
backward): the jit tracer records it as one opaque ``prim::PythonOp``, so a
plain count sees none of its matrix products either.

``PolaFlopAnalyzer`` adds a per-module rule for ``PolaAttention``:

* its input projections, output projection and depthwise conv are counted by
  MMEngine's own linear / conv handles from the trace (multiply-adds; bias
  additions ignored, as MMEngine does for every linear and conv);
* the attention core (``pola_linear_attention``) is wrapped, while tracing,
  in an opaque op of its own (``PolaCoreCount``) whose count is the
  analytic count of the *released* formulation (``pola_core_flops``; matrix
  products in multiply-adds, element-wise work one FLOP per output element
  and operation), so the number does not depend on how mmpola's fast core
  regroups the arithmetic (should a future ``PolaAttention`` reach its core
  some other way, the same analytic count is added per call instead, and
  the matmul / bmm products the trace saw inside the module are taken out);
* what else the trace counts inside ``PolaAttention`` is the resizing of its
  positional encoding to the actual map (none at the pretraining size),
  reported as ``pola_pos_resize``;
* the element-wise work of ``PolaAttention.forward`` around the core
  (positional encoding added to k, q and k divided by softplus(scale), the
  depthwise-conv branch added, the gate multiplication: 5 per token and
  channel) is added to the module and its ancestors.

Not counted: parameter-sized work done once per call (softplus(scale),
sigmoid(power): O(C)), the masking multiplications of padded Pola windows,
and data movement (cat, chunk, transpose, roll, padding).
"""
import contextlib
from collections import Counter
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import elementwise_flop_counter, get_shape
from mmengine.analysis.print_helper import complexity_stats_table

CORE_OP = 'prim::PythonOp.PolaCoreCount'
POLA_OPS = ('pola_matmul', 'pola_elementwise')
# products of a core traced op by op (only when the interception fails)
TRACED_PRODUCTS = ('matmul', 'bmm', 'baddbmm', 'mm')
# what a PolaAttention's count consists of; anything else traced inside it
# is the resizing of its positional encoding to the map (an einsum of
# interpolation matrices, or an upsampling op) -> 'pola_pos_resize'
POLA_OWN_OPS = ('linear', 'addmm', 'conv', 'pola_matmul', 'pola_elementwise')

# MMEngine counts bilinear upsampling as 4 per output element; bicubic
# (Pola positional encodings resized to a new map) reads 16 neighbours.
EXTRA_HANDLES = {
    'aten::upsample_bicubic2d': elementwise_flop_counter(0, 16),
}


# ------------------------------------------------------- analytic counts


def pola_core_breakdown(batch: int, heads: int, n_query: int, n_key: int,
                        head_dims: int) -> Dict[str, int]:
    """Operation counts of the released Pola core (``mmpola.ops.pola_attention_reference``).

    Matrix products in multiply-adds, element-wise operations one per output
    element (a reduction: one per input element). Per batch and head, with
    Nq queries, Nk keys and head dim d (``k'`` and ``q_sim`` are 2d wide,
    each value half d/2)::

        matmul_kv     2 x (2d x Nk) @ (Nk x d/2)       = 2 Nk d^2
        matmul_out    2 x (Nq x 2d) @ (2d x d/2)       = 2 Nq d^2
        matmul_norm   2 x (Nq x 2d) @ (2d x 1)         = 4 Nq d
        features      per q/k element: neg, 2 relu, 2 pow = 5 (Nq + Nk) d
        key_mean      mean of k' over keys             = 2 Nk d
        scaling       k'^T n^-.5 and v_i n^-.5, twice  = 5 Nk d
        normaliser    + eps and reciprocal, twice      = 4 Nq
        normalise     x_i * z, twice                   = Nq d
    """
    d, bh = head_dims, batch * heads
    counts = dict(
        matmul_kv=2 * (2 * d) * n_key * (d // 2),
        matmul_out=2 * n_query * (2 * d) * (d // 2),
        matmul_norm=2 * n_query * (2 * d),
        features=5 * (n_query + n_key) * d,
        key_mean=2 * d * n_key,
        scaling=2 * (2 * d * n_key + n_key * (d // 2)),
        normaliser=2 * 2 * n_query,
        normalise=2 * n_query * (d // 2),
    )
    return {k: bh * v for k, v in counts.items()}


def pola_core_flops(batch, heads, n_query, n_key, head_dims) -> Counter:
    """``Counter(pola_matmul=..., pola_elementwise=...)`` of the core."""
    parts = pola_core_breakdown(batch, heads, n_query, n_key, head_dims)
    matmul = sum(v for k, v in parts.items() if k.startswith('matmul'))
    return Counter(pola_matmul=matmul,
                   pola_elementwise=sum(parts.values()) - matmul)


def pola_outer_elementwise(batch: int, tokens: int, embed_dims: int) -> int:
    """Element-wise work of ``PolaAttention.forward`` outside the core:
    k + positional encoding, q / s, k / s, + depthwise branch, * gate."""
    return 5 * batch * tokens * embed_dims


def pola_attention_flops(batch: int, tokens: int, embed_dims: int,
                         num_heads: int, kernel_size: int = 5) -> Counter:
    """Analytic count of one ``PolaAttention`` call on (batch, tokens, C)
    (global attention, no padding), by MMEngine's operator names:
    ``linear`` (q, k, v, g projections 4 N C^2 and the output projection
    N C^2), ``conv`` (depthwise k x k on v: N C k^2), ``pola_matmul`` and
    ``pola_elementwise``."""
    B, N, C = batch, tokens, embed_dims
    flops = Counter(linear=5 * B * N * C * C,
                    conv=B * N * C * kernel_size * kernel_size)
    flops += pola_core_flops(B, num_heads, N, N, C // num_heads)
    flops['pola_elementwise'] += pola_outer_elementwise(B, N, C)
    return flops


# ------------------------------------------------- tracing with the rule


class PolaCoreCount(torch.autograd.Function):
    """Opaque stand-in for the core while tracing: one ``prim::PythonOp``
    that ``_core_handle`` counts (it runs the real core inside)."""
    impl = None

    @staticmethod
    def forward(ctx, q, k, v, p, key_mask):
        return PolaCoreCount.impl(q, k, v, p, key_mask)


def _core_handle(inputs, outputs):
    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    B, h, nq, d = q
    return pola_core_flops(B, h, nq, k[-2], d)


@contextlib.contextmanager
def intercept_pola(model: nn.Module):
    """While active, every ``PolaAttention`` call of ``model`` is recorded
    (module -> list of (B, N, C, core_intercepted)) and its core runs as the
    opaque ``PolaCoreCount`` op."""
    import mmpola.layers.pola_attention as pa
    original = pa.pola_linear_attention
    calls: Dict[nn.Module, List[list]] = {}
    current: List[list] = []

    def core(q, k, v, p, key_mask=None, *args, **kwargs):
        if args or kwargs or not current:
            return original(q, k, v, p, key_mask, *args, **kwargs)
        current[-1][3] = True
        PolaCoreCount.impl = original
        return PolaCoreCount.apply(q, k, v, p, key_mask)

    def pre_hook(module, args):
        x = args[0]
        current.append([int(s) for s in x.shape] + [False])

    def post_hook(module, args, output):
        calls.setdefault(module, []).append(current.pop())

    handles = []
    for module in model.modules():
        if isinstance(module, pa.PolaAttention):
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(post_hook))
    pa.pola_linear_attention = core
    try:
        yield calls
    finally:
        pa.pola_linear_attention = original
        for handle in handles:
            handle.remove()


class PolaFlopAnalyzer(FlopAnalyzer):
    """MMEngine's ``FlopAnalyzer`` plus the ``PolaAttention`` rule.

    Args:
        model (nn.Module): the model; traced as ``model(*inputs)``.
        inputs (Tensor | tuple): its inputs.
        pola_rule (bool): apply the Pola rule (module docstring). With False
            this is MMEngine's plain count (with the bicubic handle), which
            sees the core's matrix products as the current implementation
            computes them and none of its element-wise work.

    ``by_operator()`` names the Pola parts ``pola_matmul`` and
    ``pola_elementwise``; ``pola_calls`` lists, per ``PolaAttention`` module
    name, the (B, N, C) of each call.
    """

    def __init__(self, model, inputs, pola_rule: bool = True):
        super().__init__(model, inputs)
        self.set_op_handle(**EXTRA_HANDLES)
        self.pola_rule = pola_rule
        if pola_rule:
            self.set_op_handle(**{CORE_OP: _core_handle})
        self.pola_calls: Dict[str, List[Tuple[int, int, int]]] = {}
        self.core_fallback = False

    def _analyze(self):
        if self._stats is not None:
            return self._stats
        if not self.pola_rule:
            return super()._analyze()
        with intercept_pola(self._model) as calls:
            stats = super()._analyze()
        for module, module_calls in calls.items():
            name = self._aliases[module]
            ancestors = self._get_all_ancestors(name)
            extra = Counter()
            for B, N, C, intercepted in module_calls:
                extra['pola_elementwise'] += pola_outer_elementwise(B, N, C)
                if not intercepted:
                    # the interception did not reach this core: count it
                    # analytically (below, whatever the trace saw of it
                    # is taken out)
                    heads = module.num_heads
                    extra += pola_core_flops(B, heads, N, N, C // heads)
                self.pola_calls.setdefault(name, []).append((B, N, C))
            if not all(c[-1] for c in module_calls):
                self.core_fallback = True
                traced = Counter({op: v for op, v in stats.counts[name].items()
                                  if op in TRACED_PRODUCTS})
                for ancestor in ancestors:
                    stats.counts[ancestor] -= traced
            for ancestor in ancestors:
                stats.counts[ancestor] += extra
            resize = sum(v for op, v in stats.counts[name].items()
                         if op not in POLA_OWN_OPS)
            if resize:
                relabel = Counter({op: v for op, v in stats.counts[name].items()
                                   if op not in POLA_OWN_OPS})
                for ancestor in ancestors:
                    stats.counts[ancestor] -= relabel
                    stats.counts[ancestor]['pola_pos_resize'] += resize
            # the element-wise ops the rule covers are no longer unsupported
            covered = stats.unsupported_ops[name]
            for ancestor in ancestors - {name}:
                stats.unsupported_ops[ancestor] = (
                    stats.unsupported_ops[ancestor] - covered)
            stats.unsupported_ops[name] = Counter()
        return stats


def analyze(model: nn.Module, inputs, pola_rule: bool = True,
            max_depth: int = 3, table: bool = False) -> dict:
    """Parameters and FLOPs of ``model(*inputs)``.

    Returns:
        dict: ``flops`` (total), ``params``, ``by_operator`` (Counter),
        ``pola_flops`` (the ``pola_*`` operators), ``unsupported`` (ops the
        counter skipped, with occurrence counts), ``pola_modules`` (number of
        ``PolaAttention`` calls), ``core_fallback`` and, with ``table``,
        ``table`` (MMEngine's per-module table to ``max_depth``).
    """
    if not isinstance(inputs, tuple):
        inputs = (inputs, )
    analyzer = PolaFlopAnalyzer(model, inputs, pola_rule=pola_rule)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    analyzer.tracer_warnings('none')
    with torch.no_grad():
        total = analyzer.total()
    by_op = analyzer.by_operator()
    result = dict(
        flops=total, params=parameter_count(model)[''], by_operator=by_op,
        pola_flops=sum(v for k, v in by_op.items() if k.startswith('pola')),
        unsupported=analyzer.unsupported_ops(),
        pola_modules=sum(len(c) for c in analyzer.pola_calls.values()),
        core_fallback=analyzer.core_fallback, analyzer=analyzer)
    if table:
        with torch.no_grad():
            result['table'] = complexity_stats_table(
                analyzer, max_depth=max_depth, show_param_shapes=False)
    return result


def format_count(x: float, unit: str = '') -> str:
    """12345678 -> '12.35M'."""
    for div, suffix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
        if abs(x) >= div:
            return f'{x / div:.2f}{suffix}{unit}'
    return f'{x:.0f}{unit}'
