"""Opt-in CPU executor for Pola-PVT / Pola-Swin blocks (off by default).

The default path is the plain modules: every block calls ``norm1``,
``attn`` (its Linear layers, ``dwc``, ``proj``), ``norm2`` and ``ffn``
(``fc1 -> GELU -> fc2``) on whole tensors, so hooks and wrappers see what
they expect. On the CPU that costs time and memory: the FFN's hidden map
(N x 4C or N x 8C: 137 MB per image in Pola-PVT-T's first stage at
800x1333) and the attention's (N, C) intermediates are written, faulted in
and read several times. With the executor switched on, a backbone whose
whole model passes :func:`executor_applies` computes its blocks

* in eval mode without gradients, a block with global Pola attention
  (and the fast core) runs whole in two passes over cache-sized token
  chunks (keys: norm1, k / v projection, key sums; queries: q / g
  projection, the core's query side, dwc, gate, proj, residual and the
  FFN), so none of the attention's (N, C) intermediates and no FFN hidden
  map exists for the whole map;
* otherwise (gradients, train mode, windows): global Pola attention with
  ``1 / softplus(scale)`` folded into the q / k rows of its projections
  (:func:`_folded_projection`, then :meth:`PolaAttention.attend`; no
  (B, N, C) divisions and their backward), the projections' halves as
  separate tensors (:class:`_SplitLinear`: no concatenated gradient), the
  depthwise conv with its own backward (:class:`_DepthwiseConv`: the bias
  gradient as a sum, the weight gradient by row bands on large maps);
  other attention through its modules; the residuals with stochastic
  depth as one ``addcmul`` each (:func:`_residual`, the same draws); the
  FFN half (:func:`norm_ffn`) fused per token chunk without gradients,
  with them through :class:`_FeedForward`: chunk by chunk, keeping only
  ``norm2(x)`` for the backward (not fc1's and the GELU's outputs, as
  autograd would), which recomputes them chunk by chunk.

The arithmetic is the plain modules' (the same weights, the same order of
operations per token, the fast core's regrouping of the attention; float32
rounding differs only through the matrix products' blocking), and
tests/test_cpu_executor.py compares the two, outputs and gradients.

The switch, in order of precedence: :func:`set_cpu_executor` (or the
:func:`use_cpu_executor` context manager), then the environment variable
``MMPOLA_CPU_EXECUTOR`` ('1'/'on'/'true' or '0'/'off'/'false'), then off.

The guard covers the whole model and is checked once per backbone forward
(:func:`executor_applies`): the switch is on; the input is a plain
float32 CPU tensor; nothing is being traced, scripted, compiled or
exported and no ``torch.func`` transform is active; autocast is off; no
module of the model has a hook or parametrisation and no global module
hook is registered; every block's ``norm2`` / ``ffn`` are exactly
LayerNorm and mmcv's two-layer FFN with Linear layers (with biases) and
exact GELU (wrappers such as LoRA or quantised Linear layers keep the
plain path);
in training, no dropout inside the FFN and no gradient checkpointing.
Otherwise the plain modules run. The executor's autograd nodes have
hand-written backwards: first-order gradients only (differentiating a
gradient, e.g. for a gradient penalty, raises "trying to differentiate
twice"; switch the executor off for it).
"""
import contextlib
import os
import threading
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from mmcv.cnn.bricks.drop import DropPath
from mmcv.cnn.bricks.transformer import FFN
from mmcv.cnn.bricks.wrappers import Linear as MMCVLinear

from ..ops import _is_compiling, is_graph_capture, resolve_pola_impl
from ..ops.fast import (Workspace, _add_key_sums, _query_output,
                        _w_from_key_sums, block_slices, polarity_features)
from ..ops.reference import autocast_enabled
from .pola_attention import PolaAttention

__all__ = ['set_cpu_executor', 'get_cpu_executor', 'use_cpu_executor',
           'executor_applies', 'ENV_VAR']

ENV_VAR = 'MMPOLA_CPU_EXECUTOR'
_TRUE, _FALSE = ('1', 'on', 'true', 'yes'), ('0', 'off', 'false', 'no', '')
_chosen: Optional[bool] = None

