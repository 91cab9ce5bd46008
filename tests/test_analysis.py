"""mmpola.analysis and tools/analysis: FLOP counts, attention maps,
entropies, memory measurement, and the three CLIs on tiny settings."""
import csv
import json
import math
from pathlib import Path

import pytest
import torch

from mmpola.analysis import attention_maps as am
from mmpola.analysis.flops import analyze, pola_attention_flops
from mmpola.analysis.measure import peak_memory
from mmpola.models import PolaAttention
import mmpola.layers.pola_attention as pa
from mmpola.ops import pola_attention_reference as released_pola_core

ROOT = Path(__file__).resolve().parents[1]


class OneLayer(torch.nn.Module):

    def __init__(self, fused, hw=(4, 4)):
        super().__init__()
        self.hw = hw
        self.attn = PolaAttention(8, 2, hw, fused_qkvg=fused)

    def forward(self, x):
        return self.attn(x, self.hw)


@pytest.mark.parametrize('fused', [True, False])
def test_pola_attention_flops_hand_count(fused):
    # B=2, N=16 tokens (4x4), C=8, 2 heads of d=4, 5x5 depthwise conv
    r = analyze(OneLayer(fused), torch.randn(2, 16, 8))
    # q|k|v|g projections 4*C*C and output projection C*C per token
    linear = 2 * 16 * 5 * 8 * 8                        # 10240
    conv = 2 * 16 * 8 * 25                             # 6400
    # per (batch, head), N=16, d=4: k'^T v_i (2 x 8x16 @ 16x2) = 512,
    # q_i @ kv_i (2 x 16x8 @ 8x2) = 512, q_i @ mean(k') (2 x 16x8 @ 8x1)
    # = 256; 4 (batch, head) pairs
    pola_matmul = 4 * (512 + 512 + 256)                # 5120
    # per (batch, head): features 5 ops on 16x4 q and k = 640, mean of k'
    # 128, scalings 2 x (8x16 + 16x2) = 320, +eps and 1/z 2 x 2 x 16 = 64,
    # x * z 2 x 16x2 = 64; outside the core 5 ops per token and channel
    pola_elementwise = 4 * (640 + 128 + 320 + 64 + 64) + 5 * 2 * 16 * 8
    assert dict(r['by_operator']) == dict(
        linear=linear, conv=conv, pola_matmul=pola_matmul,
        pola_elementwise=pola_elementwise)
    assert r['flops'] == 27904 == sum(
        pola_attention_flops(2, 16, 8, 2).values())
    assert not r['unsupported'] and not r['core_fallback']
    assert r['params'] == sum(p.numel() for p in OneLayer(fused).parameters())


def test_plain_count_misses_pola_work():
    r = analyze(OneLayer(True), torch.randn(2, 16, 8), pola_rule=False)
    assert 'pola_matmul' not in r['by_operator']
    # the projections, the conv and the products of the core as traced
    # (tracing runs the 'grouped' core: mmpola.ops): per (batch, head)
    # [k+, k-]^T [v, 1] (8x16 @ 16x5) and [q+, q-] @ W (16x8 @ 8x6), 4
    # pairs; no element-wise work
    assert r['flops'] == 10240 + 6400 + 4 * (8 * 16 * 5 + 16 * 8 * 6)


def test_fallback_when_core_not_intercepted(monkeypatch):
    """A core the interception does not reach is still counted
    (analytically), and what the trace saw of it is not counted twice."""
    original = pa.pola_linear_attention
    real_forward = pa.PolaAttention.forward

    def forward(self, *args, **kwargs):
        pa.pola_linear_attention = original  # undo the interception
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(pa.PolaAttention, 'forward', forward)
    r = analyze(OneLayer(True), torch.randn(2, 16, 8))
    assert pa.pola_linear_attention is original
    assert r['core_fallback']
    assert r['flops'] == 27904


def test_core_matmul_count_matches_trace():
    """The analytic matrix-product count of the released core equals
    MMEngine's own matmul handles on the literal released code."""
    from mmengine.analysis import FlopAnalyzer
    from mmpola.analysis.flops import pola_core_flops

    class Core(torch.nn.Module):

        def forward(self, q, k, v, p):
            return released_pola_core(q, k, v, p)

    B, h, N, d = 2, 3, 20, 6
    q, k, v = (torch.randn(B, h, N, d) for _ in range(3))
    p = torch.full((1, h, 1, d), 3.)
    fa = FlopAnalyzer(Core(), (q, k, v, p))
    fa.unsupported_ops_warnings(False)
    assert fa.total() == pola_core_flops(B, h, N, N, d)['pola_matmul']


def test_entropy_known_distributions():
    n = 37
    uniform = torch.full((1, n), 1 / n, dtype=torch.float64)
    one_hot = torch.zeros(1, n, dtype=torch.float64)
    one_hot[0, 5] = 1
    half = torch.tensor([[0.5, 0.5, 0., 0.]])
    e = am.row_entropy(torch.cat([uniform, one_hot]))
    assert e[0].item() == pytest.approx(math.log(n), rel=1e-12)
    assert e[1].item() == 0
    assert am.row_entropy(half)[0].item() == pytest.approx(math.log(2))


