"""The fast Pola core against the released formulation (the oracle)."""
import pytest
import torch

from mmpola.models.pola_attention import (PolaAttention,
                                          pola_linear_attention,
                                          token_grid_rows)
from reference_pola import released_pola_attention, released_pola_core


def run(fn, q, k, v, power, grad_out, **kwargs):
    q, k, v, power = (t.detach().clone().requires_grad_()
                      for t in (q, k, v, power))
    out = fn(q, k, v, 1 + 4 * torch.sigmoid(power), **kwargs)
    (out.float() * grad_out).sum().backward()
    return [out.detach().float()] + [t.grad.float() for t in (q, k, v, power)]


def graph_nodes(t):
    """Names of the autograd nodes behind tensor t."""
    names, stack = [], [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None:
            names.append(type(fn).__name__)
            stack += [f for f, _ in fn.next_functions]
    return names


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# (N = 1 is left out: the output is then v whatever q, so dq is rounding.)
@pytest.mark.parametrize('B, heads, N, d', [(1, 1, 97, 64), (3, 3, 131, 32),
                                             (1, 5, 49, 32), (3, 1, 3, 64)])
def test_outputs_and_gradients_match_released(B, heads, N, d):
    torch.manual_seed(N)
    q, k, v = (torch.randn(B, heads, N, d) for _ in range(3))
    power = torch.randn(1, heads, 1, d)
    grad_out = torch.randn(B, heads, N, d)
    fast = run(pola_linear_attention, q, k, v, power, grad_out)
    ref = run(released_pola_core, q, k, v, power, grad_out)
    exact = run(released_pola_core, *(t.double() for t in (q, k, v, power)),
                grad_out.double())
    for name, a, b, c in zip(['out', 'dq', 'dk', 'dv', 'dpower'], fast, ref,
                             exact):
        # as close to the float32 oracle as float32 rounding allows, and
        # no further from the exact (float64) value than the oracle is
        assert rel(a, b) < 1e-5, name
        assert rel(a.double(), c) < max(4 * rel(b.double(), c), 1e-5), name


def test_under_autocast_matches_float32_reference():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 77, 32) for _ in range(3))
    power = torch.randn(1, 3, 1, 32)
    grad_out = torch.randn(2, 3, 77, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        fast = run(pola_linear_attention, *(t.bfloat16() for t in (q, k, v)),
                   power, grad_out)
    ref = run(released_pola_core, *(t.bfloat16().double()
                                    for t in (q, k, v)), power.double(),
              grad_out.double())
    # inputs are bf16; the core itself is float32, so only the output cast
    # to bf16 (3 significant digits) separates it from the oracle
    for name, a, b in zip(['out', 'dq', 'dk', 'dv', 'dpower'], fast, ref):
        assert rel(a.double(), b) < 2e-2, name


def test_key_mask_excludes_padded_keys():
    """Padded keys (whatever their values) leave the result of the real
    tokens equal to attention over the real tokens alone."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 40, 32) for _ in range(3))
    p = 1 + 4 * torch.rand(1, 2, 1, 32)
    mask = torch.ones(2, 1, 40, 1)
    mask[:, :, 29:] = 0
    k[:, :, 29:] += 100  # garbage, like a bias-only padded token
    v[:, :, 29:] -= 50
    out = pola_linear_attention(q, k, v, p, mask)
    ref = released_pola_core(q, k[:, :, :29], v[:, :, :29], p)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_gradcheck_float64_with_mask():
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, 9, 4, dtype=torch.float64,
                           requires_grad=True) for _ in range(3))
    p = (1 + 4 * torch.rand(1, 2, 1, 4, dtype=torch.float64)).requires_grad_()
    mask = torch.ones(1, 1, 9, 1, dtype=torch.float64)
    mask[:, :, 6:] = 0
    assert torch.autograd.gradcheck(
        lambda *t: pola_linear_attention(*t, key_mask=mask), (q, k, v, p))


def test_module_saves_no_token_by_token_tensor():
    """Linear memory: nothing of N x N size is kept for backward."""
    N = 300
    attn = PolaAttention(64, 1, (16, 16), fused_qkvg=False)
    x = torch.randn(1, N, 64, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attn(x, (15, 20)).sum().backward()
    assert sizes and max(sizes) < N * N


def random_attention(fused, heads, hw):
    """A PolaAttention with random parameters, an input and an output
    gradient for an ``hw`` map."""
    torch.manual_seed(heads)
    C = 32 * heads
    attn = PolaAttention(C, heads, (8, 8), fused_qkvg=fused)
    with torch.no_grad():
        for prm in attn.parameters():
            prm.normal_(0, 0.3)
    return (attn, torch.randn(2, hw[0] * hw[1], C),
            torch.randn(2, hw[0] * hw[1], C))


def named_gradients(attn, fn, x, grad_out):
    """The output of fn(x) (as computed with attn), and it, the gradient
    of x and of every parameter of attn, named."""
    attn.zero_grad()
    xi = x.clone().requires_grad_()
    out = fn(xi)
    (out * grad_out).sum().backward()
    return out, [('out', out.detach()), ('dx', xi.grad)] + [
        (name, prm.grad.clone()) for name, prm in attn.named_parameters()]


@pytest.mark.parametrize('fused, heads, hw', [(False, 1, (9, 13)),
                                              (True, 3, (8, 8)),
                                              (True, 2, (11, 5))])
def test_module_matches_released_module_with_gradients(fused, heads, hw):
    """The whole layer (projections, in-place scaling, resized positional
    encoding, shared dwc, gate) against the released forward: output and the
    gradient of the input and of every parameter."""
    attn, x, grad_out = random_attention(fused, heads, hw)
    _, fast = named_gradients(attn, lambda t: attn(t, hw), x, grad_out)
    _, ref = named_gradients(
        attn, lambda t: released_pola_attention(attn, t, hw), x, grad_out)
    for (name, a), (_, b) in zip(fast, ref):
        assert rel(a, b) < 1e-5, name


@pytest.mark.parametrize('B, heads, N, d', [(1, 1, 1001, 64),
                                             (3, 3, 517, 32)])
def test_token_blocks_give_the_same_numbers(monkeypatch, B, heads, N, d):
    """Many small token blocks (uneven last block) against the oracle."""
    import mmpola.models.pola_attention as pa
    monkeypatch.setattr(pa, 'CPU_BLOCK_ELEMENTS', 1)  # 64 tokens per block
    assert len(pa._token_blocks(torch.empty(B, heads, N, d))) > 5
    torch.manual_seed(N)
    q, k, v = (torch.randn(B, heads, N, d) for _ in range(3))
    power = torch.randn(1, heads, 1, d)
    grad_out = torch.randn(B, heads, N, d)
    mask = torch.ones(B, 1, N, 1)
    mask[0, :, N - 70:] = 0
    fast = run(pola_linear_attention, q, k, v, power, grad_out,
               key_mask=mask)
    ref = run(released_pola_core, q, k, v * mask, power, grad_out)
    # the oracle has no mask: compare batch items without padding, and the
    # padded item's real tokens against the oracle on them alone
    keep = N - 70
    ref0 = run(released_pola_core, q[:1], k[:1, :, :keep], v[:1, :, :keep],
               power, grad_out[:1])
    for name, a, b in zip(['out', 'dq', 'dk', 'dv'], fast[:4], ref[:4]):
        if B > 1:
            assert rel(a[1:], b[1:]) < 1e-5, name
    assert rel(fast[0][:1], ref0[0]) < 1e-5
    assert rel(fast[1][:1], ref0[1]) < 1e-5
    assert rel(fast[2][:1, :, :keep], ref0[2]) < 1e-5
    assert fast[2][:1, :, keep:].abs().max() == 0


@pytest.mark.parametrize('native', [False, True])
def test_depthwise_conv_backward(native):
    """The depthwise convolution's backward (the CPU one, and the one other
    devices use) against autograd's, on a channels-last input like the
    attention's v, float64 gradcheck."""
    from mmpola.models import pola_attention as pa

    class Conv(torch.autograd.Function):
        forward = staticmethod(pa._DepthwiseConvCPU.forward)

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            return pa._depthwise_conv_backward(x, w, g, True, True, True,
                                               native=native)

    torch.manual_seed(3)
    x = torch.randn(2, 7, 9, 6, dtype=torch.float64).permute(0, 3, 1, 2)
    w = torch.randn(6, 1, 5, 5, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    args = [t.clone().requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(Conv.apply, args)
    out = pa._DepthwiseConvCPU.apply(*args)
    ref = torch.nn.functional.conv2d(x, w, b, padding=2, groups=6)
    torch.testing.assert_close(out, ref)


def test_mixing_node_gradcheck(monkeypatch):
    """The training node between the projections (core with the key
    encoding, dwc, gate): float64 gradcheck of every input's gradient,
    over two token blocks (64 + 8 tokens)."""
    from mmpola.models import pola_attention as pa
    monkeypatch.setattr(pa, 'CPU_BLOCK_ELEMENTS', 1)
    torch.manual_seed(5)
    heads, d, hw = 2, 4, (9, 8)
    C, N = heads * d, 72
    args = [torch.randn(2, N, 4 * C, dtype=torch.float64),
            torch.randn(1, N, C, dtype=torch.float64),
            1 + 4 * torch.rand(1, heads, 1, d, dtype=torch.float64),
            torch.randn(C, 1, 5, 5, dtype=torch.float64),
            torch.randn(C, dtype=torch.float64)]
    args = [t.requires_grad_() for t in args]
    assert torch.autograd.gradcheck(
        lambda *t: pa._PolaMixing.apply(*t, heads, hw), args, fast_mode=True)


@pytest.mark.parametrize('fused, heads, hw', [(False, 1, (9, 13)),
                                              (True, 3, (8, 11))])
def test_training_node_equals_autograd_path(monkeypatch, fused, heads, hw):
    """PolaAttention in training runs one node (:class:`_PolaMixing`) that
    gives the output and the gradients of the per-op autograd path (forced
    here), in several token blocks; a key mask keeps the per-op path."""
    from mmpola.models import pola_attention as pa
    monkeypatch.setattr(pa, 'CPU_BLOCK_ELEMENTS', 1)
    attn, x, grad_out = random_attention(fused, heads, hw)
    out, one_node = named_gradients(attn, lambda t: attn(t, hw), x,
                                    grad_out)
    assert '_PolaMixingBackward' in graph_nodes(out)
    monkeypatch.setattr(PolaAttention, '_mixing_in_one_node',
                        lambda *a: False)
    out, per_op = named_gradients(attn, lambda t: attn(t, hw), x, grad_out)
    assert '_PolaMixingBackward' not in graph_nodes(out)
    for (name, a), (_, b) in zip(one_node, per_op):
        assert rel(a, b) < 1e-5, name
    monkeypatch.undo()
    mask = torch.ones(2, hw[0] * hw[1])
    out = attn(x.clone().requires_grad_(), hw, key_mask=mask)
    assert '_PolaMixingBackward' not in graph_nodes(out)


@pytest.mark.parametrize('mode', ['bilinear', 'bicubic'])
@pytest.mark.parametrize('dst', [(9, 4), (5, 11), (5, 7)])
def test_token_grid_rows_equal_interpolate(mode, dst):
    """Rows of the resized positional grid, whole or a slice at a time,
    equal F.interpolate's."""
    torch.manual_seed(0)
    tokens = torch.randn(1, 5 * 7, 6)
    grid = tokens.view(1, 5, 7, 6).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=dst, mode=mode,
                                          align_corners=False)
    ref = ref.flatten(2).transpose(1, 2)
    rows = token_grid_rows(tokens, (5, 7), dst, mode)
    torch.testing.assert_close(rows(slice(None)), ref)
    W = dst[1]
    torch.testing.assert_close(rows(slice(2, 4)), ref[:, 2 * W:4 * W])
