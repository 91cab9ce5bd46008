"""The Pola arithmetic: one function, three implementations, one switch.

:func:`pola_linear_attention` runs ``'reference'`` (the released formulation
written literally: the oracle), ``'grouped'`` (the same arithmetic in
whole-tensor operations: any device, traceable), ``'fast'`` (regrouped,
blocked over tokens, with a hand-written first-order backward: CPU eager) or
``'auto'`` (default: ``'fast'`` for CPU tensors, else ``'grouped'``); the
last two are tested against the reference, outputs and gradients. While a
call is traced, scripted, compiled or exported, ``'grouped'`` runs unless
``'reference'`` is chosen by argument or :func:`set_pola_impl`. All compute in float32 (float64 for float64
inputs) with autocast off and return the inputs' dtype: the powers (p up to
5) overflow float16.

The switch, by precedence: the ``impl=`` argument; :func:`set_pola_impl`
(or the :func:`pola_impl` context manager); the environment variable
``MMPOLA_POLA_IMPL``; ``'auto'``.
"""
import contextlib
import os
from typing import Optional

import torch

from .fast import pola_attention_fast
from .grouped import pola_attention_grouped
from .reference import pola_attention_reference

__all__ = ['pola_linear_attention', 'set_pola_impl', 'get_pola_impl',
           'pola_impl', 'pola_attention_reference', 'pola_attention_grouped',
           'pola_attention_fast']

ENV_VAR = 'MMPOLA_POLA_IMPL'
#: name -> function(q, k, v, p, key_mask)
IMPLEMENTATIONS = {
    'reference': pola_attention_reference,
    'grouped': pola_attention_grouped,
    'fast': pola_attention_fast,
}
_chosen: Optional[str] = None  # set_pola_impl; None: environment / 'auto'


def _check(impl, source):
    if impl != 'auto' and impl not in IMPLEMENTATIONS:
        raise ValueError(f'{source} must be one of '
                         f"{['auto', *IMPLEMENTATIONS]}, got {impl!r}")
    return impl


def set_pola_impl(impl: Optional[str]) -> None:
    """Choose the implementation of every later call without ``impl``:
    'auto', 'reference', 'grouped' or 'fast'; None goes back to
    ``MMPOLA_POLA_IMPL`` / 'auto'."""
    global _chosen
    _chosen = None if impl is None else _check(impl, 'set_pola_impl(impl)')


def get_pola_impl() -> str:
    """The implementation chosen for calls without ``impl``."""
    if _chosen is not None:
        return _chosen
    return _check(os.environ.get(ENV_VAR, 'auto'), ENV_VAR)


@contextlib.contextmanager
def pola_impl(impl: Optional[str]):
    """:func:`set_pola_impl` for the enclosed code."""
    global _chosen
    saved = _chosen
    set_pola_impl(impl)
    try:
        yield
    finally:
        _chosen = saved


# torch's "am I being compiled / exported" checks, looked up at import:
# Dynamo folds these functions to True while it traces
_CAPTURE_CHECKS = tuple(
    getattr(torch.compiler, name) for name in ('is_compiling', 'is_exporting')
    if hasattr(torch.compiler, name))
if not _CAPTURE_CHECKS:  # torch < 2.3
    from torch._dynamo import is_compiling as _dynamo_is_compiling
    _CAPTURE_CHECKS = (_dynamo_is_compiling, )


def _capture_kind(t: torch.Tensor) -> str:
    """'' (eager), 'jit' (TorchScript trace or script: the ONNX route of
    ``torch.onnx.export(dynamo=False)`` and mmdeploy) or 'dynamo'
    (compiled, exported, fake or functional tensors)."""
    for check in _CAPTURE_CHECKS:
        if check():
            return 'dynamo'
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return 'jit'
    return '' if type(t) is torch.Tensor else 'dynamo'


try:  # torch >= 2.4 takes the device type
    torch.is_autocast_enabled('cpu')

    def _autocast_on(device_type):
        return torch.is_autocast_enabled(device_type)
except TypeError:

    def _autocast_on(device_type):
        return (torch.is_autocast_cpu_enabled() if device_type == 'cpu'
                else torch.is_autocast_enabled())


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
        impl (str, optional): 'auto', 'reference', 'grouped' or 'fast';
            default: :func:`get_pola_impl`.

    Returns:
        Tensor: (B, heads, N, d) in v's dtype, channels ``[x_sim, x_opp]``.
    """
    captured = _capture_kind(q)
    if captured:  # no environment lookup: older Dynamo cannot trace it
        chosen = _chosen if impl is None else impl
        impl = 'reference' if chosen == 'reference' else 'grouped'
    else:
        impl = get_pola_impl() if impl is None else _check(impl, 'impl')
    if impl == 'auto':
        impl = 'fast' if q.device.type == 'cpu' else 'grouped'
    dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
    args = [t.to(dtype) for t in (q, k, v, p)]
    args.append(None if key_mask is None else key_mask.to(dtype))
    device_type = q.device.type
    off = (torch.autocast(device_type=device_type, enabled=False)
           if _autocast_on(device_type) else contextlib.nullcontext())
    extra = dict(exp_log=captured == 'jit') if impl == 'grouped' else {}
    with off:
        return IMPLEMENTATIONS[impl](*args, **extra).to(v.dtype)
