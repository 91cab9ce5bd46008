"""PolaAttention (the layer) against the released module's forward, with
each implementation of the core, on the test device; hooks and wrappers of
its submodules; it imports with torch alone."""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import mmpola.ops as ops
from mmpola.layers import PolaAttention, resize_grid_tokens
from mmpola.testing import released_attention_forward


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def random_attention(fused, heads, hw, device):
    """A PolaAttention with random parameters, an input and an output
    gradient for an ``hw`` map."""
    torch.manual_seed(heads)
    C = 32 * heads
    attn = PolaAttention(C, heads, (8, 8), fused_qkvg=fused)
    with torch.no_grad():
        for prm in attn.parameters():
            prm.normal_(0, 0.3)
    x, grad_out = (torch.randn(2, hw[0] * hw[1], C).to(device)
                   for _ in range(2))
    return attn.to(device), x, grad_out


def named_gradients(attn, fn, x, grad_out):
    """The output of fn(x), the gradient of x and of every parameter of
    attn, named."""
    attn.zero_grad()
    xi = x.clone().requires_grad_()
    out = fn(xi)
    (out * grad_out).sum().backward()
    return [('out', out.detach()), ('dx', xi.grad)] + [
        (name, prm.grad.clone()) for name, prm in attn.named_parameters()]


@pytest.mark.parametrize('impl', sorted(ops.IMPLEMENTATIONS))
@pytest.mark.parametrize('fused, heads, hw', [(False, 1, (9, 13)),
                                              (True, 3, (8, 8)),
                                              (True, 2, (11, 5))])
def test_module_matches_released_module(device, impl, fused, heads, hw):
    """The whole layer (projections, scaling, resized positional encoding,
    shared dwc, gate) against the released forward: output and the
    gradient of the input and of every parameter."""
    attn, x, grad_out = random_attention(fused, heads, hw, device)
    with ops.pola_impl(impl):
        mine = named_gradients(attn, lambda t: attn(t, hw), x, grad_out)
    ref = named_gradients(
        attn, lambda t: released_attention_forward(attn, t, hw), x,
        grad_out)
    for (name, a), (_, b) in zip(mine, ref):
        assert rel(a, b) < 1e-5, name


def test_key_mask_keeps_padding_out(device):
    """Padded tokens (any values) change nothing for the real ones."""
    torch.manual_seed(0)
    attn = PolaAttention(16, 2, (3, 4), fused_qkvg=True).eval()
    with torch.no_grad():
        for prm in attn.parameters():
            prm.normal_(0, 0.3)
    attn.to(device)
    x = torch.randn(1, 12, 16, device=device)
    mask = torch.ones(1, 12, device=device)
    mask[:, 8:] = 0  # last row padding
    x2 = x.clone()
    x2[:, 8:] = 100
    with torch.no_grad():
        a = attn(x, (3, 4), mask)
        b = attn(x2, (3, 4), mask)
    # the real tokens of the first two rows see no padding except through
    # the depthwise conv, whose input is zeroed for padded tokens
    torch.testing.assert_close(a[:, :8], b[:, :8])


def test_saves_no_token_by_token_tensor(device):
    """Linear memory: nothing of N x N size is kept for backward."""
    N = 300
    attn = PolaAttention(64, 1, (16, 16), fused_qkvg=False).to(device)
    x = torch.randn(1, N, 64, device=device, requires_grad=True)
    for impl in sorted(ops.IMPLEMENTATIONS):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with ops.pola_impl(impl), torch.autograd.graph.saved_tensors_hooks(
                pack, lambda t: t):
            attn(x, (15, 20)).sum().backward()
        assert sizes and max(sizes) < N * N, impl


@pytest.mark.parametrize('fused', [False, True])
@pytest.mark.parametrize('grad', [False, True])
def test_every_submodule_is_called(device, fused, grad):
    """Forward hooks of every submodule fire, and a wrapped Linear (as LoRA
    or quantisation would do) is what computes the projection."""
    attn = PolaAttention(16, 2, (4, 4), fused_qkvg=fused).to(device)
    fired = set()
    for name, m in attn.named_modules():
        m.register_forward_hook(lambda m, a, o, name=name: fired.add(name))
    with torch.set_grad_enabled(grad):
        attn(torch.randn(2, 16, 16, device=device), (4, 4))
    assert fired == {name for name, _ in attn.named_modules()}

    class Doubled(nn.Module):  # a wrapper, e.g. LoRA

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return 2 * self.inner(x)

    x = torch.randn(2, 16, 16, device=device)
    with torch.no_grad():
        before = attn(x, (4, 4))
        attn.proj = Doubled(attn.proj)
        torch.testing.assert_close(attn(x, (4, 4)), 2 * before)


@pytest.mark.parametrize('mode', ['bilinear', 'bicubic'])
def test_resize_grid_tokens(device, mode):
    torch.manual_seed(0)
    tokens = torch.randn(1, 5 * 7, 6, device=device)
    assert resize_grid_tokens(tokens, (5, 7), (5, 7), mode) is tokens
    grid = tokens.view(1, 5, 7, 6).permute(0, 3, 1, 2)
    ref = nn.functional.interpolate(grid, size=(9, 4), mode=mode,
                                    align_corners=False)
    torch.testing.assert_close(resize_grid_tokens(tokens, (5, 7), (9, 4),
                                                  mode),
                               ref.flatten(2).transpose(1, 2))


def test_bad_arguments():
    with pytest.raises(ValueError, match='even head dim'):
        PolaAttention(30, 2, (4, 4), fused_qkvg=True)
    with pytest.raises(ValueError, match='divide embed_dims'):
        PolaAttention(32, 3, (4, 4), fused_qkvg=True)
    attn = PolaAttention(16, 2, (4, 4), fused_qkvg=True)
    with pytest.raises(ValueError, match='do not form'):
        attn(torch.randn(1, 15, 16), (4, 4))


def test_imports_with_torch_alone():
    """The layer and its core import, build and run where MMEngine and mmcv
    cannot be imported."""
    code = (
        'import sys\n'
        'for m in ("mmengine", "mmcv", "mmdet", "mmseg", "mmpretrain"):\n'
        '    sys.modules[m] = None  # import raises ImportError\n'
        'import torch\n'
        'from mmpola.layers import PolaAttention\n'
        'attn = PolaAttention(32, 2, (4, 4))\n'
        'print(tuple(attn(torch.rand(1, 30, 32), (5, 6)).shape))\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '(1, 30, 32)'
