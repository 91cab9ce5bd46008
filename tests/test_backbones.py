"""Pola-PVT / Pola-Swin: exactness to the released code, any input size,
the mmdet backbone test pattern (shapes, frozen_stages, with_cp)."""
import os.path as osp

import pytest
import torch

import mmpola  # noqa: F401  (registers the backbones)
from mmpola import PolaPVT, PolaSwin
from mmpola.checkpoint import convert_released

DATA = osp.join(osp.dirname(__file__), 'data')

# Small archs keep the CPU tests fast; the presets are covered below.
TINY_PVT = dict(embed_dims=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                num_heads=[1, 2, 2, 4], mlp_ratios=[2, 2, 2, 2])
TINY_SWIN = dict(embed_dims=16, depths=[1, 2, 2, 2], num_heads=[1, 2, 2, 4])


def load_fixture(family):
    return torch.load(osp.join(DATA, f'pola_{family}_reference.pt'),
                      weights_only=True)


def fixture_backbone(fixture, **kwargs):
    """The backbone matching a fixture, raw stage outputs (no out norms)."""
    a = fixture['arch']
    if fixture['family'] == 'pvt':
        arch = {k: a[k] for k in ('embed_dims', 'depths', 'num_heads',
                                  'mlp_ratios')}
        model = PolaPVT(arch=arch, out_norms=False, **kwargs)
    else:
        arch = dict(embed_dims=a['embed_dim'], depths=a['depths'],
                    num_heads=a['num_heads'])
        model = PolaSwin(arch=arch, out_norms=False,
                         pola_window_size=a['window_size'], **kwargs)
    state = {k: v.float() for k, v in fixture['state_dict'].items()}
    backbone, _, _ = convert_released(state, fixture['family'])
    missing, unexpected = model.load_state_dict(backbone, strict=False)
    assert not missing
    assert all(k.startswith('norm3.') for k in unexpected)
    return model.eval()


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def random_block_reference(block, B, hw, C):
    """Random weights (eval mode), random tokens x (B, H*W, C) and the
    block's output on them with gradients on (the autograd path)."""
    with torch.no_grad():
        for prm in block.parameters():
            prm.normal_(0, 0.3)
    block.eval()
    x = torch.randn(B, hw[0] * hw[1], C)
    with torch.enable_grad():
        return x, block(x, hw)


@pytest.mark.parametrize('family', ['pvt', 'swin'])
def test_stage_outputs_match_released_code(family):
    fixture = load_fixture(family)
    model = fixture_backbone(fixture)
    with torch.no_grad():
        outs = model(fixture['input'])
    assert len(outs) == 4
    for out, ref in zip(outs, fixture['stage_outputs']):
        assert out.shape == ref.shape
        assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize('family', ['pvt', 'swin'])
def test_small_token_blocks_match_released_code(monkeypatch, family):
    """The CPU paths that work on token blocks (the attention core always,
    Pola blocks in inference row by row, the FFN of the others in inference
    on large maps) give the released numbers with many small, uneven
    blocks."""
    import mmpola.models.pola_attention as pa
    from mmpola.models.backbone_utils import PreNormBlock
    monkeypatch.setattr(pa, 'CPU_BLOCK_ELEMENTS', 1)
    monkeypatch.setattr(pa.PolaAttention, 'CPU_ROW_BLOCK_ELEMENTS', 1)
    monkeypatch.setattr(PreNormBlock, 'CPU_FFN_WHOLE', 0)
    monkeypatch.setattr(PreNormBlock, 'CPU_FFN_TOKENS', 7)
    fixture = load_fixture(family)
    model = fixture_backbone(fixture)
    blocks = [m for m in model.modules() if isinstance(m, PreNormBlock)]
    calls = []
    tail = PreNormBlock._residual_ffn

    def counted_tail(self, x, a, ws=None):
        calls.append(ws is not None)
        return tail(self, x, a, ws)

    monkeypatch.setattr(PreNormBlock, '_residual_ffn', counted_tail)
    with torch.inference_mode():
        outs = model(fixture['input'])
    for out, ref in zip(outs, fixture['stage_outputs']):
        assert rel_err(out, ref) < 1e-5
    # every block ran its residual + FFN tail in row / band blocks, each
    # with the workspace FFN
    assert len(calls) > 2 * len(blocks) and all(calls)


