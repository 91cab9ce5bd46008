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
