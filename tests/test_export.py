"""Both backbones through torch.compile, torch.export and ONNX (both
exporters, run with ONNX Runtime on the CPU), on tiny archs at fixed sizes,
built on the test device."""
import inspect

import pytest
import torch
from mmengine.utils import digit_version

import mmpola  # noqa: F401
from mmpola import PolaPVT, PolaSwin

# Measured on torch 2.1.2 (the torch21 stack): its Dynamo cannot trace
# mmengine's deprecation decorator on mmcv's FFN in one graph
# (torch.export), and its inductor fails to compile Pola-Swin and gives
# wrong gradients for Pola-PVT (pow's backward at 0). Supported from the
# torch after it on; tested on the default stack's torch.
OLD_DYNAMO = digit_version(torch.__version__) < digit_version('2.2.0')
old_dynamo = pytest.mark.skipif(
    OLD_DYNAMO, reason=f'torch {torch.__version__}: torch.export / inductor '
    'need torch >= 2.2 for these models (README support matrix)')

TINY_PVT = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2])
TINY_SWIN = dict(embed_dims=16, depths=[1, 2, 2, 2], num_heads=[1, 2, 2, 4])
# Swin in window mode at this size: padded, shifted and masked windows in
# the softmax stages and in stage 1's Pola windows, resized encodings
CASES = {
    'pvt': (PolaPVT, dict(arch=TINY_PVT, pretrain_img_size=64), (72, 88)),
    'swin': (PolaSwin, dict(arch=TINY_SWIN, pretrain_img_size=64,
                            pola_attn_mode='window'), (136, 120)),
}


def build(case, device, drop_path_rate=0.):
    cls, kwargs, hw = CASES[case]
    torch.manual_seed(0)
    model = cls(drop_path_rate=drop_path_rate, **kwargs)
    model.init_weights()
    with torch.no_grad():  # non-trivial Pola parameters
        for name, p in model.named_parameters():
            if name.endswith(('power', 'scale', 'positional_encoding')):
                p.normal_(0, 0.5)
    return model.eval().to(device), torch.rand(2, 3, *hw).to(device)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@old_dynamo
@pytest.mark.parametrize('grad', [False, True])
@pytest.mark.parametrize('case', ['pvt', 'swin'])
def test_torch_export(device, case, grad):
    model, x = build(case, device)
    with torch.no_grad():
        ref = model(x)
    with torch.set_grad_enabled(grad):
        program = torch.export.export(model, (x, ))
    out = program.module()(x)
    assert len(out) == len(ref)
    for a, b in zip(out, ref):
        assert rel(a.detach(), b) < 1e-5


@pytest.mark.parametrize('dynamo', [False, True])
@pytest.mark.parametrize('case', ['pvt', 'swin'])
def test_onnx_export_runs_in_onnxruntime(device, tmp_path, case, dynamo):
    """Both exporters (TorchScript: the one mmdeploy uses; dynamo), ONNX
    Runtime within 1e-4 relative of PyTorch."""
    pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    takes_dynamo = 'dynamo' in inspect.signature(torch.onnx.export).parameters
    if dynamo:
        pytest.importorskip('onnxscript')
        if not takes_dynamo:
            pytest.skip(f'torch {torch.__version__}: torch.onnx.export has '
                        'no dynamo=True (torch >= 2.5)')
    model, x = build(case, device)
    with torch.no_grad():
        ref = model(x)
    path = str(tmp_path / f'{case}.onnx')
    names = [f'out{i}' for i in range(len(ref))]
    kwargs = dict(dynamo=True) if dynamo else dict(opset_version=17)
    if takes_dynamo and not dynamo:
        kwargs['dynamo'] = False  # the TorchScript exporter
    with torch.no_grad():
        torch.onnx.export(model, (x, ), path, input_names=['x'],
                          output_names=names, **kwargs)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    outs = session.run(names, {'x': x.cpu().numpy()})
    for a, b in zip(outs, ref):
        assert a.shape == tuple(b.shape)
        assert rel(torch.from_numpy(a), b.cpu()) < 1e-4


@old_dynamo
@pytest.mark.slow
@pytest.mark.parametrize('case', ['pvt', 'swin'])
def test_torch_compile_matches_eager(device, case):
    """Inductor: the same outputs in eval, and the same loss and gradients
    for a training step (no stochastic depth: deterministic)."""
    model, x = build(case, device)
    # fresh Dynamo caches, static shapes: a frame compiled by an earlier
    # test at another size would otherwise be recompiled with dynamic
    # shapes here (sympy then takes tens of minutes on the window padding)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='inductor', dynamic=False)
    with torch.no_grad():
        for a, b in zip(compiled(x), model(x)):
            assert rel(a, b) < 1e-4
    grads = []
    for m in (model, compiled):
        model.zero_grad()
        model.train()
        loss = sum((o * o).mean() for o in m(x))
        loss.backward()
        grads.append([loss.detach()] + [
            p.grad.clone() for p in model.parameters()])
    assert rel(grads[0][0], grads[1][0]) < 1e-5  # the loss
    scale = max(g.abs().max() for g in grads[0][1:])
    for a, b in zip(grads[0][1:], grads[1][1:]):
        assert (a - b).abs().max() < 1e-4 * scale


@pytest.mark.parametrize('case', ['pvt', 'swin'])
def test_dynamo_capture_matches_eager(device, case):
    """torch.compile's graph capture (Dynamo, the 'eager' backend: no code
    generation) on every supported torch, 2.1 included: the reference core
    runs in the graph and the outputs equal the eager model's."""
    model, x = build(case, device)
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            ref = model(x)
            out = torch.compile(model, backend='eager', dynamic=False)(x)
    finally:  # no compiled frames left for later tests
        torch._dynamo.reset()
    for a, b in zip(out, ref):
        assert rel(a, b) < 1e-5