@pytest.mark.parametrize('family, B, hw', [('pvt', 2, (11, 7)),
                                           ('swin', 1, (6, 13)),
                                           ('swin', 3, (5, 4))])
def test_row_block_inference_matches_autograd_path(monkeypatch, family, B,
                                                  hw):
    """CPU inference of a Pola block in blocks of rows (uneven last block,
    depthwise-conv halos) equals the path used when gradients are on."""
    from mmpola.models.pola_attention import PolaAttention
    from mmpola.models.pola_pvt import PolaPVTBlock
    from mmpola.models.pola_swin import PolaSwinBlock
    torch.manual_seed(B)
    C, heads = 64, 2
    if family == 'pvt':
        block = PolaPVTBlock(C, heads, 8, (4, 4))
    else:
        block = PolaSwinBlock(C, heads, 'pola', 56, shift=True,
                              pretrain_hw=(4, 4))
    x, ref = random_block_reference(block, B, hw, C)
    # 2 rows per block
    monkeypatch.setattr(PolaAttention, 'CPU_ROW_BLOCK_ELEMENTS',
                        2 * 4 * B * C * hw[1])
    used = []
    orig = PolaAttention.forward_in_row_blocks
    monkeypatch.setattr(PolaAttention, 'forward_in_row_blocks',
                        lambda *a, **k: used.append(1) or orig(*a, **k))
    with torch.inference_mode():
        out = block(x, hw)
        # written over its input (as run_blocks does within a stage)
        x_over = x.clone()
        out_over = block(x_over, hw, inplace=True)
    assert len(used) == 2
    assert rel_err(out, ref) < 1e-5
    assert out_over.data_ptr() == x_over.data_ptr()
    assert torch.equal(out_over, out)
    block.train()
    with torch.no_grad():  # training mode: drop path etc., not row blocks
        block(x, hw)
    assert len(used) == 2


@pytest.mark.parametrize('attn_type, B, hw, shift', [
    ('softmax', 1, (10, 13), True), ('softmax', 2, (9, 16), True),
    ('softmax', 2, (8, 12), False), ('pola', 2, (10, 13), True),
    ('pola', 1, (9, 16), False)])
