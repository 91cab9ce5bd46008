"""The opt-in CPU executor (mmpola/models/cpu_executor.py): its switch, its
whole-model guard, and equality with the plain modules (outputs,
gradients, stochastic depth), plus what it saves in training."""
import pytest
import torch
import torch.nn as nn

from mmpola import PolaPVT, PolaSwin
from mmpola.models import cpu_executor as ce

TINY_PVT = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2])
TINY_SWIN = dict(embed_dims=16, depths=[1, 2, 2, 2], num_heads=[1, 2, 2, 4])
FAMILIES = [(PolaPVT, TINY_PVT), (PolaSwin, TINY_SWIN)]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Several token chunks per FFN even at test sizes; the switch back to
    its default (environment / off) after each test."""
    monkeypatch.setattr(ce, 'CHUNK_ELEMENTS', 256)
    monkeypatch.delenv(ce.ENV_VAR, raising=False)
    yield
    ce.set_cpu_executor(None)


@pytest.fixture
def calls(monkeypatch):
    """Names the blocks the executor ran: 'whole' (both passes,
    ``_block_inference``) or 'ffn' (attention through its modules, the FFN
    half by the executor)."""
    count = []
    for name, label in (('norm_ffn', 'ffn'), ('_block_inference', 'whole')):
        real = getattr(ce, name)

        def spy(*args, real=real, label=label):
            count.append(label)
            return real(*args)

        monkeypatch.setattr(ce, name, spy)
    return count


def build(cls, arch, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(arch=arch, **kwargs)


def run(model, x, executor, seed=1, grad=True):
    """Stage outputs and (with ``grad``) every parameter's gradient of a
    fixed loss, with the executor on or off."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with ce.use_cpu_executor(executor), torch.set_grad_enabled(grad):
        outs = model(x)
        if grad:
            sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum()
                for o in outs).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return [o.detach() for o in outs], grads


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def assert_close(a, b, tol=1e-5):
    """Equal up to float32 rounding (matrix products blocked
    differently), relative to each tensor's largest value."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert rel_err(x, y) < tol


def test_switch_defaults_to_off_and_reads_the_environment(monkeypatch):
    assert ce.get_cpu_executor() is False
    monkeypatch.setenv(ce.ENV_VAR, 'on')
    assert ce.get_cpu_executor() is True
    ce.set_cpu_executor(False)          # the setter wins over the variable
    assert ce.get_cpu_executor() is False
    with ce.use_cpu_executor(True):
        assert ce.get_cpu_executor() is True
    assert ce.get_cpu_executor() is False
    ce.set_cpu_executor(None)
    assert ce.get_cpu_executor() is True
    monkeypatch.setenv(ce.ENV_VAR, 'fast please')
    with pytest.raises(ValueError, match=ce.ENV_VAR):
        ce.get_cpu_executor()
    with pytest.raises(TypeError, match='True, False or None'):
        ce.set_cpu_executor('on')


@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_default_path_never_runs_the_executor(cls, arch, calls):
    model = build(cls, arch).eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 96))
    assert calls == []


@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_inference_equals_the_plain_modules(cls, arch, calls):
    model = build(cls, arch, drop_path_rate=0.3).eval()
    x = torch.rand(2, 3, 97, 131)
    plain, _ = run(model, x, False, grad=False)
    assert calls == []
    fast, _ = run(model, x, True, grad=False)
    assert len(calls) == sum(model.arch_settings['depths'])
    # global Pola blocks run whole; Swin's softmax stages (3, 4) the FFN
    whole = sum(model.arch_settings['depths'][:2 if cls is PolaSwin else 4])
    assert calls.count('whole') == whole
    assert_close(fast, plain)


def test_window_mode_and_padding_equal_the_plain_modules(calls):
    """Pola windows (padding, shifts, key masks) keep the attention's
    modules; the FFN half runs in the executor."""
    model = build(PolaSwin, TINY_SWIN, pola_attn_mode='window',
                  pretrain_img_size=64).eval()
    x = torch.rand(1, 3, 97, 131)
    plain, _ = run(model, x, False, grad=False)
    fast, _ = run(model, x, True, grad=False)
    assert calls and 'whole' not in calls[:3]
    assert_close(fast, plain)


def test_the_reference_core_keeps_the_attention_modules(calls):
    """With the core switched to 'reference' the whole-block path (the
    fast core's arithmetic) is not used."""
    import mmpola.ops as ops
    model = build(PolaPVT, TINY_PVT).eval()
    x = torch.rand(1, 3, 64, 64)
    with ops.pola_impl('reference'):
        plain, _ = run(model, x, False, grad=False)
        fast, _ = run(model, x, True, grad=False)
    assert calls and set(calls) == {'ffn'}
    assert_close(fast, plain)


@pytest.mark.parametrize('grad', [True, False])
@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_training_equals_the_plain_modules(cls, arch, grad, calls):
    """Train mode, with gradients and without (EMA / teacher copies):
    the same outputs, the same stochastic depth draws, the same gradients;
    frozen stages keep no gradient."""
    model = build(cls, arch, drop_path_rate=0.3, frozen_stages=1).train()
    x = torch.rand(2, 3, 97, 131)
    plain, plain_grads = run(model, x, False, grad=grad)
    fast, fast_grads = run(model, x, True, grad=grad)
    assert calls
    assert_close(fast, plain)
    assert fast_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        assert rel_err(fast_grads[name], plain_grads[name]) < 1e-4, name
    if grad:  # nothing frozen received a gradient
        frozen = {n for n, p in model.named_parameters()
                  if not p.requires_grad}
        assert frozen and not frozen & fast_grads.keys()


@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_training_keeps_less_for_the_backward(cls, arch):
    """The executor keeps neither fc1's nor the GELU's output (autograd
    keeps both): at least twice their bytes fewer saved for the
    backward."""
    model = build(cls, arch).train()
    x = torch.rand(2, 3, 128, 128)

    def saved_bytes(executor):
        total = []

        def pack(t):  # activations (parameters cost no memory)
            if not isinstance(t, nn.Parameter):
                total.append(t.numel() * t.element_size())
            return t

        with ce.use_cpu_executor(executor), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            sum(o.sum() for o in model(x)).backward()
        return sum(total)

    gelu_bytes = []  # what autograd keeps for fc2: the GELU outputs
    handles = [m.register_forward_hook(
        lambda m, i, o: gelu_bytes.append(o.numel() * o.element_size()))
        for n, m in model.named_modules() if n.endswith('ffn.layers.0.1')]
    plain = saved_bytes(False)
    for h in handles:
        h.remove()
    assert len(gelu_bytes) == sum(model.arch_settings['depths'])
    assert saved_bytes(True) <= plain - 2 * sum(gelu_bytes)


def _hook_on_fc1(model):
    fired = []
    fc1 = next(m for n, m in model.named_modules()
               if n.endswith('ffn.layers.0.0'))
    return fired, fc1.register_forward_hook(lambda m, i, o: fired.append(o))


@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_guard_hooks_keep_the_plain_path(cls, arch, calls):
    model = build(cls, arch).eval()
    x = torch.rand(1, 3, 64, 64)
    with ce.use_cpu_executor(True), torch.no_grad():
        fired, handle = _hook_on_fc1(model)
        model(x)
        assert calls == [] and len(fired) == 1
        handle.remove()
        # a hook anywhere else, or a global one, also keeps the plain path
        handle = model.register_forward_pre_hook(lambda m, a: None)
        model(x)
        handle.remove()
        handle = nn.modules.module.register_module_forward_hook(
            lambda m, i, o: None)
        try:
            model(x)
        finally:
            handle.remove()
        assert calls == []
        model(x)
        assert calls


class LoRALinear(nn.Module):
    """A wrapper as LoRA libraries put around a Linear."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.in_features, 2, bias=False)
        self.up = nn.Linear(2, base.out_features, bias=False)
        nn.init.normal_(self.up.weight)

    def forward(self, x):
        return self.base(x) + self.up(self.down(x))


@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_guard_wrappers_and_other_settings_keep_the_plain_path(
        cls, arch, calls):
    x = torch.rand(1, 3, 64, 64)
    model = build(cls, arch).eval()
    with torch.no_grad():
        plain = model(x)
    # a LoRA-wrapped fc1 is honoured
    block = next(m for m in model.modules() if hasattr(m, 'ffn'))
    block.ffn.layers[0][0] = LoRALinear(block.ffn.layers[0][0])
    with ce.use_cpu_executor(True), torch.no_grad():
        wrapped = model(x)
    assert calls == []
    assert not torch.allclose(wrapped[0], plain[0])

    model = build(cls, arch).eval()
    with ce.use_cpu_executor(True):
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            model(x)
        with torch.no_grad():
            model.double()(x.double())
            model.float()
            torch.jit.trace(model, x, check_trace=False)
        # gradient checkpointing, dropout inside the FFN in training
        build(cls, arch, with_cp=True).train()(x)
        build(cls, arch, drop_rate=0.1).train()(x)
        # an FFN layer without bias
        model = build(cls, arch).eval()
        next(m for m in model.modules() if hasattr(m, 'ffn')
             ).ffn.layers[1].bias = None
        with torch.no_grad():
            model(x)
    assert calls == []


def test_compile_keeps_the_plain_path(calls):
    model = build(PolaPVT, TINY_PVT).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with ce.use_cpu_executor(True):
            try:
                out = torch.compile(model, backend='eager')(x)
            finally:  # no compiled frames left for later tests
                torch._dynamo.reset()
    assert_close(out, ref)
    assert calls == []


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t.requires_grad])


@pytest.mark.parametrize('shape, banded', [((2, 4, 96, 90), True),
                                           ((3, 4, 9, 13), False)])
@pytest.mark.parametrize('channels_last', [True, False])
@pytest.mark.parametrize('bias', [True, False])
def test_depthwise_conv_backward_equals_autograd(shape, banded,
                                                 channels_last, bias):
    """The executor's depthwise conv (its own bias and, on large maps,
    weight gradient) against nn.Conv2d under autograd: the same output,
    the same gradients for x, weight and bias."""
    torch.manual_seed(0)
    C = shape[1]
    conv = nn.Conv2d(C, C, 5, padding=2, groups=C, bias=bias)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = torch.randn(shape)
    assert ce._banded_weight_grad(conv, x) is banded
    params = [x] + list(conv.parameters())
    ref = conv(x)
    ref_grads = _grads((ref * weight).sum(), params)
    out = ce._depthwise(conv)(x)
    assert torch.equal(out, ref)
    for a, b in zip(_grads((out * weight).sum(), params), ref_grads):
        assert rel_err(a, b) < 1e-5
    # the weight alone (a frozen input), the input alone (frozen conv)
    x.requires_grad_(False)
    (dw, *_), (ref_dw, *_) = (_grads((f(x) * weight).sum(),
                                     list(conv.parameters()))
                              for f in (ce._depthwise(conv), conv))
    assert rel_err(dw, ref_dw) < 1e-5
    x.requires_grad_()
    conv.requires_grad_(False)
    (dx, ), (ref_dx, ) = (_grads((f(x) * weight).sum(), [x])
                          for f in (ce._depthwise(conv), conv))
    assert rel_err(dx, ref_dx) < 1e-6


def test_depthwise_conv_keeps_other_convs_as_they_are():
    conv = nn.Conv2d(4, 4, 5, padding='same', groups=4)
    assert ce._depthwise(conv) is conv
    conv = nn.Conv2d(4, 4, 5, padding=2, groups=4, padding_mode='reflect')
    assert ce._depthwise(conv) is conv
    # stride 2: oneDNN's weight gradient, still equal to autograd's
    conv = nn.Conv2d(4, 4, 5, padding=2, groups=4, stride=2)
    x = torch.randn(1, 4, 100, 100, requires_grad=True)
    assert not ce._banded_weight_grad(conv, x)
    params = [x] + list(conv.parameters())
    for a, b in zip(_grads(ce._depthwise(conv)(x).square().sum(), params),
                    _grads(conv(x).square().sum(), params)):
        assert rel_err(a, b) < 1e-5


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('add', [True, False])
def test_split_linear_equals_linear_and_chunk(bias, add):
    """Both halves of a projection and the first's added term, outputs and
    gradients, against F.linear + chunk + add under autograd."""
    torch.manual_seed(0)
    u = torch.randn(2, 30, 8, requires_grad=True)
    weight = torch.randn(12, 8, requires_grad=True)
    b = torch.randn(12, requires_grad=True) if bias else None
    extra = torch.randn(1, 30, 6, requires_grad=True) if add else None
    first, second = ce._SplitLinear.apply(u, weight, b, extra)
    ref1, ref2 = nn.functional.linear(u, weight, b).chunk(2, dim=-1)
    if add:
        ref1 = ref1 + extra
    assert first.is_contiguous() and second.is_contiguous()
    assert_close([first, second], [ref1, ref2], tol=1e-6)
    inputs = [t for t in (u, weight, b, extra) if t is not None]
    w1, w2 = torch.randn_like(first), torch.randn_like(second)
    # the first half only: the second's gradient comes in as zeros
    for loss, ref_loss in (((first * w1).sum() + (second * w2).sum(),
                            (ref1 * w1).sum() + (ref2 * w2).sum()),
                           ((first * w1).sum(), (ref1 * w1).sum())):
        got = torch.autograd.grad(loss, inputs, retain_graph=True)
        ref = torch.autograd.grad(ref_loss, inputs, retain_graph=True)
        assert_close(got, ref, tol=1e-6)


def test_residual_draws_and_scales_as_drop_path():
    """x + drop_path(y) in one addcmul: the same per-sample draws as
    mmcv's DropPath from the same seed, the same gradients."""
    from mmcv.cnn.bricks import DropPath
    drop = DropPath(0.5).train()
    x = torch.randn(16, 5, 3)
    y = torch.randn(16, 5, 3, requires_grad=True)
    torch.manual_seed(3)
    ref = x + drop(y)
    torch.manual_seed(3)
    out = ce._residual(x, y, drop)
    assert_close([out], [ref], tol=1e-6)
    kept = (out - x).flatten(1).any(1)
    assert 0 < kept.sum() < 16  # both outcomes drawn
    (dy, ), (ref_dy, ) = (torch.autograd.grad(t.sum(), [y]) for t in (out,
                                                                     ref))
    assert_close([dy], [ref_dy], tol=1e-6)
    # eval mode and Identity: the plain sum
    assert torch.equal(ce._residual(x, y, drop.eval()), x + y)
    assert torch.equal(ce._residual(x, y, nn.Identity()), x + y)


def test_double_backward_raises_instead_of_a_wrong_result():
    """The executor's nodes (and the fast core) are first-order: a
    backward with create_graph=True gives the first-order gradients,
    differentiating them again raises a named error."""
    model = build(PolaPVT, TINY_PVT).train()
    x = torch.rand(1, 3, 64, 64)
    params = [p for p in model.parameters() if p.requires_grad]
    for executor in (True, False):
        with ce.use_cpu_executor(executor):
            loss = sum(o.square().sum() for o in model(x))
            grads = torch.autograd.grad(loss, params, create_graph=True)
            with pytest.raises(RuntimeError, match='differentiate twice'):
                sum(g.square().sum() for g in grads).backward()
