"""mmpola.ops: the fast core against the reference (the released
formulation), outputs and gradients, on the test device; the switch."""
import pytest
import torch

import mmpola.ops as ops
from mmpola.ops import pola_attention_reference

IMPLS = sorted(ops.IMPLEMENTATIONS)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def run(fn, q, k, v, power, grad_out, key_mask=None):
    """Output and gradients (q, k, v, power) of fn(q, k, v, p, key_mask)."""
    q, k, v, power = (t.detach().clone().requires_grad_()
                      for t in (q, k, v, power))
    out = fn(q, k, v, 1 + 4 * torch.sigmoid(power), key_mask)
    (out.float() * grad_out).sum().backward()
    return [out.detach().float()] + [t.grad.float() for t in (q, k, v, power)]


def impl_fn(impl):
    return lambda *args: ops.pola_linear_attention(*args, impl=impl)


def randn(*shape, device, scale=1.):
    return torch.randn(*shape).to(device) * scale


# (N = 1 is left out: the output is then v whatever q, so dq is rounding.)
@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('B, heads, N, d', [
    (1, 1, 97, 64), (3, 3, 131, 32), (1, 5, 49, 32), (3, 1, 3, 64)])
def test_implementation_matches_reference(device, impl, B, heads, N, d):
    """Outputs and gradients of each implementation against the released
    formulation in float32, and no further from the exact (float64) value
    than the float32 released formulation is."""
    torch.manual_seed(N)
    q, k, v, grad_out = (randn(B, heads, N, d, device=device)
                         for _ in range(4))
    power = randn(1, heads, 1, d, device=device)
    mine = run(impl_fn(impl), q, k, v, power, grad_out)
    ref = run(pola_attention_reference, q, k, v, power, grad_out)
    exact = run(pola_attention_reference,
                *(t.double() for t in (q, k, v, power)), grad_out.double())
    for name, a, b, c in zip(['out', 'dq', 'dk', 'dv', 'dpower'], mine, ref,
                             exact):
        assert rel(a, b) < 1e-5, name
        assert rel(a.double(), c) < max(4 * rel(b.double(), c), 1e-5), name


@pytest.mark.parametrize('impl', IMPLS)
def test_padded_keys_are_left_out(device, impl):
    """With a key mask, the real tokens' outputs and gradients equal
    attention over the real keys alone, whatever the padded keys hold; the
    padded keys get no gradient."""
    torch.manual_seed(0)
    B, heads, N, d, keep = 2, 2, 40, 32, 29
    q, k, v, grad_out = (randn(B, heads, N, d, device=device)
                         for _ in range(4))
    power = randn(1, heads, 1, d, device=device)
    mask = torch.ones(B, 1, N, 1, device=device)
    mask[:, :, keep:] = 0
    k[:, :, keep:] += 100  # garbage, like a bias-only padded token
    v[:, :, keep:] -= 50
    mine = run(impl_fn(impl), q, k, v, power, grad_out, mask)
    ref = run(pola_attention_reference, q, k[:, :, :keep], v[:, :, :keep],
              power, grad_out)
    for name, i in (('out', 0), ('dq', 1), ('dpower', 4)):
        assert rel(mine[i], ref[i]) < 1e-5, name
    assert rel(mine[2][:, :, :keep], ref[2]) < 1e-5
    assert rel(mine[3][:, :, :keep], ref[3]) < 1e-5
    assert mine[2][:, :, keep:].abs().max() == 0
    assert mine[3][:, :, keep:].abs().max() == 0


def test_fast_in_many_token_blocks(device, monkeypatch):
    """The fast core over many small, uneven token blocks, with a mask."""
    from mmpola.ops import fast
    monkeypatch.setattr(fast, 'BLOCK_ELEMENTS', 1)  # 64 tokens per block
    torch.manual_seed(0)
    B, heads, N, d = 2, 3, 517, 32
    q, k, v, grad_out = (randn(B, heads, N, d, device=device)
                         for _ in range(4))
    power = randn(1, heads, 1, d, device=device)
    mask = (torch.rand(B, 1, N, 1) > 0.2).float().to(device)
    for key_mask in (None, mask):
        for name, a, b in zip(
                ['out', 'dq', 'dk', 'dv', 'dpower'],
                run(impl_fn('fast'), q, k, v, power, grad_out, key_mask),
                run(pola_attention_reference, q, k, v, power, grad_out,
                    key_mask)):
            assert rel(a, b) < 1e-5, name


