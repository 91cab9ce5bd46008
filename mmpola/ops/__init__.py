"""The Pola arithmetic: one function, several implementations, one switch.

:func:`pola_linear_attention` computes polarity-aware linear attention
(PolaFormer's released formulation, see :mod:`mmpola.ops.reference`) with
one of these implementations:

``'reference'``
    :func:`~mmpola.ops.reference.pola_attention_reference`: the released
    arithmetic written literally in plain PyTorch; any device, traceable,
    compilable, exportable.
``'fast'``
    :func:`~mmpola.ops.fast.pola_attention_fast`: the same numbers (tested
    against the reference, outputs and gradients), regrouped so that it
    needs one power per tensor and one product per side, blocked over
    tokens, with a hand-written backward (first-order: differentiating its
    gradients again raises "trying to differentiate twice"). Tuned for the
    CPU.
``'auto'`` (the default)
    ``'fast'`` for CPU tensors in eager mode, ``'reference'`` otherwise
    (other devices).

Whatever is chosen, the reference runs while the call is being traced or
compiled (``torch.jit.trace``, TorchScript ONNX export, ``torch.compile``,
``torch.export`` / dynamo ONNX export, fake tensors): the fast
implementation cannot be traced. Both compute in float32 (float64 for
float64 inputs) and return the inputs' dtype.

The choice, in order of precedence:

1. the ``impl=`` argument of :func:`pola_linear_attention`;
2. :func:`set_pola_impl` (or the :func:`pola_impl` context manager);
3. the environment variable ``MMPOLA_POLA_IMPL``;
4. ``'auto'``.

Example:
    >>> import mmpola.ops as ops
    >>> ops.set_pola_impl('reference')   # every PolaAttention from now on
    >>> with ops.pola_impl('fast'):      # or for a block of code
    ...     pass
"""
import contextlib
import os
from typing import Optional

import torch

from .fast import pola_attention_fast
from .reference import (polarity_features, pola_attention_module_reference,
                        pola_attention_reference, released_pola_core)

__all__ = [
    'pola_linear_attention', 'set_pola_impl', 'get_pola_impl', 'pola_impl',
    'resolve_pola_impl', 'POLA_IMPLS', 'ENV_VAR', 'pola_attention_reference',
    'pola_attention_fast', 'released_pola_core', 'polarity_features',
    'pola_attention_module_reference'
]

ENV_VAR = 'MMPOLA_POLA_IMPL'
#: name -> function(q, k, v, p, key_mask)
IMPLEMENTATIONS = {
    'reference': pola_attention_reference,
    'fast': pola_attention_fast,
}
#: the values the switch accepts
POLA_IMPLS = ('auto', ) + tuple(IMPLEMENTATIONS)

_chosen: Optional[str] = None  # set_pola_impl; None: environment / 'auto'


def _check(impl, source):
    if impl not in POLA_IMPLS:
        raise ValueError(f'{source} must be one of {list(POLA_IMPLS)}, '
                         f'got {impl!r}')
    return impl


def set_pola_impl(impl: Optional[str]) -> None:
    """Choose the implementation used by every later call that passes no
    ``impl``: one of :data:`POLA_IMPLS`, or None to go back to the
    environment variable ``MMPOLA_POLA_IMPL`` / ``'auto'``."""
    global _chosen
    _chosen = None if impl is None else _check(impl, 'set_pola_impl(impl)')


def get_pola_impl() -> str:
    """The implementation chosen for calls without ``impl`` (may be
    ``'auto'``; see :func:`resolve_pola_impl` for what runs)."""
    if _chosen is not None:
        return _chosen
    return _check(os.environ.get(ENV_VAR, 'auto'), ENV_VAR)


@contextlib.contextmanager
def pola_impl(impl: Optional[str]):
    """Context manager: :func:`set_pola_impl` for the enclosed code."""
    global _chosen
    saved = _chosen
    set_pola_impl(impl)
    try:
        yield
    finally:
        _chosen = saved


# torch's own "am I being compiled / exported" checks, resolved at import:
# dynamo folds these functions to True while it traces (a lazy import here
# would not be folded on torch < 2.3, where torch.compiler has none of them)
_CAPTURE_CHECKS = tuple(
    getattr(torch.compiler, name) for name in ('is_compiling', 'is_exporting')
    if hasattr(getattr(torch, 'compiler', None), name))
if not _CAPTURE_CHECKS:  # torch < 2.3
    from torch._dynamo import is_compiling as _dynamo_is_compiling
    _CAPTURE_CHECKS = (_dynamo_is_compiling, )


def _is_compiling() -> bool:
    for check in _CAPTURE_CHECKS:
        if check():
            return True
    return False


def is_graph_capture(t: torch.Tensor) -> bool:
    """Whether the call is being captured into a graph (tracing,
    scripting, compiling, exporting) rather than run eagerly: ``t`` is a
    tensor subclass such as a fake or functional tensor, or torch says
    so."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting()
            or _is_compiling() or type(t) is not torch.Tensor)


def resolve_pola_impl(impl: Optional[str], q: torch.Tensor) -> str:
    """The implementation that runs for ``impl`` (None: the current choice,
    :func:`get_pola_impl`) and query tensor ``q``: 'reference' or 'fast'."""
    if is_graph_capture(q):
        return 'reference'
    impl = get_pola_impl() if impl is None else _check(impl, 'impl')
    if impl == 'auto':
        return 'fast' if q.device.type == 'cpu' else 'reference'
    return impl


def pola_linear_attention(q: torch.Tensor,
                          k: torch.Tensor,
                          v: torch.Tensor,
                          p: torch.Tensor,
                          key_mask: Optional[torch.Tensor] = None,
                          impl: Optional[str] = None) -> torch.Tensor:
    """Polarity-aware linear attention core.

    Args:
        q, k (Tensor): (B, heads, N, d), divided by ``softplus(scale)``
            (k with the positional encoding added).
        v (Tensor): (B, heads, N, d), d even.
        p (Tensor): exponents ``1 + alpha * sigmoid(power)``,
            broadcastable to (1, heads, 1, d).
        key_mask (Tensor, optional): (B, 1, N, 1), 1 for real tokens and
            0 for padding; padded keys are left out of every sum over keys.
        impl (str, optional): 'auto', 'reference' or 'fast' for this call
            (module docstring); default: :func:`get_pola_impl`.

    Returns:
        Tensor: (B, heads, N, d) in v's dtype, channels ``[x_sim, x_opp]``
        (computed in float32 or float64).
    """
    return IMPLEMENTATIONS[resolve_pola_impl(impl, q)](q, k, v, p, key_mask)