def test_attention_rows_sum_to_one():
    torch.manual_seed(0)
    q, k = torch.randn(2, 12, 8), torch.randn(2, 30, 8)
    q[0, 0] = -q[0, 0].abs()  # ReLU row with no positive query channel
    p = 1 + 4 * torch.rand(2, 1, 8)
    maps = am.attention_weights(q, k, p)
    assert set(maps) == set(am.METHODS)
    for name, a in maps.items():
        assert a.shape == (2, 12, 30)
        assert (a >= 0).all(), name
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 12),
                                   msg=name)
    keep = torch.arange(30) < 20  # 10 padded keys
    for name, a in am.attention_weights(q, k, p, key_mask=keep).items():
        assert (a[..., 20:] == 0).all(), name
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 12), msg=name)
    ent = am.entropies(q, k, p, chunk=5, head_reduce='all')
    assert all(e.shape == (24, ) for e in ent.values())
    assert (ent['relu'][0] - math.log(30)).abs() < 1e-6  # uniform fallback


def test_pola_weights_reproduce_the_core():
    """With the released eps, A_sim @ v1 and A_opp @ v2 are the core's
    output: the maps are the weights the layer really applies."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 2, 25, 6, dtype=torch.float64)
               for _ in range(3))
    p = 1 + 4 * torch.rand(1, 2, 1, 6, dtype=torch.float64)
    maps = am.attention_weights(q, k, p, methods=('pola_sim', 'pola_opp'),
                                eps=1e-6)
    out = released_pola_core(q, k, v, p)
    torch.testing.assert_close(maps['pola_sim'] @ v[..., :3], out[..., :3])
    torch.testing.assert_close(maps['pola_opp'] @ v[..., 3:], out[..., 3:])


@pytest.mark.parametrize('fused', [True, False])
def test_qkvp_match_the_module(monkeypatch, fused):
    torch.manual_seed(2)
    layer = OneLayer(fused, hw=(3, 5)).attn
    for param in (layer.scale, layer.power, layer.positional_encoding):
        torch.nn.init.normal_(param)
    x = torch.randn(2, 15, 8)
    seen = {}
    original = pa.pola_linear_attention

    def spy(q, k, v, p, key_mask=None):
        seen.update(q=q, k=k, v=v, p=p)
        return original(q, k, v, p, key_mask)

    monkeypatch.setattr(pa, 'pola_linear_attention', spy)
    with torch.no_grad():
        layer(x, (3, 5))
        mine = am.pola_qkvp(layer, x, (3, 5))
    for name, t in zip('qkvp', mine):
        torch.testing.assert_close(t, seen[name], msg=name)


def test_capture_qkvp(monkeypatch):
    """q, k, v, p as the layer's core receives them; the same recomputed
    from the layer's input when the core is out of reach."""
    torch.manual_seed(3)
    model = OneLayer(False, hw=(3, 5))
    torch.nn.init.normal_(model.attn.positional_encoding)
    x = torch.randn(1, 15, 8)
    seen = am.capture_qkvp(model, model.attn, x)
    assert seen['source'] == 'core' and seen['hw'] == (3, 5)
    expected = am.pola_qkvp(model.attn, x, (3, 5))
    for name, t in zip('qkvp', expected):
        torch.testing.assert_close(seen[name], t.detach(), msg=name)
    original = pa.pola_linear_attention
    real_forward = pa.PolaAttention.forward

    def forward(self, *args, **kwargs):
        pa.pola_linear_attention = original  # the spy is not reached
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(pa.PolaAttention, 'forward', forward)
    again = am.capture_qkvp(model, model.attn, x)
    assert again['source'] == 'recomputed'
    torch.testing.assert_close(again['k'], seen['k'])


def test_cpu_peak_memory():

    def fn():
        a = torch.ones(256 * 1024)        # 1 MiB
        b = torch.ones(512 * 1024)        # 2 MiB, 3 live
        del a
        c = torch.ones(3 * 256 * 1024)    # 3 MiB, 5 live
        return b.sum() + c.sum()

    assert peak_memory(fn) == pytest.approx(5 * 2**20, abs=1024)


# ------------------------------------------------------------------ CLIs