# hidden-map elements per token chunk (4 MB: in L2 / L3 on the CPUs measured;
# 1 << 19 measured 7% slower per block, 1 << 21 no faster)
CHUNK_ELEMENTS = 1 << 20


def set_cpu_executor(enabled: Optional[bool]) -> None:
    """Switch the executor on (True) or off (False) for every later
    backbone forward; None goes back to ``MMPOLA_CPU_EXECUTOR`` / off."""
    global _chosen
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f'set_cpu_executor takes True, False or None, got '
                        f'{enabled!r}')
    _chosen = enabled


def get_cpu_executor() -> bool:
    """Whether the executor is switched on (see the module docstring)."""
    if _chosen is not None:
        return _chosen
    value = os.environ.get(ENV_VAR, '').strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f'{ENV_VAR} must be one of {list(_TRUE + _FALSE[:-1])}'
                     f', got {os.environ[ENV_VAR]!r}')


@contextlib.contextmanager
def use_cpu_executor(enabled: Optional[bool] = True):
    """Context manager: :func:`set_cpu_executor` for the enclosed code."""
    global _chosen
    saved = _chosen
    set_cpu_executor(enabled)
    try:
        yield
    finally:
        _chosen = saved


# --------------------------------------------------------------- the guard

_GLOBAL_HOOKS = ('_global_forward_hooks', '_global_forward_pre_hooks',
                 '_global_backward_hooks', '_global_backward_pre_hooks')
_MODULE_HOOKS = ('_forward_hooks', '_forward_pre_hooks', '_backward_hooks',
                 '_backward_pre_hooks')


def _global_hooks_registered() -> bool:
    module = nn.modules.module
    return any(getattr(module, name, None) for name in _GLOBAL_HOOKS)


def _has_hooks(module: nn.Module) -> bool:
    return (any(getattr(module, name, None) for name in _MODULE_HOOKS)
            or nn.utils.parametrize.is_parametrized(module))


def _functorch_active() -> bool:
    check = getattr(torch._C, '_are_functorch_transforms_active', None)
    return bool(check and check())


def _plain_ffn(block, training: bool) -> bool:
    """Whether ``block.norm2`` / ``block.ffn`` are the plain LayerNorm and
    mmcv two-layer FFN (Linear, exact GELU, dropout), with no dropout in
    the FFN when training."""
    norm, ffn = getattr(block, 'norm2', None), getattr(block, 'ffn', None)
    if type(norm) is not nn.LayerNorm or type(ffn) is not FFN:
        return False
    if (ffn.num_fcs != 2 or not ffn.add_identity
            or type(ffn.gamma2) is not nn.Identity):
        return False
    try:
        (fc1, act, drop1), fc2, drop2 = ffn.layers
    except (TypeError, ValueError):
        return False
    linear = (nn.Linear, MMCVLinear)  # mmcv's: empty-tensor support only
    if not (type(fc1) in linear and type(fc2) in linear
            and type(act) is nn.GELU and act.approximate == 'none'
            and type(drop1) is nn.Dropout and type(drop2) is nn.Dropout
            and fc1.bias is not None and fc2.bias is not None
            and norm.elementwise_affine):
        return False
    return not training or (drop1.p == 0 and drop2.p == 0)