def test_window_band_inference_matches_autograd_path(monkeypatch, attn_type,
                                                     B, hw, shift):
    """CPU inference of window blocks in bands of window rows (shift across
    the band edges, padding, uneven last band) equals the path used when
    gradients are on, also when written over its input."""
    import mmpola.models.windows as windows
    from mmpola.models.pola_swin import PolaSwinBlock
    torch.manual_seed(B)
    C, heads, ws = 32, 2, 4
    block = PolaSwinBlock(C, heads, attn_type, ws, shift=shift,
                          pretrain_hw=(4, 4), pola_attn_mode='window')
    x, ref = random_block_reference(block, B, hw, C)
    rows_per_band = 2  # window rows; 3 bands, the last one shorter
    monkeypatch.setattr(PolaSwinBlock, 'CPU_BAND_ELEMENTS',
                        rows_per_band * 4 * B * C * ws * 16)
    bands = []
    orig = windows.window_partition
    monkeypatch.setattr(windows, 'window_partition',
                        lambda t, s: t.shape[-1] == C and bands.append(
                            t.shape[1]) or orig(t, s))
    with torch.inference_mode():
        out = block(x, hw)
        x_over = x.clone()
        out_over = block(x_over, hw, inplace=True)
    Hp = -(-hw[0] // ws) * ws
    rows = [min(8, Hp - r) for r in range(0, Hp, 8)]  # per band
    assert bands == rows * 2 and len(rows) >= 2 - (Hp == 8)
    assert rel_err(out, ref) < 1e-5
    assert out_over.data_ptr() == x_over.data_ptr()
    assert torch.equal(out_over, out)


def test_inference_ffn_in_token_blocks(monkeypatch):
    """Inference outside the row-block path (here: a hook on the attention)
    runs a large FFN in even parts of its tokens, with the same numbers."""
    import mmpola.models.backbone_utils as bu
    from mmpola.models.pola_pvt import PolaPVTBlock
    torch.manual_seed(0)
    B, hw, C = 2, (5, 7), 32
    block = PolaPVTBlock(C, 1, 4, (4, 4))
    x, ref = random_block_reference(block, B, hw, C)
    block.attn.register_forward_hook(lambda *_: None)  # no row blocks
    monkeypatch.setattr(bu.PreNormBlock, 'CPU_FFN_WHOLE', 0)
    monkeypatch.setattr(bu.PreNormBlock, 'CPU_FFN_TOKENS', 8)
    products, module_calls = [], []
    linear_into = bu.linear_into
    monkeypatch.setattr(bu, 'linear_into', lambda out, *a: products.append(
        out.shape[0]) or linear_into(out, *a))
    block.ffn.register_forward_hook(lambda *_: module_calls.append(1))
    with torch.inference_mode():
        out = block(x, hw)
    # 70 rows in 8 parts of 9 (the last of 7), two products each
    assert products == [9, 9] * 7 + [7, 7] and not module_calls
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize('plain, part_tokens', [(True, 1024), (True, 7),
                                                 (False, 1024)])
def test_workspace_ffn_tail_equals_module(monkeypatch, plain, part_tokens):
    """The inference tail with a workspace (hidden map and result in its
    buffers, rows in parts: here one, or 60 rows in 8) gives the FFN
    module's numbers exactly; an FFN that is not plain (here: dropout, so
    no workspace path) runs the module."""
    from mmpola.models.backbone_utils import PreNormBlock
    from mmpola.models.pola_attention import Workspace
    from mmpola.models.pola_pvt import PolaPVTBlock
    monkeypatch.setattr(PreNormBlock, 'CPU_FFN_TOKENS', part_tokens)
    torch.manual_seed(0)
    block = PolaPVTBlock(16, 2, 4, (4, 4), drop_rate=0. if plain else .1)
    block.eval()
    x, a = torch.randn(2, 30, 16), torch.randn(2, 30, 16)
    calls = []
    block.ffn.register_forward_hook(lambda *_: calls.append(1))
    ws = Workspace(x)
    with torch.no_grad():
        ref = block._residual_ffn(x, a.clone())
        outs = [block._residual_ffn(x, a.clone(), ws) for _ in range(2)]
    assert len(calls) == (1 if plain else 3)
    for out in outs:
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    if plain:  # the result lives in the workspace
        assert outs[0].data_ptr() == outs[1].data_ptr()


@pytest.mark.parametrize('hooked', [False, True])
def test_blocks_overwrite_only_unobserved_inputs(hooked):
    """Within a stage, CPU inference writes a block's output over its
    input (the previous block's output, or the stage input when the caller
    owns it) unless a hook may see it."""
    from mmpola.models.backbone_utils import run_blocks
    from mmpola.models.pola_pvt import PolaPVTBlock
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(
        [PolaPVTBlock(16, 2, 2, (4, 4)) for _ in range(3)]).eval()
    seen = []
    if hooked:
        blocks[0].register_forward_hook(
            lambda m, a, out: seen.append((out, out.clone())))
    x = torch.randn(1, 30, 16)
    with torch.no_grad():
        ref = x.clone()
        for block in blocks:
            ref = block(ref, (5, 6))
        x_in = x.clone()
        out = run_blocks(blocks, x_in, (5, 6))
        x_own = x.clone()
        out_own = run_blocks(blocks, x_own, (5, 6), own_input=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(out_own, ref, rtol=0, atol=0)
    assert torch.equal(x_in, x)  # the stage input is kept by default
    # an owned one is overwritten, unless the first block is hooked
    assert torch.equal(x_own, x) == hooked
    assert (out_own.data_ptr() == x_own.data_ptr()) == (not hooked)
    if hooked:
        for held, copy in seen:
            assert torch.equal(held, copy)
        assert out.data_ptr() != seen[-1][0].data_ptr()


def test_stages_share_whole_map_buffers_and_keep_observed_inputs(
        monkeypatch):
    """The blocks of a stage share one workspace for whole-map buffers;
    a stage overwrites its input only when no hook can hold it."""
    from mmpola.models.pola_attention import PolaAttention
    torch.manual_seed(0)
    model = PolaSwin(arch=dict(embed_dims=16, depths=[2, 2, 2, 2],
                               num_heads=[1, 2, 4, 8]),
                     pretrain_img_size=64, pola_window_size=16).eval()
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        ref = model(x)
    row_blocks = PolaAttention.forward_in_row_blocks
    held = []
    model.patch_embed.register_forward_hook(
        lambda m, a, out: held.append((out[0], out[0].clone())))
    model.layers[0].register_forward_hook(
        lambda m, a, out: held.append((out[0], out[0].clone())))
    calls = []

    def recording(self, *args, maps=None, **kwargs):
        calls.append(maps)
        return row_blocks(self, *args, maps=maps, **kwargs)

    monkeypatch.setattr(PolaAttention, 'forward_in_row_blocks', recording)
    with torch.no_grad():
        out = model(x)
    for a, b in zip(out, ref):  # (the hooked patch embedding is mmcv's)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for tensor, copy in held:  # hooked stage inputs not overwritten
        assert torch.equal(tensor, copy)
    # two Pola stages of two blocks: one workspace per stage
    assert len(calls) == 4 and calls[0] is calls[1] is not calls[2]
    assert calls[2] is calls[3] and 'v' in calls[0].buffers


@pytest.mark.parametrize('hw', [(10, 14), (7, 9), (1, 3)])
def test_token_patch_merging_matches_mmcv(hw):
    """The token-layout PatchMerging gives mmcv's outputs and gradients
    (odd sizes: corner padding) with the same parameters."""
    from mmcv.cnn.bricks.transformer import PatchMerging
    from mmpola.models.pola_swin import TokenPatchMerging
    torch.manual_seed(0)
    ref, fast = PatchMerging(8, 16), TokenPatchMerging(8, 16)
    with torch.no_grad():
        for prm in ref.parameters():
            prm.normal_()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, hw[0] * hw[1], 8, requires_grad=True)
    results = []
    for m in (ref, fast):
        y, out_hw = m(x, hw)
        grads = torch.autograd.grad((y * y).sum(), [x, *m.parameters()])
        results.append((y, out_hw, grads))
    (y0, hw0, g0), (y1, hw1, g1) = results
    assert hw0 == hw1
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('padding', ['corner', 'same'])
@pytest.mark.parametrize('layout', ['image', 'token_map'])
def test_channels_last_patch_embed_matches_mmcv(monkeypatch, padding,
                                                layout):
    """In CPU inference the channels-last PatchEmbed gives mmcv's tokens
    (odd sizes: padding) with the same parameters, from an image and from
    a token map passed as a channels-last view, without mmcv's forward;
    with gradients or a hook it is mmcv's forward."""
    from mmcv.cnn.bricks.transformer import PatchEmbed
    from mmpola.models.backbone_utils import ChannelsLastPatchEmbed
    torch.manual_seed(0)
    C, k = (3, 4) if layout == 'image' else (8, 2)
    kw = dict(in_channels=C, embed_dims=16, kernel_size=k, stride=k,
              padding=padding, norm_cfg=dict(type='LN'))
    ref, fast = PatchEmbed(**kw), ChannelsLastPatchEmbed(**kw)
    with torch.no_grad():
        for prm in ref.parameters():
            prm.normal_()
    fast.load_state_dict(ref.state_dict())
    if layout == 'image':
        x = torch.randn(2, C, 13, 18)
    else:
        x = torch.randn(2, 13 * 18, C).transpose(1, 2).unflatten(2, (13, 18))
    mmcv_calls = []
    mmcv_forward = PatchEmbed.forward

    def counted(self, x):
        mmcv_calls.append(self)
        return mmcv_forward(self, x)

    monkeypatch.setattr(PatchEmbed, 'forward', counted)
    with torch.no_grad():
        y0, hw0 = ref(x)
        y1, hw1 = fast(x)
    assert mmcv_calls == [ref]
    assert hw1 == hw0 and y1.is_contiguous()
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    y2, _ = fast(x)  # gradients on: mmcv's forward
    fast.register_forward_hook(lambda *args: None)
    with torch.no_grad():
        y3, _ = fast(x)
    assert mmcv_calls == [ref, fast, fast]
    assert torch.equal(y2.detach(), y0) and torch.equal(y3, y0)


@pytest.mark.parametrize('normed', [False, True])
def test_tokens_to_map_in_token_blocks(monkeypatch, normed):
    """CPU inference norms and transposes output maps in token blocks
    (uneven last block): the same numbers as the whole map at once; a hook
    on the norm gets the whole map."""
    import torch.nn as nn
    import mmpola.models.backbone_utils as bu
    monkeypatch.setattr(bu, 'CPU_MAP_BLOCK_ELEMENTS', 2 * 4 * 3)
    torch.manual_seed(0)
    tokens = torch.randn(2, 5 * 7, 4)
    norm = nn.LayerNorm(4) if normed else None
    if normed:
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
    ref = (norm(tokens) if normed else tokens).transpose(1, 2).reshape(
        2, 4, 5, 7)
    parts = []
    monkeypatch.setattr(torch.Tensor, 'transpose', lambda t, *dims: (
        parts.append(t.shape[1]), torch.transpose(t, *dims))[1])
    with torch.no_grad():
        out = bu.tokens_to_map(tokens, (5, 7), norm)
    assert out.is_contiguous() and torch.equal(out, ref.detach())
    assert parts == [3] * 11 + [2]
    if normed:
        seen = []
        norm.register_forward_pre_hook(
            lambda m, args: seen.append(args[0].shape[1]))
        with torch.no_grad():
            out = bu.tokens_to_map(tokens, (5, 7), norm)
        assert seen == [35] and torch.equal(out, ref.detach())


def test_inference_map_passes_in_token_blocks(monkeypatch):
    """CPU inference adds Pola-PVT's position embeddings in place by blocks
    of rows and norms the patch embeddings in place by token blocks: the
    same outputs as the whole-map passes (forced with a global hook), and
    the patch embedding's output is what receives the embedding."""
    import torch.nn as nn
    import mmpola.models.backbone_utils as bu
    monkeypatch.setattr(bu, 'CPU_MAP_BLOCK_ELEMENTS', 100)
    torch.manual_seed(0)
    model = PolaPVT(arch=dict(embed_dims=[8, 16, 24, 32],
                              depths=[1, 1, 1, 1], num_heads=[1, 2, 3, 4],
                              mlp_ratios=[2, 2, 2, 2]),
                    pretrain_img_size=32).eval()
    for prm in model.parameters():
        nn.init.normal_(prm, std=0.5)
    x = torch.randn(2, 3, 45, 61)
    embedded, added = [], []
    model.patch_embed2.register_forward_hook(
        lambda m, args, out: embedded.append(out[0].data_ptr()))
    add = bu.add_resized_grid_

    def counted(x, *args):
        added.append(x.data_ptr())
        return add(x, *args)

    monkeypatch.setattr(
        'mmpola.models.pola_pvt.add_resized_grid_', counted)
    with torch.no_grad():
        out = model(x)
    # the hooked embedding gets a fresh sum; the others in place
    assert len(added) == 3 and embedded[0] not in added
    handle = nn.modules.module.register_module_forward_hook(
        lambda *args: None)
    try:
        with torch.no_grad():
            ref = model(x)
    finally:
        handle.remove()
    assert len(added) == 3
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_training_ffn_keeps_one_hidden_map(monkeypatch):
    """The training FFN (both passes in uneven token blocks, GELU
    recomputed in backward) gives mmcv FFN's output and gradients and saves
    only one map of the hidden width."""
    from mmpola.models.backbone_utils import PreNormBlock
    from mmpola.models.pola_pvt import PolaPVTBlock
    monkeypatch.setattr(PreNormBlock, 'CPU_FFN_BLOCK', 7 * 128)
    torch.manual_seed(0)
    block = PolaPVTBlock(32, 1, 4, (4, 4)).train()
    x = torch.randn(2, 45, 32, requires_grad=True)
    grad_out = torch.randn(2, 45, 32)
    results = []
    for fast in (True, False):
        monkeypatch.setattr(PreNormBlock, '_ffn_saves_hidden_once',
                            lambda self, x, fast=fast: fast)
        block.zero_grad()
        x.grad = None
        saved = []

        def pack(t):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = block._norm_ffn(x)
        (out * grad_out).sum().backward()
        results.append([out.detach(), x.grad.clone()] + [
            p.grad.clone() for p in block.ffn.parameters()])
        results[-1].append(saved.count(2 * 45 * 128))  # hidden maps saved
    fast, ref = results
    for a, b in zip(fast[:-1], ref[:-1]):
        assert rel_err(a, b) < 1e-6
    assert fast[-1] == 1 and ref[-1] >= 2
    # frozen FFN (frozen_stages): the input gradient alone, the same
    monkeypatch.setattr(PreNormBlock, '_ffn_saves_hidden_once',
                        lambda self, x: True)
    block.ffn.requires_grad_(False)
    x.grad = None
    (block._norm_ffn(x) * grad_out).sum().backward()
    assert rel_err(x.grad, ref[1]) < 1e-6
    assert all(p.grad is None or torch.equal(p.grad, g) for p, g in zip(
        block.ffn.parameters(), ref[2:-1]))


@pytest.mark.parametrize('family', ['pvt', 'swin'])
def test_bf16_autocast_stays_close_and_finite(family):
    fixture = load_fixture(family)
    model = fixture_backbone(fixture)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(fixture['input'])
    for out, ref in zip(outs, fixture['stage_outputs']):
        assert torch.isfinite(out).all()
        assert rel_err(out.float(), ref) < 0.1


def test_large_activations_stay_finite_in_half_precision():
    """|q / softplus(scale)| of 50 raised to p ~ 5 overflows fp16 (and is
    far outside what bf16 represents precisely); the core runs in fp32."""
    attn = mmpola.PolaAttention(32, 1, (4, 4), fused_qkvg=True)
    with torch.no_grad():
        attn.power.fill_(10.)  # p -> 5
        attn.scale.fill_(-5.)  # softplus -> 0.0067: q, k grow 150x
    x = torch.randn(2, 16, 32) * 10
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = attn(x, (4, 4))
    assert torch.isfinite(out).all()
    # float16 storage of the same powers would overflow
    q = attn.qkvg(x).chunk(4, -1)[0] / torch.nn.functional.softplus(
        attn.scale)
    assert not torch.isfinite((q.abs().half()**5)).all()


@pytest.mark.parametrize('size', [(97, 131), (513, 517), (64, 64)])
@pytest.mark.parametrize('cls, arch', [(PolaPVT, TINY_PVT),
                                       (PolaSwin, TINY_SWIN)])
def test_any_input_size(cls, arch, size):
    model = cls(arch=arch).eval()
    with torch.no_grad():
        outs = model(torch.rand(1, 3, *size))
    h, w = size
    for i, out in enumerate(outs):
        stride = 4 * 2**i
        assert out.shape[-2:] == (-(-h // stride), -(-w // stride)), i
        assert out.is_contiguous()  # plain NCHW for necks and heads
        assert torch.isfinite(out).all()


def test_detection_size_and_window_mode():
    model = PolaSwin(arch=TINY_SWIN, pola_attn_mode='window',
                     pretrain_img_size=64).eval()  # Pola windows 16 and 8
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 200, 299))
    assert [o.shape[-2:] for o in outs] == [(50, 75), (25, 38), (13, 19),
                                            (7, 10)]


def test_global_and_window_mode_agree_on_the_trained_grid():
    """At the trained size both modes are the released model."""
    fixture = load_fixture('swin')
    glob = fixture_backbone(fixture, pola_attn_mode='global')
    win = fixture_backbone(fixture, pola_attn_mode='window')
    with torch.no_grad():
        for a, b in zip(glob(fixture['input']), win(fixture['input'])):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize('masked', [False, True])
def test_split_qkv_window_msa_equals_mmpretrain(masked):
    """Same outputs and gradients (input and every parameter) as
    mmpretrain's WindowMSA with the same weights, and the same outputs
    without gradients (two images of three windows)."""
    from mmpretrain.models.utils import WindowMSA
    from mmpola.models.pola_swin import SplitQKVWindowMSA
    torch.manual_seed(masked)
    ref = WindowMSA(32, (4, 4), 4)
    ours = SplitQKVWindowMSA(32, (4, 4), 4)
    with torch.no_grad():
        ref.relative_position_bias_table.normal_()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(6, 16, 32)
    mask = (torch.rand(3, 16, 16) > .5) * -100. if masked else None
    grads = []
    for m in (ref, ours):
        xi = x.clone().requires_grad_()
        out = m(xi, mask)
        out.pow(2).sum().backward()
        grads.append([out, xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        assert rel_err(b, a) < 1e-6
    with torch.no_grad():  # fused attention, bias and mask as one
        expected = ref(x, mask)
        assert rel_err(ours(x, mask), expected) < 1e-6
        # band inference: bias built once, projections into a workspace
        from mmpola.models.pola_attention import Workspace
        ws, bias = Workspace(x), ours.attention_bias(mask)
        for _ in range(2):
            assert rel_err(ours(x, attn_bias=bias, ws=ws), expected) < 1e-6
    with pytest.raises(AssertionError):  # inference-only arguments
        ours(x, attn_bias=bias)


def test_softmax_window_padding_is_masked():
    """A map smaller than the window is padded; real tokens must attend
    only to real tokens, with the biases of their true offsets."""
    torch.manual_seed(0)
    block = mmpola.models.pola_swin.PolaSwinBlock(
        16, 2, 'softmax', window_size=7, shift=True).eval()
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


@pytest.mark.parametrize('cls, arch', [(PolaPVT, TINY_PVT),
                                       (PolaSwin, TINY_SWIN)])
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


@pytest.mark.parametrize('cls, arch', [(PolaPVT, TINY_PVT),
                                       (PolaSwin, TINY_SWIN)])
def test_with_cp_matches_plain_forward_and_backward(cls, arch):
    torch.manual_seed(0)
    plain = cls(arch=arch, drop_path_rate=0.)
    ckpt = cls(arch=arch, drop_path_rate=0., with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 67, 75)
    grads = []
    for model in (plain, ckpt):
        model.zero_grad()
        sum(o.sum() for o in model(x)).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(AssertionError, match='Unknown arch'):
        PolaPVT(arch='huge')
    with pytest.raises(AssertionError, match='needs the keys'):
        PolaSwin(arch=dict(embed_dims=32))
    with pytest.raises(AssertionError, match='out of range'):
        PolaPVT(arch=TINY_PVT, out_indices=(4, ))
    with pytest.raises(AssertionError):
        PolaSwin(arch=TINY_SWIN, pola_attn_mode='local')


@pytest.mark.parametrize('registry', ['mmdet', 'mmseg', 'mmpretrain'])
def test_build_from_each_package_registry(registry):
    import importlib
    MODELS = importlib.import_module(f'{registry}.registry').MODELS
    for name, arch in (('PolaPVT', TINY_PVT), ('PolaSwin', TINY_SWIN)):
        model = MODELS.build(dict(type=name, arch=arch))
        assert type(model).__name__ == name
