"""Pola-PVT / Pola-Swin on the test device: exactness to the released
code, any input size, the mmdet backbone test pattern (shapes,
frozen_stages, with_cp, bad arguments), hooks, precision, stochastic depth
and initialisation."""
import functools
import os.path as osp

import pytest
import torch
import torch.nn as nn

import mmpola  # noqa: F401  (registers the backbones)
import mmpola.ops as ops
from mmpola import PolaPVT, PolaSwin
from mmpola.checkpoint import convert_released

DATA = osp.join(osp.dirname(__file__), 'data')

# Small archs keep the CPU tests fast; the presets are covered below.
TINY_PVT = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2])
TINY_SWIN = dict(embed_dims=16, depths=[1, 2, 2, 2], num_heads=[1, 2, 2, 4])
FAMILIES = [(PolaPVT, TINY_PVT), (PolaSwin, TINY_SWIN)]


def load_fixture(family):
    return torch.load(osp.join(DATA, f'pola_{family}_reference.pt'),
                      weights_only=True)


def fixture_arch(fixture):
    a = fixture['arch']
    if fixture['family'] == 'pvt':
        return PolaPVT, dict(arch={k: a[k] for k in (
            'embed_dims', 'depths', 'num_heads', 'mlp_ratios')})
    return PolaSwin, dict(
        arch=dict(embed_dims=a['embed_dim'], depths=a['depths'],
                  num_heads=a['num_heads']),
        pola_window_size=a['window_size'])


def fixture_backbone(fixture, device, **kwargs):
    """The backbone matching a fixture, raw stage outputs (no out norms),
    on ``device``."""
    cls, args = fixture_arch(fixture)
    model = cls(out_norms=False, **args, **kwargs)
    state = {k: v.float() for k, v in fixture['state_dict'].items()}
    backbone, _, _ = convert_released(state, fixture['family'])
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    assert not missing and not unexpected  # Swin's final norm: dropped
    return model.eval().to(device)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize('impl', sorted(ops.IMPLEMENTATIONS))
@pytest.mark.parametrize('family', ['pvt', 'swin'])
def test_stage_outputs_match_released_code(device, family, impl):
    fixture = load_fixture(family)
    model = fixture_backbone(fixture, device)
    with torch.no_grad(), ops.pola_impl(impl):
        outs = model(fixture['input'].to(device))
    assert len(outs) == 4
    for out, ref in zip(outs, fixture['stage_outputs']):
        assert out.shape == ref.shape
        assert rel_err(out.cpu(), ref) < 1e-5


@pytest.mark.parametrize('family', ['pvt', 'swin'])
def test_released_state_dict_loads_through_load_state_dict(device, family):
    """A released state dict (released keys, Swin merging weights in the
    released order) converts on its way into ``load_state_dict``, strict
    (nothing missing, nothing unexpected once converted)."""
    fixture = load_fixture(family)
    cls, args = fixture_arch(fixture)
    model = cls(out_norms=False, **args).eval().to(device)
    model.load_state_dict(
        {k: v.float() for k, v in fixture['state_dict'].items()})
    with torch.no_grad():
        outs = model(fixture['input'].to(device))
    for out, ref in zip(outs, fixture['stage_outputs']):
        assert rel_err(out.cpu(), ref) < 1e-5


@pytest.mark.parametrize('family', ['pvt', 'swin'])
def test_pretrained_in_an_init_cfg_list(device, tmp_path, family):
    """init_cfg as a list with Pretrained: the released file is loaded
    (and overrides the other initialisers)."""
    fixture = load_fixture(family)
    path = tmp_path / 'released.pth'
    torch.save({'model': {k: v.float() for k, v in
                          fixture['state_dict'].items()}}, path)
    cls, args = fixture_arch(fixture)
    model = cls(out_norms=False, **args, init_cfg=[
        dict(type='Kaiming', layer='Conv2d'),
        dict(type='Pretrained', checkpoint=str(path))])
    model.init_weights()
    with torch.no_grad():
        outs = model.eval().to(device)(fixture['input'].to(device))
    for out, ref in zip(outs, fixture['stage_outputs']):
        assert rel_err(out.cpu(), ref) < 1e-5