def executor_applies(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model`` (a Pola backbone) runs its blocks' FFNs through
    the executor for input ``x`` (module docstring: the switch and the
    guard, checked over the whole model)."""
    if is_graph_capture(x) or not get_cpu_executor():
        return False
    if (type(x) is not torch.Tensor or x.device.type != 'cpu'
            or x.dtype != torch.float32
            or _functorch_active() or autocast_enabled('cpu')
            or _global_hooks_registered()):
        return False
    grad = torch.is_grad_enabled()
    for module in model.modules():
        if _has_hooks(module):
            return False
        if hasattr(module, 'ffn') and hasattr(module, 'norm2'):
            if not _plain_ffn(module, module.training):
                return False
            if grad and getattr(module, 'with_cp', False):
                return False
        if any(p.dtype != torch.float32 or p.device.type != 'cpu'
               for p in module.parameters(recurse=False)):
            return False
    return True


# the executor's state for the current backbone forward (per thread)
_state = threading.local()


@contextlib.contextmanager
def executing(active: bool):
    """Marks the enclosed backbone forward as run by the executor (the
    backbones enter it with :func:`executor_applies`' answer)."""
    saved = getattr(_state, 'active', False)
    _state.active = active
    try:
        yield
    finally:
        _state.active = saved


def in_use() -> bool:
    """Whether the current backbone forward runs the executor (never while
    compiling: the check folds to False there)."""
    if _is_compiling():
        return False
    return getattr(_state, 'active', False)


# ------------------------------------------------------ the FFN half-block


def _chunks(rows: int, hidden: int):
    return block_slices(rows, max(16, CHUNK_ELEMENTS // hidden))


def _ffn_layers(block):
    (fc1, _, _), fc2, _ = block.ffn.layers
    return fc1, fc2


def _ffn_rows(block, rows, out, hbuf):
    """``out = rows + fc2(gelu(fc1(norm2(rows))))`` for (M, C) token rows,
    fc1's output in ``hbuf`` (at least (M, hidden), created by the caller
    in this call)."""
    norm = block.norm2
    fc1, fc2 = _ffn_layers(block)
    u = F.layer_norm(rows, norm.normalized_shape, norm.weight, norm.bias,
                     norm.eps)
    h = torch.addmm(fc1.bias, u, fc1.weight.t(), out=hbuf[:rows.shape[0]])
    torch.ops.aten.gelu_(h)
    return torch.addmm(rows, h, fc2.weight.t(), out=out).add_(fc2.bias)


def _fused_inference(block, x):
    """``x + fc2(gelu(fc1(norm2(x))))`` chunk by chunk, without autograd:
    a fresh (B, N, C) result."""
    hidden = _ffn_layers(block)[0].out_features
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(rows)
    chunks = _chunks(rows.shape[0], hidden)
    hbuf = rows.new_empty(chunks[0].stop, hidden)
    for s in chunks:
        _ffn_rows(block, rows[s], out[s], hbuf)
    return out.view(x.shape)


def _fc1_chunks(rows, w1, b1):
    """``(slice, fc1(rows[slice]))`` token chunk by token chunk, fc1's
    output in one buffer reused across chunks (valid until the next)."""
    chunks = _chunks(rows.shape[0], w1.shape[0])
    hbuf = rows.new_empty(chunks[0].stop, w1.shape[0])
    for s in chunks:
        yield s, torch.addmm(b1, rows[s], w1.t(),
                             out=hbuf[:s.stop - s.start])


class _FeedForward(torch.autograd.Function):
    """``fc2(gelu(fc1(u)))`` chunk by chunk, keeping only u for the
    backward: fc1's output and the GELU's (both (M, hidden), which
    autograd would keep) never exist for the whole sequence; the backward
    recomputes them per chunk (one more fc1 product, in cache)."""

    @staticmethod
    def forward(ctx, u, w1, b1, w2, b2):
        C = u.shape[-1]
        u2 = u.reshape(-1, C)
        y = u2.new_empty(u2.shape[0], w2.shape[0])
        for s, h in _fc1_chunks(u2, w1, b1):
            torch.addmm(b2, torch.ops.aten.gelu_(h), w2.t(), out=y[s])
        ctx.save_for_backward(u2, w1, b1, w2)
        ctx.shape = u.shape
        return y.view(*u.shape[:-1], w2.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        u2, w1, b1, w2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        dy2 = dy.reshape(-1, dy.shape[-1])
        du = torch.empty_like(u2) if need[0] else None
        dw1 = torch.zeros_like(w1) if need[1] else None
        db1 = torch.zeros_like(b1) if need[2] else None
        dw2 = torch.zeros_like(w2) if need[3] else None
        db2 = dy2.sum(0) if need[4] else None
        for s, hb in _fc1_chunks(u2, w1, b1):
            ub, dyb = u2[s], dy2[s]
            if dw2 is not None:
                dw2.addmm_(dyb.t(), F.gelu(hb))
            if need[0] or need[1] or need[2]:
                dh = torch.ops.aten.gelu_backward(dyb @ w2, hb)
                if dw1 is not None:
                    dw1.addmm_(dh.t(), ub)
                if db1 is not None:
                    db1.add_(dh.sum(0))
                if du is not None:
                    torch.mm(dh, w1, out=du[s])
        du = du.view(ctx.shape) if du is not None else None
        return du, dw1, db1, dw2, db2


def norm_ffn(block, x):
    """The executor's ``x + ffn(norm2(x))`` for a block whose model passed
    :func:`executor_applies`: (B, N, C) -> (B, N, C)."""
    ffn = block.ffn
    drop_path_is_noop = not block.training or not any(
        getattr(m, 'drop_prob', 0) for m in ffn.dropout_layer.modules())
    if not torch.is_grad_enabled() and drop_path_is_noop:
        return _fused_inference(block, x)
    fc1, fc2 = _ffn_layers(block)
    u = block.norm2(x)
    if torch.is_grad_enabled():
        y = _FeedForward.apply(u, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    else:
        y = fc2(F.gelu(fc1(u)))
    return _residual(x, y, ffn.dropout_layer)


def _residual(x, y, drop):
    """``x + drop(y)`` for a block's stochastic depth ``drop`` (mmcv's
    DropPath or Identity): in training one ``addcmul`` with the per-sample
    factor ``floor(keep + U[0, 1)) / keep`` (the same draw as
    ``mmcv.cnn.bricks.drop.drop_path``), not a division, a product and a
    sum over the whole map (and their backward)."""
    if type(drop) is not DropPath or not drop.training or not drop.drop_prob:
        return x + drop(y)
    keep = 1 - drop.drop_prob
    factor = keep + torch.rand((y.shape[0], ) + (1, ) * (y.dim() - 1),
                               dtype=y.dtype, device=y.device)
    return torch.addcmul(x, y, factor.floor_().div_(keep))


# ------------------------------------------ a whole block, global attention


def _plain_attention(block) -> bool:
    """Whether ``block.norm1`` / ``block.attn`` are the plain LayerNorm and
    PolaAttention with Linear / Conv2d / Dropout submodules."""
    attn, linear = block.attn, (nn.Linear, MMCVLinear)
    projections = ([attn.qkvg] if attn.fused_qkvg else [attn.qg, attn.kv])
    return (type(block.norm1) is nn.LayerNorm
            and block.norm1.elementwise_affine
            and all(type(m) in linear for m in projections + [attn.proj])
            and type(attn.dwc) is nn.Conv2d
            and type(attn.proj_drop) is nn.Dropout)


def _runs_whole(block, x, hw_shape) -> bool:
    """Whether :func:`_block_inference` runs this block: eval mode, no
    gradients, global Pola attention with the fast core."""
    return (not torch.is_grad_enabled() and not block.training
            and _global_pola(block, hw_shape)
            and resolve_pola_impl(None, x) == 'fast')


def _projection(attn, parts):
    """Weight and bias of the rows of the input projection that give
    ``parts`` (of 'q', 'k', 'v', 'g'), in that order."""
    if attn.fused_qkvg:
        layer, order = attn.qkvg, 'qkvg'
    elif parts == 'kv':
        return attn.kv.weight, attn.kv.bias
    else:
        return attn.qg.weight, attn.qg.bias
    C = attn.embed_dims
    rows = [slice(order.index(c) * C, (order.index(c) + 1) * C)
            for c in parts]
    weight = torch.cat([layer.weight[r] for r in rows])
    bias = None if layer.bias is None else torch.cat(
        [layer.bias[r] for r in rows])
    return weight, bias


def _divide_first_rows(weight, bias, s):
    """A projection's weight and bias with the first C output rows divided
    by s (1, 1, C): folds ``/ softplus(scale)`` of q or k into the
    product."""
    C = s.shape[-1]
    scale = torch.cat([s.reshape(C).reciprocal(),
                       s.new_ones(weight.shape[0] - C)])
    return (weight * scale[:, None],
            None if bias is None else bias * scale)


def _folded_weights(attn, hw_shape):
    """``1 / softplus(scale)`` folded into the q / k rows of the input
    projections: (weight, bias) of the q / g rows, of the k / v rows, and
    the positional encoding divided by s, (1, N, C). With them q / s and
    (k + encoding) / s come out of the products (no (N, C) divisions)."""
    s = F.softplus(attn.scale)                                  # (1, 1, C)
    return (_divide_first_rows(*_projection(attn, 'qg'), s),
            _divide_first_rows(*_projection(attn, 'kv'), s),
            attn.key_encoding(hw_shape) / s)


def _linear_rows(out, rows, weight, bias):
    """``rows (M, K) @ weight^T + bias`` into ``out`` (at least M rows; a
    workspace buffer reused across chunks, already mapped and in cache)."""
    out = out[:rows.shape[0]]
    if bias is None:
        return torch.mm(rows, weight.t(), out=out)
    return torch.addmm(bias, rows, weight.t(), out=out)


def _block_inference(block, x, hw_shape):
    """``x + attn(norm1(x))``, then ``+ ffn(norm2(.))``, for a block with
    global Pola attention in eval mode without gradients: the released
    arithmetic of PolaAttention (the fast core's regrouping) in two passes
    over token chunks. (B, N, C) -> a fresh (B, N, C)."""
    attn, norm1 = block.attn, block.norm1
    fc1 = _ffn_layers(block)[0]
    B, N, C = x.shape
    h, d = attn.num_heads, attn.head_dims
    if N != hw_shape[0] * hw_shape[1]:
        raise ValueError(f'{N} tokens do not form an {hw_shape} map')
    p = attn.exponent()                                      # (1, h, 1, d)
    (w_qg, b_qg), (w_kv, b_kv), enc_s = _folded_weights(attn, hw_shape)
    u = F.layer_norm(x, norm1.normalized_shape, norm1.weight, norm1.bias,
                     norm1.eps)
    hidden = fc1.out_features
    step = max(16, CHUNK_ELEMENTS // (B * max(hidden, 4 * C)))
    chunks = block_slices(N, step)
    ws = Workspace(x)

    # pass 1: keys and values, the key sums M = [k+; k-]^T [v, 1]
    v_all = x.new_empty(B, h, N, d)
    m = x.new_zeros(B, h, 2 * d, d + 1)
    for c in chunks:
        T = c.stop - c.start
        k, v = _linear_rows(ws('proj', B * T, 2 * C), u[:, c].reshape(-1, C),
                            w_kv, b_kv).view(B, T, 2 * C).split(C, dim=-1)
        k = k.add_(enc_s[:, c]).view(B, T, h, d).transpose(1, 2)
        v_all[:, :, c] = v.reshape(B, T, h, d).transpose(1, 2)
        _add_key_sums(m, polarity_features(k, p, ws), v_all[:, :, c], ws)
    w = _w_from_key_sums(m.div_(N), d // 2)             # (B, h, 2d, d+2)
    # the depthwise conv on v, one kernel set for all heads (as released)
    H, W = hw_shape
    v_map = v_all.view(B * h, H, W, d).permute(0, 3, 1, 2)
    dwc = attn.dwc(v_map).permute(0, 2, 3, 1).reshape(B, h, N, d)

    # pass 2: queries, gate, projection, residual, then the FFN
    out = torch.empty_like(x)
    for c in chunks:
        T = c.stop - c.start
        q, g = _linear_rows(ws('proj', B * T, 2 * C), u[:, c].reshape(-1, C),
                            w_qg, b_qg).view(B, T, 2 * C).split(C, dim=-1)
        q = q.view(B, T, h, d).transpose(1, 2)
        mix = ws('mix', B, T, h, d)
        _query_output(polarity_features(q, p, ws), w, mix.transpose(1, 2),
                      ws)
        mix.transpose(1, 2).add_(dwc[:, :, c])
        rows = _linear_rows(ws('y', B * T, C),
                            mix.view(B, T, C).mul_(g).view(B * T, C),
                            attn.proj.weight, attn.proj.bias)
        rows.view(B, T, C).add_(x[:, c])                 # x + attn(...)
        hbuf = ws('hidden', B * T, hidden)
        if B == 1:  # out[:, c] is contiguous: written in place
            _ffn_rows(block, rows, out[0, c], hbuf)
        else:
            out[:, c] = _ffn_rows(block, rows, ws('ffn', B * T, C),
                                  hbuf).view(B, T, C)
    return out


# the depthwise conv's weight gradient by row bands on maps of at least
# this many pixels per image; oneDNN's below (measured with 64 channels:
# oneDNN's took 1.8x the bands' time at 100 x 167 and 200 x 334, about the
# same at 50 x 84, less at 25 x 42)
DWC_BAND_MIN_PIXELS = 1 << 13
# accumulator elements per row band (4 MB; measured best at 2 rows of 334
# and 4 rows of 167 pixels with 64 channels and a 5 x 5 kernel)
DWC_BAND_ELEMENTS = 1 << 20


def _depthwise_weight_grad(x, dy, k):
    """The weight gradient (C, 1, k, k) of a depthwise k x k conv (stride
    1, zero padding k // 2) from its input x and output gradient dy, both
    (B, C, H, W) (channels-last fastest): band by band of rows, the k x k
    shifted products ``dy * x`` are accumulated into a (k, rows, W, k, C)
    buffer that stays in cache, summed over rows and columns at the end
    (oneDNN's weight gradient: 188 ms for a (2, 64, 200, 334) map, this:
    101 ms; measured)."""
    B, C, H, W = x.shape
    p = k // 2
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, p, p, p, p)).contiguous()
    dyl = dy.permute(0, 2, 3, 1)                           # (B, H, W, C)
    rows = min(H, max(1, round(DWC_BAND_ELEMENTS / (k * k * W * C))))
    acc = x.new_zeros(k, rows, W, k, C)
    _, s_h, s_w, s_c = xp.stride()
    for b in range(B):
        for r0 in range(0, H, rows):
            r = min(H - r0, rows)
            grad = dyl[b, r0:r0 + r].unsqueeze(2)           # (r, W, 1, C)
            for i in range(k):  # x rows r0 + i - p .., all k columns
                taps = xp[b, r0 + i:r0 + i + r].as_strided(
                    (r, W, k, C), (s_h, s_w, s_w, s_c))
                acc[i, :r].addcmul_(grad, taps)
    return acc.sum((1, 2)).permute(2, 0, 1).unsqueeze(1).contiguous()


def _banded_weight_grad(conv, x) -> bool:
    """Whether :func:`_depthwise_weight_grad` computes ``conv``'s weight
    gradient for input x: a depthwise conv with a square odd kernel,
    stride 1, no dilation, padding k // 2 (zeros: :func:`_depthwise`
    keeps other padding modes on the module), on a large map."""
    k = conv.kernel_size[0]
    return (conv.groups == conv.in_channels == conv.out_channels
            and conv.kernel_size == (k, k) and k % 2 == 1
            and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.padding == (k // 2, k // 2)
            and x.shape[2] * x.shape[3] >= DWC_BAND_MIN_PIXELS)


class _DepthwiseConv(torch.autograd.Function):
    """``conv(x)`` for Pola attention's depthwise conv (an ``nn.Conv2d``)
    with a faster backward on the CPU: the input gradient from oneDNN, the
    bias gradient as a sum over the map (oneDNN's took 70 ms more for a
    (2, 64, 200, 334) map), the weight gradient by
    :func:`_depthwise_weight_grad` on large maps, else from oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias, conv):
        ctx.save_for_backward(x, weight)
        ctx.conv, ctx.has_bias = conv, bias is not None
        return F.conv2d(x, weight, bias, conv.stride, conv.padding,
                        conv.dilation, conv.groups)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        conv, need = ctx.conv, ctx.needs_input_grad
        dy = dy.contiguous(memory_format=torch.channels_last)
        banded = need[1] and _banded_weight_grad(conv, x)
        dx, dw = None, None
        if need[0] or (need[1] and not banded):
            dx, dw, _ = torch.ops.aten.convolution_backward(
                dy, x, weight, None, conv.stride, conv.padding,
                conv.dilation, False, [0, 0], conv.groups,
                [need[0], need[1] and not banded, False])
        if banded:
            dw = _depthwise_weight_grad(x, dy, conv.kernel_size[0])
        db = dy.sum((0, 2, 3)) if need[2] and ctx.has_bias else None
        return dx, dw, db, None


def _depthwise(conv):
    """``conv`` (PolaAttention's ``dwc``) as :class:`_DepthwiseConv`: for
    :meth:`PolaAttention.attend`'s ``depthwise``; the module itself if it
    pads other than with explicit zeros."""
    if conv.padding_mode != 'zeros' or isinstance(conv.padding, str):
        return conv
    return lambda x: _DepthwiseConv.apply(x, conv.weight, conv.bias, conv)


class _SplitLinear(torch.autograd.Function):
    """``u @ weight^T + bias`` (weight (2C, K), u (..., K)) as its two
    halves, each a contiguous (..., C) tensor, ``add`` (broadcastable to
    the first) added in place to the first. Autograd's linear + chunk
    would concatenate the halves' gradients into an (M, 2C) tensor in the
    backward; here ``du = d1 @ W1 + d2 @ W2`` accumulates in place and the
    weight gradient's halves are written where they belong."""

    @staticmethod
    def forward(ctx, u, weight, bias, add):
        C = weight.shape[0] // 2
        b1, b2 = (None, None) if bias is None else bias.split(C)
        first = F.linear(u, weight[:C], b1)
        if add is not None:
            first.add_(add)  # fresh: created just above
        ctx.save_for_backward(u, weight)
        ctx.has_bias = bias is not None
        ctx.add_shape = None if add is None else add.shape
        return first, F.linear(u, weight[C:], b2)

    @staticmethod
    @once_differentiable
    def backward(ctx, d1, d2):
        u, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        C, K = weight.shape[0] // 2, u.shape[-1]
        u2 = u.reshape(-1, K)
        g1, g2 = d1.reshape(-1, C), d2.reshape(-1, C)
        du = dw = db = dadd = None
        if need[0]:
            du = torch.mm(g1, weight[:C]).addmm_(g2, weight[C:])
            du = du.view(u.shape)
        if need[1]:
            dw = weight.new_empty(weight.shape)
            torch.mm(g1.t(), u2, out=dw[:C])
            torch.mm(g2.t(), u2, out=dw[C:])
        if need[2] and ctx.has_bias:
            db = torch.cat([g1.sum(0), g2.sum(0)])
        if need[3]:
            dadd = d1.sum_to_size(ctx.add_shape)
        return du, dw, db, dadd


def _folded_projection(attn, u, hw_shape):
    """:meth:`PolaAttention.project` with ``1 / softplus(scale)`` folded
    into the q / k rows of the projection weights: q / s, (k + encoding) /
    s, v, g without the two (B, N, C) divisions (and their backward), each
    a contiguous (B, N, C) tensor (:class:`_SplitLinear`)."""
    (w_qg, b_qg), (w_kv, b_kv), enc_s = _folded_weights(attn, hw_shape)
    q, g = _SplitLinear.apply(u, w_qg, b_qg, None)
    k, v = _SplitLinear.apply(u, w_kv, b_kv, enc_s)
    return q, k, v, g


def _global_pola(block, hw_shape) -> bool:
    """Whether the block attends globally with plain PolaAttention."""
    is_global = getattr(block, '_is_global', None)
    return (type(getattr(block, 'attn', None)) is PolaAttention
            and (is_global is None or is_global(hw_shape))
            and _plain_attention(block))


def block_forward(block, x, hw_shape):
    """The executor's block forward, for a block of a model that passed
    :func:`executor_applies`: the whole block in two passes
    (:func:`_block_inference`) where it applies; else the attention (global
    Pola attention with the scale folded into its projections,
    :func:`_folded_projection`; other attention through its modules) and
    the FFN half through :func:`norm_ffn`."""
    if _runs_whole(block, x, hw_shape):
        return _block_inference(block, x, hw_shape)
    u = block.norm1(x)
    if _global_pola(block, hw_shape):
        attn = block.attn.attend(
            *_folded_projection(block.attn, u, hw_shape), hw_shape,
            depthwise=_depthwise(block.attn.dwc))
    else:
        attn = block._attention(u, hw_shape)
    return norm_ffn(block, _residual(x, attn, block.drop_path))
