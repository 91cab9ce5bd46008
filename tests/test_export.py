"""Both backbones through torch.compile, torch.export and ONNX (both
exporters, run with ONNX Runtime), on tiny archs at fixed sizes."""
import pytest
import torch

import mmpola  # noqa: F401
from mmpola import PolaPVT, PolaSwin

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


def build(case, drop_path_rate=0.):
    cls, kwargs, hw = CASES[case]
    torch.manual_seed(0)
    model = cls(drop_path_rate=drop_path_rate, **kwargs)
    model.init_weights()
    with torch.no_grad():  # non-trivial Pola parameters
        for name, p in model.named_parameters():
            if name.endswith(('power', 'scale', 'positional_encoding')):
                p.normal_(0, 0.5)
    return model.eval(), torch.rand(2, 3, *hw)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize('grad', [False, True])
@pytest.mark.parametrize('case', ['pvt', 'swin'])
def test_torch_export(case, grad):
    model, x = build(case)
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
def test_onnx_export_runs_in_onnxruntime(tmp_path, case, dynamo):
    """Both exporters (TorchScript: the one mmdeploy uses; dynamo), ONNX
    Runtime within 1e-4 relative of PyTorch."""
    pytest.importorskip('onnx')
    ort = pytest.importorskip('onnxruntime')
    if dynamo:
        pytest.importorskip('onnxscript')
    model, x = build(case)
    with torch.no_grad():
        ref = model(x)
    path = str(tmp_path / f'{case}.onnx')
    names = [f'out{i}' for i in range(len(ref))]
    kwargs = dict(dynamo=True) if dynamo else dict(dynamo=False,
                                                   opset_version=17)
    with torch.no_grad():
        torch.onnx.export(model, (x, ), path, input_names=['x'],
                          output_names=names, **kwargs)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    outs = session.run(names, {'x': x.numpy()})
    for a, b in zip(outs, ref):
        assert a.shape == tuple(b.shape)
        assert rel(torch.from_numpy(a), b) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize('case', ['pvt', 'swin'])
def test_torch_compile_matches_eager(case):
    """Inductor: the same outputs in eval, and the same loss and gradients
    for a training step (no stochastic depth: deterministic)."""
    model, x = build(case)
    compiled = torch.compile(model, backend='inductor')
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