def test_global_and_window_mode_agree_on_the_trained_grid(device):
    """At the trained size both modes are the released model."""
    fixture = load_fixture('swin')
    glob = fixture_backbone(fixture, device, pola_attn_mode='global')
    win = fixture_backbone(fixture, device, pola_attn_mode='window')
    x = fixture['input'].to(device)
    with torch.no_grad():
        for a, b in zip(glob(x), win(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize('family', ['pvt', 'swin'])
def test_bf16_autocast_stays_close_and_finite(device, family):
    fixture = load_fixture(family)
    model = fixture_backbone(fixture, device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        outs = model(fixture['input'].to(device))
    for out, ref in zip(outs, fixture['stage_outputs']):
        assert torch.isfinite(out).all()
        assert rel_err(out.float().cpu(), ref) < 0.1


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_low_precision_model_inference_and_training(device, cls, arch,
                                                    dtype):
    """A ``.half()`` / bf16 model (window mode, padding, shifts) is finite
    in inference and in a training step; the Pola core computes in float32
    (its powers overflow float16)."""
    try:  # torch < 2.2 has no float16 convolution on the CPU
        torch.nn.functional.conv2d(
            torch.ones(1, 1, 2, 2, dtype=dtype, device=device),
            torch.ones(1, 1, 1, 1, dtype=dtype, device=device))
    except RuntimeError as e:
        pytest.skip(f'torch {torch.__version__} on the CPU: {e}')
    torch.manual_seed(0)
    kwargs = dict(pola_attn_mode='window', pretrain_img_size=64) \
        if cls is PolaSwin else {}
    model = cls(arch=arch, **kwargs)
    model.init_weights()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, 'scale') and isinstance(m.scale, nn.Parameter):
                m.scale.fill_(-4.)  # softplus(-4) = 0.018: q, k grow 55x
    model = model.to(device, dtype)
    x = torch.randn(2, 3, 90, 70).to(device, dtype)
    with torch.no_grad():
        assert all(torch.isfinite(o).all() for o in model.eval()(x))
    model.train()
    loss = sum(o.float().mean() for o in model(x))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_finite_gradients_with_flush_denormal(device, cls, arch):
    """A from-scratch training step (window mode for Swin) with exact zeros
    in the input and, on the CPU, denormals flushed: no NaN gradient (the
    |x| floor is a normal float32)."""
    torch.manual_seed(0)
    kwargs = dict(pola_attn_mode='window', pretrain_img_size=64) \
        if cls is PolaSwin else {}
    model = cls(arch=arch, **kwargs)
    model.init_weights()
    model.train().to(device)
    x = torch.relu(torch.randn(2, 3, 64, 80)).to(device)  # exact zeros
    if device.type == 'cpu' and not torch.set_flush_denormal(True):
        pytest.skip('this CPU cannot flush denormals')
    try:
        sum(o.mean() for o in model(x)).backward()
    finally:
        torch.set_flush_denormal(False)
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize('size', [(97, 131), (513, 517), (64, 64)])
@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_any_input_size(device, cls, arch, size):
    model = cls(arch=arch).eval().to(device)
    with torch.no_grad():
        outs = model(torch.rand(1, 3, *size, device=device))
    h, w = size
    for i, out in enumerate(outs):
        stride = 4 * 2**i
        assert out.shape[-2:] == (-(-h // stride), -(-w // stride)), i
        assert out.is_contiguous()  # plain NCHW for necks and heads
        assert torch.isfinite(out).all()


def test_pvt_patch_embeddings_take_channels_last_maps(device):
    """Stages 2-4 of Pola-PVT embed the previous tokens as a channels-last
    view (no copy), B == 1 included, and the convolution keeps that
    layout."""
    model = PolaPVT(arch=TINY_PVT).eval().to(device)
    seen = []
    for i in (2, 3, 4):
        getattr(model, f'patch_embed{i}').projection.register_forward_hook(
            lambda m, args, out: seen.append((args[0], out)))
    for B in (1, 2):
        seen.clear()
        with torch.no_grad():
            model(torch.rand(B, 3, 64, 96, device=device))
        assert len(seen) == 3
        for inp, out in seen:
            assert inp.is_contiguous(memory_format=torch.channels_last)
            assert out.is_contiguous(memory_format=torch.channels_last)


def test_detection_size_and_window_mode(device):
    model = PolaSwin(arch=TINY_SWIN, pola_attn_mode='window',
                     pretrain_img_size=64).eval()  # Pola windows 16 and 8
    with torch.no_grad():
        outs = model.to(device)(torch.rand(1, 3, 200, 299, device=device))
    assert [o.shape[-2:] for o in outs] == [(50, 75), (25, 38), (13, 19),
                                            (7, 10)]


MODES = [('eval', False), ('eval', True), ('train', True), ('train', False)]


@pytest.mark.parametrize('training, grad', MODES)
@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_hooks_fire_everywhere_and_held_tensors_stay_intact(
        device, cls, arch, training, grad):
    """Every submodule's forward hook fires in every mode (also a global
    hook), and every input and output a hook keeps is unchanged after the
    forward (nothing is written in place)."""
    torch.manual_seed(0)
    kwargs = dict(pola_attn_mode='window', pretrain_img_size=64) \
        if cls is PolaSwin else {}
    model = cls(arch=arch, drop_path_rate=0.3, **kwargs).to(device)
    model.train(training == 'train')
    fired, held = set(), []

    def keep(tensors):
        for t in tensors if isinstance(tensors, (tuple, list)) else [tensors]:
            if isinstance(t, torch.Tensor):
                held.append((t, t.detach().clone()))

    def post_hook(m, args, out, name):
        fired.add(name)
        keep(out)

    for name, m in model.named_modules():
        m.register_forward_pre_hook(lambda m, args: keep(args))
        m.register_forward_hook(functools.partial(post_hook, name=name))
    seen_globally = set()
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, args, out: seen_globally.add(type(m).__name__))
    try:
        with torch.set_grad_enabled(grad):
            model(torch.randn(2, 3, 90, 70, device=device))
    finally:
        handle.remove()
    # (ModuleLists are containers, never called)
    assert fired == {name for name, m in model.named_modules()
                     if not isinstance(m, nn.ModuleList)}
    assert 'PolaAttention' in seen_globally and 'Linear' in seen_globally
    for t, copy in held:
        assert torch.equal(t.detach(), copy)


@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_stochastic_depth_at_every_map_size(device, cls, arch):
    """In training mode, with or without gradients, every drop-path layer
    (after the attention and after the FFN) drops whole samples or scales
    them, whatever the map size; in eval mode it is the identity."""
    from mmcv.cnn.bricks import DropPath
    torch.manual_seed(0)
    model = cls(arch=arch, drop_path_rate=0.5).to(device)
    calls = []

    def check(m, args, out):
        x, keep = args[0], 1 - m.drop_prob
        if not m.training:
            assert torch.equal(out, x)
            calls.append(False)
            return
        per_sample = (out * keep - x).flatten(1).abs().amax(1)
        dropped = out.flatten(1).abs().amax(1) == 0
        assert bool(((per_sample <= 1e-5 * x.abs().max()) | dropped).all())
        calls.append(bool(dropped.any()))

    paths = [m for m in model.modules()
             if isinstance(m, DropPath) and m.drop_prob > 0]
    assert len(paths) >= 2 * sum(arch['depths']) - 2
    for m in paths:
        m.register_forward_hook(check)
    for size in ((32, 32), (160, 224)):
        for grad in (False, True):
            calls.clear()
            with torch.set_grad_enabled(grad):
                model.train()(torch.randn(4, 3, *size, device=device))
            assert len(calls) == len(paths) and any(calls)
    calls.clear()
    with torch.no_grad():
        model.eval()(torch.randn(4, 3, 32, 32, device=device))
    assert len(calls) == len(paths) and not any(calls)


@pytest.mark.parametrize('masked', [False, True])
def test_window_msa_equals_mmpretrain(device, masked):
    """Same parameters, outputs and gradients (input and every parameter)
    as mmpretrain's WindowMSA (two images of three windows)."""
    from mmpretrain.models.utils import WindowMSA as Reference
    from mmpola.models.pola_swin import WindowMSA
    torch.manual_seed(masked)
    ref, ours = Reference(32, (4, 4), 4), WindowMSA(32, 4, 4)
    with torch.no_grad():
        ref.relative_position_bias_table.normal_()
    ours.load_state_dict(ref.state_dict(), strict=False)
    assert torch.equal(ours.relative_position_index,
                       ref.relative_position_index)
    ref, ours = ref.to(device), ours.to(device)
    x = torch.randn(6, 16, 32, device=device)
    mask = ((torch.rand(3, 16, 16) > .5) * -100.).to(device) \
        if masked else None
    results = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        out = m(xi, mask)
        out.pow(2).sum().backward()
        results.append([out, xi.grad] + [p.grad for _, p in sorted(
            m.named_parameters())])
    for a, b in zip(*results):
        assert rel_err(b, a) < 1e-5


def test_softmax_window_padding_is_masked():
    """A map smaller than the window is padded; real tokens must attend
    only to real tokens, with the biases of their true offsets."""
    from mmpola.models.pola_swin import PolaSwinBlock
    torch.manual_seed(0)
    block = PolaSwinBlock(16, 2, 'softmax', window_size=7, shift=True).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()
    H, W = 5, 6
    x = torch.randn(2, H * W, 16)
    with torch.no_grad():
        out = block._attention(x, (H, W))
        # reference: plain attention over the 30 real tokens
        attn = block.attn
        B, N, C = x.shape
        qkv = attn.qkv(x).reshape(B, N, 3, 2, C // 2).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * attn.scale, qkv[1], qkv[2]
        pos = torch.arange(49).view(7, 7)[:H, :W].flatten()
        index = attn.relative_position_index[pos][:, pos]
        bias = attn.relative_position_bias_table[index].permute(2, 0, 1)
        ref = ((q @ k.transpose(-2, -1) + bias).softmax(-1) @ v)
        ref = attn.proj(ref.transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_frozen_stages(cls, arch):
    model = cls(arch=arch, frozen_stages=1)
    model.train()
    frozen = [model.patch_embed1, model.block1, model.norm0] \
        if cls is PolaPVT else [model.patch_embed, model.layers[0],
                                model.norm0]
    for m in frozen:
        assert not m.training
        assert all(not p.requires_grad for p in m.parameters())
    later = model.block2 if cls is PolaPVT else model.layers[1]
    assert later.training
    assert all(p.requires_grad for p in later.parameters())


@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_with_cp_matches_plain_forward_and_backward(device, cls, arch):
    torch.manual_seed(0)
    plain = cls(arch=arch, drop_path_rate=0.)
    ckpt = cls(arch=arch, drop_path_rate=0., with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    plain, ckpt = plain.to(device), ckpt.to(device)
    x = torch.rand(2, 3, 67, 75, device=device)
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        sum(o.sum() for o in model(x)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------ initialisation


FROM_SCRATCH = ('pos_embed', 'relative_position_bias_table')


@pytest.mark.parametrize('init_cfg', [
    None, dict(type='TruncNormal', layer='Linear', std=.05),
    [dict(type='Kaiming', layer='Conv2d'),
     dict(type='TruncNormal', layer='Linear', std=.05)]])
@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_init_cfg_forms(cls, arch, init_cfg):
    """None, a dict or a list of dicts: the initialisers run and the
    parameters a from-scratch model needs are initialised whatever the
    form (position embeddings and bias tables not left at zero)."""
    torch.manual_seed(0)
    model = cls(arch=arch, init_cfg=init_cfg)
    model.init_weights()
    needed = [(n, p) for n, p in model.named_parameters()
              if n.rsplit('.', 1)[-1].rstrip('1234') in FROM_SCRATCH]
    assert needed
    for name, p in needed:
        assert p.std() > 0.005, name
    w = next(m for m in model.modules() if isinstance(m, nn.Linear))
    std = .02 if init_cfg is None else .05  # the init_cfg's initialiser
    assert std * 0.8 < w.weight.std() < std * 1.2


@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_init_cfg_of_another_type_is_refused(cls, arch):
    for bad in (3, 'Pretrained', [dict(type='Kaiming'), 'x']):
        with pytest.raises(TypeError, match='init_cfg'):
            cls(arch=arch, init_cfg=bad)


# -------------------------------------------------------- bad arguments


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(arch='huge'), ValueError, 'not a preset'),
    (dict(arch=3), TypeError, 'arch must be'),
    (dict(arch=dict(embed_dims=[16] * 4, depths=[1] * 4)), ValueError,
     'missing'),
    (dict(arch=dict(TINY_PVT, width=3)), ValueError, 'unknown'),
    (dict(arch=dict(TINY_PVT, depths=[1, 1, 1])), ValueError,
     'one entry per stage'),
    (dict(out_indices=(4, )), ValueError, 'out of range'),
    (dict(out_indices=(1, 1)), ValueError, 'twice'),
    (dict(out_indices=(3, -1)), ValueError, 'twice'),
    (dict(out_indices='0'), TypeError, 'out_indices'),
    (dict(frozen_stages=5), ValueError, 'frozen_stages'),
    (dict(frozen_stages=-2), ValueError, 'frozen_stages'),
    (dict(out_norms=1), TypeError, 'out_norms'),
    (dict(arch=dict(TINY_PVT, num_heads=[16, 2, 2, 4])), ValueError,
     'even head dim'),
])
def test_bad_pvt_arguments(kwargs, error, match):
    kwargs.setdefault('arch', TINY_PVT)
    with pytest.raises(error, match=match):
        PolaPVT(**kwargs)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(arch='huge'), ValueError, 'not a preset'),
    (dict(arch=dict(embed_dims=32)), ValueError, 'missing'),
    (dict(arch=dict(TINY_SWIN, num_heads=[1, 2, 2])), ValueError,
     'one entry per stage'),
    (dict(window_size=0), ValueError, 'window_size'),
    (dict(pola_window_size=0), ValueError, 'pola_window_size'),
    (dict(pola_attn_mode='local'), ValueError, 'pola_attn_mode'),
    (dict(attn_types=('pola', 'pola', 'softmax')), ValueError, 'attn_types'),
    (dict(attn_types=('pola', 'linear', 'softmax', 'softmax')), ValueError,
     'attn_types'),
    (dict(out_indices=(-5, )), ValueError, 'out of range'),
    (dict(frozen_stages=7), ValueError, 'frozen_stages'),
    (dict(out_norms='yes'), TypeError, 'out_norms'),
    (dict(arch=dict(TINY_SWIN, num_heads=[3, 2, 2, 4])), ValueError,
     'divide embed_dims'),
])
def test_bad_swin_arguments(kwargs, error, match):
    kwargs.setdefault('arch', TINY_SWIN)
    with pytest.raises(error, match=match):
        PolaSwin(**kwargs)


@pytest.mark.parametrize('cls, arch', FAMILIES)
def test_bad_inputs(cls, arch):
    """Unbatched images, wrong channels and an empty batch raise
    ValueError (an empty batch is an error, not empty outputs)."""
    model = cls(arch=arch).eval()
    for x, match in ((torch.rand(3, 32, 32), 'batched'),
                     (torch.rand(1, 4, 32, 32), 'in_channels=3'),
                     (torch.rand(0, 3, 32, 32), 'empty batch')):
        with pytest.raises(ValueError, match=match):
            model(x)


@pytest.mark.parametrize('registry', ['mmdet', 'mmseg', 'mmpretrain'])
def test_build_from_each_package_registry(registry):
    MODELS = pytest.importorskip(f'{registry}.registry').MODELS
    for name, arch in (('PolaPVT', TINY_PVT), ('PolaSwin', TINY_SWIN)):
        model = MODELS.build(dict(type=name, arch=arch))
        assert type(model).__name__ == name