def tool_main(name):
    """A tools/analysis script's ``main(argv)``, run in this process (the
    benchmark runs as a subprocess: it caps its address space)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        name, ROOT / 'tools' / 'analysis' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_main(name, capsys, *args):
    tool_main(name)([str(a) for a in args])
    return capsys.readouterr().out


def test_get_flops_cli(capsys, tmp_path):
    out = run_main('get_flops', capsys, '--model', 'PolaSwin:tiny',
                   '--shape', '64', '--json', tmp_path / 'f.json',
                   '--table-depth', '1')
    assert 'FLOPs:' in out and 'Pola core products' in out
    data = json.loads((tmp_path / 'f.json').read_text())
    assert data['input_shape'] == [1, 3, 64, 64]
    assert data['by_operator']['pola_matmul'] > 0
    assert data['pola_calls'] == 4
    out = run_main(
        'get_flops', capsys,
        'configs/mmpretrain/pola_pvt/pola-pvt-tiny_8xb128_in1k.py',
        '--shape', '64', '48', '--cfg-options', 'model.head.num_classes=10')
    assert 'input:        (1, 3, 64, 48)' in out and '(cls)' in out


def test_benchmark_cli(run_tool, tmp_path):
    """Both modes, a Pola model beside its baseline: a CSV row each with a
    time and a peak memory, the ratios printed, the plot written."""
    out = run_tool('tools/analysis/benchmark.py', '--mode', 'infer', 'train',
                   '--models', 'pola_pvt_t,pvt_t', '--sizes', '32@2',
                   '--repeat', '2', '--warmup', '0', '--pola-impl', 'fast',
                   '--out-dir', tmp_path)
    assert 'pola_impl fast' in out
    assert 'train eager 32x32: pola_pvt_t / pvt_t: median_s' in out
    with open(tmp_path / 'benchmark.csv') as f:
        rows = list(csv.DictReader(f))
    assert {(r['mode'], r['graph'], r['model']) for r in rows} == {
        (mode, 'eager', model) for mode in ('infer', 'train')
        for model in ('pola_pvt_t', 'pvt_t')}
    assert all(r['status'] == 'ok' and r['batch'] == '2'
               and 0 < float(r['min_s']) <= float(r['median_s'])
               and float(r['peak_mem_mb']) > 0 for r in rows)
    pytest.importorskip('matplotlib')
    assert (tmp_path / 'benchmark.png').stat().st_size > 1000


def test_benchmark_bad_size_and_failing_model(capsys, tmp_path):
    with pytest.raises(SystemExit):
        tool_main('benchmark')(['--sizes', '32y32'])
    assert 'expected N, HxW' in capsys.readouterr().err
    status = tool_main('benchmark')([
        '--models', 'pola_pvt_t,NoSuchModel:tiny', '--sizes', '32@1',
        '--repeat', '1', '--no-memory', '--out-dir', str(tmp_path)])
    assert status == 1  # a model that cannot be built fails the run
    with open(tmp_path / 'benchmark.csv') as f:
        rows = {r['model']: r['status'] for r in csv.DictReader(f)}
    assert rows['pola_pvt_t'] == 'ok'
    assert rows['NoSuchModel:tiny'].startswith('error: cannot build')


def test_benchmark_compiles_afresh_for_every_size(monkeypatch, tmp_path):
    """Graphs kept from one size must not count against Dynamo's recompile
    limit at the next (frames past it run eagerly, which once made mmdet's
    PVT-T look slow at the second size): every size starts from a reset and
    a new torch.compile of each model."""
    events = []
    monkeypatch.setattr(torch.compiler, 'reset',
                        lambda: events.append('reset'))

    def fake_compile(model, **kwargs):
        events.append(('compile', type(model).__name__))
        return model

    monkeypatch.setattr(torch, 'compile', fake_compile)
    status = tool_main('benchmark')([
        '--models', 'pola_pvt_t', '--sizes', '32@1', '48@1', '--graph',
        'compile', '--repeat', '1', '--warmup', '0', '--no-memory',
        '--out-dir', str(tmp_path)])
    assert status == 0
    assert events == ['reset', ('compile', 'PolaPVT')] * 2


def test_visualize_attention_cli(capsys, tmp_path):
    from PIL import Image
    from mmpola.testing import make_official_checkpoint
    ckpt = tmp_path / 'pola_pvt_tiny.pth'
    make_official_checkpoint('pola_pvt_tiny', str(ckpt))
    Image.fromarray(am.demo_image(40, 56)).save(tmp_path / 'img.png')
    out = run_main('visualize_attention', capsys,
                   tmp_path / 'img.png', '--checkpoint', ckpt, '--img-size',
                   '32', '48', '--layer', 'block2.1.attn', '--query', '0.25',
                   '0.5', '--out-dir', tmp_path / 'vis')
    assert 'block2.1.attn' in out
    summary = json.loads((tmp_path / 'vis' / 'summary.json').read_text())
    assert summary['map_hw'] == [4, 6] and summary['query_token'] == 1 * 6 + 3
    for m in am.METHODS:
        assert 0 <= summary['mean_entropy'][m] <= math.log(24) + 1e-9
    for name in ('attention_maps.png', 'entropy_hist.png'):
        assert (tmp_path / 'vis' / name).stat().st_size > 0
    # random init, Swin, generated image
    run_main('visualize_attention', capsys, '--model', 'PolaSwin:tiny',
             '--img-size', '32', '--out-dir', tmp_path / 'vis2')
    assert (tmp_path / 'vis2' / 'attention_maps.png').exists()