@pytest.mark.parametrize('impl', IMPLS)
def test_gradcheck_float64_with_mask(device, impl):
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, 9, 4, dtype=torch.float64,
                           device=device, requires_grad=True)
               for _ in range(3))
    p = (1 + 4 * torch.rand(1, 2, 1, 4, dtype=torch.float64,
                            device=device)).requires_grad_()
    mask = torch.ones(1, 1, 9, 1, dtype=torch.float64, device=device)
    mask[:, :, 6:] = 0
    assert torch.autograd.gradcheck(
        lambda *t: ops.pola_linear_attention(*t, key_mask=mask, impl=impl),
        (q, k, v, p))


def test_fast_gradients_are_first_order_with_a_clear_error(device):
    """A backward with create_graph=True gives the same first-order
    gradients; differentiating them again raises a named error instead of
    failing inside the hand-written backward."""
    torch.manual_seed(3)
    q, k, v = (randn(1, 2, 7, 4, device=device).requires_grad_()
               for _ in range(3))
    p = (1 + 4 * torch.rand(1, 2, 1, 4, device=device)).requires_grad_()
    grads = {}
    for impl in ('fast', 'reference'):
        out = ops.pola_linear_attention(q, k, v, p, impl=impl)
        grads[impl] = torch.autograd.grad(out.square().sum(), (q, k, v, p),
                                          create_graph=True)
    for a, b in zip(grads['fast'], grads['reference']):
        assert rel(a.detach(), b.detach()) < 1e-5
    with pytest.raises(RuntimeError, match='differentiate twice'):
        grads['fast'][0].sum().backward()


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_inputs_computed_in_float32(device, impl, dtype):
    """|q| of 50 raised to p ~ 5 overflows float16: the core computes in
    float32 and returns the inputs' dtype, also under autocast."""
    torch.manual_seed(0)
    q, k, v = (randn(2, 2, 30, 16, device=device, scale=s)
               for s in (50, 50, 1))
    p = torch.full((1, 2, 1, 16), 4.9, device=device)
    assert not torch.isfinite((q.abs().half() ** 5)).all()
    ref = pola_attention_reference(
        *(t.to(dtype).double() for t in (q, k, v)), p.double())
    for ctx in (torch.autocast(device.type, dtype=torch.bfloat16),
                torch.autocast(device.type, enabled=False)):
        with ctx:
            out = ops.pola_linear_attention(
                *(t.to(dtype) for t in (q, k, v)), p, impl=impl)
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert rel(out.double(), ref) < 2e-2
    qs = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    ops.pola_linear_attention(*qs, p, impl=impl).float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in qs)


@pytest.mark.parametrize('impl', IMPLS)
def test_finite_gradients_at_zero_with_flush_denormal(device, impl):
    """q and k elements exactly 0 (as ReLU-like inputs give): finite
    gradients, also with denormals flushed to zero (CPU)."""
    torch.manual_seed(0)
    q, k, v = (randn(2, 2, 16, 8, device=device) for _ in range(3))
    q[..., :3, :4] = 0
    k[..., 5:, 2:] = 0
    power = randn(1, 2, 1, 8, device=device)
    flushed = device.type == 'cpu' and torch.set_flush_denormal(True)
    try:
        if flushed:
            assert (torch.tensor(1e-30) * 1e-9).item() == 0
        grads = run(impl_fn(impl), q, k, v, power,
                    randn(2, 2, 16, 8, device=device))
    finally:
        torch.set_flush_denormal(False)
    assert all(torch.isfinite(g).all() for g in grads)


def test_switch_precedence(device, monkeypatch):
    """impl= argument > set_pola_impl / pola_impl > MMPOLA_POLA_IMPL >
    'auto' ('fast' for CPU tensors, 'grouped' on other devices)."""
    calls = []
    for name in IMPLS:
        monkeypatch.setitem(ops.IMPLEMENTATIONS, name,
                            lambda q, *a, name=name, **kw: calls.append(name)
                            or q)
    q = torch.randn(1, 1, 4, 4, device=device)

    def used(**kwargs):
        calls.clear()
        ops.pola_linear_attention(q, q, q, q, **kwargs)
        return calls[0]

    monkeypatch.delenv(ops.ENV_VAR, raising=False)
    ops.set_pola_impl(None)
    auto = 'fast' if device.type == 'cpu' else 'grouped'
    assert ops.get_pola_impl() == 'auto' and used() == auto
    monkeypatch.setenv(ops.ENV_VAR, 'reference')
    assert ops.get_pola_impl() == 'reference' and used() == 'reference'
    assert used(impl='fast') == 'fast'
    try:
        ops.set_pola_impl('fast')
        assert used() == 'fast' and used(impl='reference') == 'reference'
        with ops.pola_impl('reference'):
            assert used() == 'reference'
        assert ops.get_pola_impl() == 'fast'
    finally:
        ops.set_pola_impl(None)
    monkeypatch.setenv(ops.ENV_VAR, 'turbo')
    with pytest.raises(ValueError, match='MMPOLA_POLA_IMPL'):
        used()
    with pytest.raises(ValueError, match='set_pola_impl'):
        ops.set_pola_impl('turbo')
    with pytest.raises(ValueError, match='impl'):
        used(impl='turbo')


def test_tracing_uses_a_traceable_core(device, monkeypatch):
    """While traced (here torch.jit.trace, as the TorchScript ONNX exporter
    does), 'grouped' runs in place of 'fast' / 'auto', and 'reference'
    when it is chosen."""
    calls = []
    for name in ('reference', 'grouped'):
        fn = ops.IMPLEMENTATIONS[name]
        monkeypatch.setitem(ops.IMPLEMENTATIONS, name,
                            lambda *a, fn=fn, name=name, **kw:
                            calls.append((name, kw)) or fn(*a, **kw))
    torch.manual_seed(0)
    q, k, v = (randn(1, 2, 10, 8, device=device) for _ in range(3))
    p = torch.full((1, 2, 1, 8), 2., device=device)
    expected = pola_attention_reference(q, k, v, p)
    for chosen, runs in (('fast', 'grouped'), ('auto', 'grouped'),
                         ('grouped', 'grouped'), ('reference', 'reference')):
        calls.clear()
        with ops.pola_impl(chosen):
            traced = torch.jit.trace(  # no check: it reruns eagerly
                lambda q, k, v: ops.pola_linear_attention(q, k, v, p),
                (q, k, v), check_trace=False)
        # traced 'grouped' takes its powers as exp(p log|x|)
        kw = {'exp_log': True} if runs == 'grouped' else {}
        assert calls == [(runs, kw)], (chosen, calls)
        torch.testing.assert_close(traced(q, k, v), expected)
    calls.clear()  # eagerly: one power per tensor
    ops.pola_linear_attention(q, k, v, p, impl='grouped')
    assert calls == [('grouped', {'exp_log': False})]
    calls.clear()  # compiled: one power too (inductor kept more buffers)
    torch.compile(lambda q, k, v: ops.pola_linear_attention(q, k, v, p),
                  backend='eager', fullgraph=True)(q, k, v)
    assert calls == [('grouped', {'exp_log': False})]


@pytest.mark.parametrize('exp_log', [False, True])
def test_grouped_powers_match_the_reference_at_zero_too(device, exp_log):
    """Both ways of taking the powers (one power, exp(p log|x|) in
    TorchScript traces) against the released formulation, outputs and
    gradients, with exact zeros in q and k: finite, equal gradients (the
    derivative of |x|**p at 0 is 0), float64 gradcheck."""
    from mmpola.ops.grouped import pola_attention_grouped
    torch.manual_seed(5)
    q, k, v, grad_out = (randn(2, 3, 37, 16, device=device)
                         for _ in range(4))
    q[..., ::3] = 0
    k[:, :, ::4] = 0
    power = randn(1, 3, 1, 16, device=device)

    def mine(*args):
        return pola_attention_grouped(*args, exp_log=exp_log)

    got = run(mine, q, k, v, power, grad_out)
    ref = run(pola_attention_reference, q, k, v, power, grad_out)
    for name, a, b in zip(['out', 'dq', 'dk', 'dv', 'dpower'], got, ref):
        assert torch.isfinite(a).all(), name
        assert rel(a, b) < 1e-5, name
    q64, k64, v64 = (t[:1, :1, :9, :4].double().requires_grad_()
                     for t in (q, k, v))
    p64 = (1 + 4 * torch.rand(1, 1, 1, 4, dtype=torch.float64,
                              device=device)).requires_grad_()
    assert torch.autograd.gradcheck(mine, (q64, k64, v64, p64))
