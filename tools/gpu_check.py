#!/usr/bin/env python
"""mmpola's GPU check: one run, under 8 minutes on one H200.

On the GPU machine (no network, no OpenMMLab packages; the wheels come from
``make gpu-wheels``), ``bash tools/gpu_check.sh run OUT`` installs them and
runs this script. Sections, each written to ``--out``:

* ``tests``: the test files that need no mmcv ops (ops against the reference,
  backbones, checkpoint loading), run by pytest with CUDA as torch's default
  device (TF32 off) -> ``tests.csv`` + ``pytest.log``. A failure whose message
  is a CPU/CUDA device mix-up is marked ``device-handling`` (the test, written
  for the CPU, compares against a CPU tensor), not a numerical failure.
* ``train``: training steps (forward, loss, backward, AdamW step) of
  ``PolaPVT(arch='tiny')`` and ``PolaSwin(arch='tiny')`` built from MMEngine's
  ``MODELS`` registry, at 800x1333 batch 2, in fp32, AMP (fp16 autocast +
  GradScaler) and bf16 autocast -> ``train.csv``.
* ``bench``: both backbones against the softmax baselines that import there
  (mmpretrain's Swin-T; mmdet's PVT-T if mmdet imports without mmcv ops),
  inference forward, fp32/AMP/bf16 x eager/``torch.compile`` x 224 batch 64
  and 800x1333 batch 2: median time, images/s and peak memory ->
  ``bench.csv`` and ``bench.png`` (matplotlib, if present).
* ``env.json`` and ``summary.md`` (all of the above as tables).

``--budget-s`` bounds the whole run: compiled benchmark rows that no longer
fit are written as ``skipped (time budget)``. ``--device cpu --tiny`` runs the
same code at tiny sizes on the CPU (tests/test_gpu_check.py), so the script
cannot rot between GPU runs.
"""
import argparse
import csv
import json
import math
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# selected by name; missing files (the suite is being reorganised) are skipped
TEST_FILES = ('tests/test_ops.py', 'tests/test_pola_attention.py',
              'tests/test_backbones.py', 'tests/test_checkpoint.py')
PRECISIONS = ('fp32', 'amp', 'bf16')
DEVICE_MIXUP = re.compile(
    r'same device|cuda:0 and cpu|cpu and cuda|can\'t convert cuda|'
    r'device type|to host memory|on device cuda|numpy\(\) on|'
    r'Expected all tensors', re.I)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--device', default='cuda', help="'cuda' or 'cpu'")
    p.add_argument('--tiny', action='store_true',
                   help='tiny sizes and one timed iteration (CPU mode)')
    p.add_argument('--sections', default='tests,train,bench',
                   help='comma-separated: tests, train, bench')
    p.add_argument('--budget-s', type=float, default=420.,
                   help='soft limit for the whole run (s)')
    p.add_argument('--test-files', nargs='*', default=None,
                   help=f'pytest files / node ids (default: {TEST_FILES})')
    p.add_argument('--test-timeout-s', type=float, default=200.)
    p.add_argument('--models', default=None,
                   help='comma-separated benchmark models (default: all)')
    p.add_argument('--precisions', default=','.join(PRECISIONS))
    p.add_argument('--compile', default='auto', choices=('auto', 'on', 'off'),
                   help='torch.compile rows (auto: on for CUDA, off for CPU)')
    p.add_argument('--compile-backend', default='inductor',
                   help="'eager' traces with Dynamo only (cheap, for CPU)")
    p.add_argument('--compile-precisions', default=None,
                   help='precisions with compiled rows (default: all)')
    p.add_argument('--compile-models', default=None,
                   help='models with compiled rows (default: all)')
    p.add_argument('--pytest-device', default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------
# helpers

class Timer:

    def __init__(self, budget_s):
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def elapsed(self):
        return time.perf_counter() - self.t0

    def left(self):
        return self.budget_s - self.elapsed()


def log(msg):
    print(f'[gpu_check {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def sync(device):
    import torch
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def autocast(device, precision):
    import torch
    if precision == 'fp32':
        return torch.autocast(device_type=device.split(':')[0], enabled=False)
    dtype = torch.float16 if precision == 'amp' else torch.bfloat16
    return torch.autocast(device_type=device.split(':')[0], dtype=dtype)


def grad_scaler(device, enabled):
    import torch
    if hasattr(torch.amp, 'GradScaler'):  # torch >= 2.3
        return torch.amp.GradScaler(device.split(':')[0], enabled=enabled)
    return torch.cuda.amp.GradScaler(
        enabled=enabled and device.startswith('cuda'))


def reset_peak(device):
    import torch
    if device.startswith('cuda'):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device):
    import torch
    if device.startswith('cuda'):
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return ''


def is_oom(e):
    return 'out of memory' in str(e).lower()


def unsupported(e):
    """A precision this torch does not offer on this device (torch < 2.4:
    CPU autocast is bfloat16 only): reported, not a failure."""
    msg = str(e).lower().replace('supports', 'support')
    return 'only support bfloat16' in msg


def short_error(e, n=300):
    msg = f'{type(e).__name__}: {e}'.replace('\n', ' ')
    return msg[:n]


def write_csv(path, rows, fields):
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
        w.writeheader()
        w.writerows(rows)


def versions():
    import importlib.metadata as md
    out = {}
    for name in ('torch', 'torchvision', 'numpy', 'mmengine', 'mmcv',
                 'mmpretrain', 'mmdet', 'mmsegmentation', 'matplotlib',
                 'pytest', 'triton'):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def environment(device):
    import torch
    env = dict(python=platform.python_version(), platform=platform.platform(),
               device=device, torch_cuda=torch.version.cuda,
               versions=versions(), time_utc=time.strftime(
                   '%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
    if device.startswith('cuda'):
        env['gpu'] = torch.cuda.get_device_name()
        env['gpu_memory_gb'] = round(
            torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import mmcv.ops  # noqa: F401
        env['mmcv_ops'] = 'load'
    except Exception as e:  # noqa: BLE001
        env['mmcv_ops'] = f'do not load ({short_error(e, 120)})'
    return env


# --------------------------------------------------------------------------
# models

def build(name):
    """(model, attention kind) for a benchmark / training model name."""
    import torch  # noqa: F401
    from mmengine.registry import MODELS
    import mmpola  # noqa: F401  (registers PolaPVT / PolaSwin)
    if name == 'pola_pvt_t':
        return MODELS.build(dict(type='PolaPVT', arch='tiny')), 'pola'
    if name == 'pola_swin_t':
        return MODELS.build(dict(type='PolaSwin', arch='tiny')), 'pola'
    if name == 'swin_t_mmpretrain':
        from mmpretrain.models import SwinTransformer
        return SwinTransformer(arch='tiny', out_indices=(0, 1, 2, 3),
                               pad_small_map=True), \
            'softmax'
    if name == 'pvt_t_mmdet':
        # imports mmcv.ops through mmdet.models: fails with an ops-less mmcv
        from mmdet.models.backbones import PyramidVisionTransformer
        return PyramidVisionTransformer(num_layers=[2, 2, 2, 2]), 'softmax'
    raise ValueError(name)


BENCH_MODELS = ('pola_pvt_t', 'pola_swin_t', 'swin_t_mmpretrain',
                'pvt_t_mmdet')
TRAIN_MODELS = ('pola_pvt_t', 'pola_swin_t')


def outputs_loss(outs):
    if not isinstance(outs, (tuple, list)):
        outs = [outs]
    return sum((o.float()**2).mean() for o in outs)


# --------------------------------------------------------------------------
# sections

class _DevicePlugin:
    """pytest plugin: tensors and modules made without a device go to
    ``device``; files loaded without ``map_location`` too; no TF32."""

    def __init__(self, device):
        self.device = device

    def pytest_configure(self, config):
        import torch
        if self.device == 'cpu':
            return
        torch.set_default_device(self.device)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        load = torch.load

        def load_on_device(*args, **kwargs):
            if len(args) < 2 and 'map_location' not in kwargs:
                kwargs['map_location'] = self.device
            return load(*args, **kwargs)

        torch.load = load_on_device


def run_pytest_inprocess(device, args):
    import pytest
    return pytest.main(list(args), plugins=[_DevicePlugin(device)])


def section_tests(args, timer, out):
    files = args.test_files if args.test_files is not None else [
        f for f in TEST_FILES if (ROOT / f).exists()]
    missing = [f for f in TEST_FILES if args.test_files is None
               and not (ROOT / f).exists()]
    if missing:
        log(f'tests: not in this tree, skipped: {missing}')
    if not files:
        return [], 'no test files'
    xml = out / '.pytest.xml'
    cmd = [sys.executable, str(Path(__file__).resolve()), '--out', str(out),
           '--pytest-device', args.device, '--', *files, '-q', '-rfE',
           '-p', 'no:cacheprovider', '--junitxml', str(xml)]
    try:
        import pytest_timeout  # noqa: F401
        cmd += ['--timeout', '120']
    except ImportError:
        pass
    timeout = max(30., min(args.test_timeout_s, timer.left() - 120))
    log(f'tests: {" ".join(files)} on {args.device} (timeout {timeout:.0f}s)')
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
        text, note = proc.stdout, f'pytest exit {proc.returncode}'
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b'').decode() if isinstance(e.stdout, bytes) \
            else (e.stdout or '')
        note = f'pytest stopped after {timeout:.0f}s (time budget)'
    (out / 'pytest.log').write_text(text)
    rows = []
    if xml.exists():
        for case in ET.parse(xml).getroot().iter('testcase'):
            outcome, msg = 'passed', ''
            for tag in ('failure', 'error', 'skipped'):
                el = case.find(tag)
                if el is not None:
                    outcome = {'failure': 'failed', 'error': 'error',
                               'skipped': 'skipped'}[tag]
                    msg = (el.get('message') or '') + ' ' + (el.text or '')
                    break
            category = ''
            if outcome in ('failed', 'error'):
                category = ('device-handling' if DEVICE_MIXUP.search(msg)
                            else 'numerical/other')
            rows.append(dict(
                file=case.get('classname', '').replace('.', '/') + '.py',
                test=case.get('name'), outcome=outcome,
                seconds=round(float(case.get('time') or 0), 2),
                category=category,
                message=' '.join(msg.split())[:300]))
        xml.unlink()
    write_csv(out / 'tests.csv', rows, ['file', 'test', 'outcome', 'seconds',
                                        'category', 'message'])
    counts = {}
    for r in rows:
        key = r['outcome'] + (f' ({r["category"]})' if r['category'] else '')
        counts[key] = counts.get(key, 0) + 1
    note += f', {time.perf_counter() - t:.0f}s'
    log(f'tests: {counts} ({note})')
    return rows, note


def section_train(args, timer, out, sizes):
    import torch
    device = args.device
    h, w, b = sizes['train']
    steps = 1 if args.tiny else 3
    rows = []
    for name in TRAIN_MODELS:
        ref_loss = None
        for precision in args.precisions.split(','):
            row = dict(model=name, precision=precision, input=f'{h}x{w}',
                       batch=b, steps=steps)
            try:
                torch.manual_seed(0)
                model, _ = build(name)
                model.to(device)
                model.train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
                scaler = grad_scaler(device, precision == 'amp')
                gen = torch.Generator().manual_seed(1)
                x = torch.randn(b, 3, h, w, generator=gen).to(device)
                before = [p.detach().clone() for p in model.parameters()]
                losses, times = [], []
                reset_peak(device)
                for i in range(steps + 1):  # step 0: warm-up
                    sync(device)
                    t = time.perf_counter()
                    opt.zero_grad(set_to_none=True)
                    with autocast(device, precision):
                        loss = outputs_loss(model(x))
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                    gnorm = torch.nn.utils.clip_grad_norm_(
                        model.parameters(), float('inf'))
                    scaler.step(opt)
                    scaler.update()
                    sync(device)
                    times.append(time.perf_counter() - t)
                    losses.append(float(loss))
                changed = any(not torch.equal(p0, p.detach()) for p0, p in
                              zip(before, model.parameters()))
                finite = all(math.isfinite(v) for v in losses) and \
                    math.isfinite(float(gnorm))
                if precision == 'fp32':
                    ref_loss = losses[0]
                rel = ('' if ref_loss is None else
                       round(abs(losses[0] - ref_loss) / abs(ref_loss), 5))
                row.update(
                    status='ok' if finite and changed else
                    ('non-finite' if not finite else 'parameters unchanged'),
                    first_loss=round(losses[0], 6),
                    last_loss=round(losses[-1], 6),
                    rel_diff_first_loss_vs_fp32=rel,
                    grad_norm=round(float(gnorm), 4),
                    ms_per_step=round(1e3 * statistics.median(times[1:]), 1),
                    peak_mem_mb=peak_mb(device))
            except Exception as e:  # noqa: BLE001
                row.update(status='oom' if is_oom(e) else
                           'unsupported' if unsupported(e) else 'error',
                           note=short_error(e))
                if row['status'] == 'error':
                    traceback.print_exc()
            finally:
                model = opt = None  # noqa: F841
                if device.startswith('cuda'):
                    torch.cuda.empty_cache()
            log(f'train: {row}')
            rows.append(row)
    write_csv(out / 'train.csv', rows, [
        'model', 'precision', 'input', 'batch', 'steps', 'status',
        'first_loss', 'last_loss', 'rel_diff_first_loss_vs_fp32',
        'grad_norm', 'ms_per_step', 'peak_mem_mb', 'note'])
    return rows


def _bench_one(model, x, device, precision, iters, warmup):
    import torch
    times = []
    with torch.no_grad(), autocast(device, precision):
        sync(device)
        t = time.perf_counter()
        for _ in range(warmup):
            model(x)
        sync(device)
        first_s = time.perf_counter() - t
        reset_peak(device)
        for _ in range(iters):
            sync(device)
            t = time.perf_counter()
            model(x)
            sync(device)
            times.append(time.perf_counter() - t)
    return first_s, times


def section_bench(args, timer, out, sizes):
    import torch
    device = args.device
    names = args.models.split(',') if args.models else list(BENCH_MODELS)
    precisions = args.precisions.split(',')
    comp_prec = (args.compile_precisions.split(',')
                 if args.compile_precisions else precisions)
    do_compile = (args.compile == 'on' or
                  (args.compile == 'auto' and device.startswith('cuda')))
    iters, warmup = (1, 1) if args.tiny else (10, 3)
    rows, models, notes = [], {}, {}
    for name in names:
        try:
            torch.manual_seed(0)
            model, kind = build(name)
            model.to(device)
            model.eval()  # (mmpretrain's Swin's train() returns None)
            models[name] = (model, kind, sum(
                p.numel() for p in model.parameters()) / 1e6)
        except Exception as e:  # noqa: BLE001
            notes[name] = short_error(e, 200)
            log(f'bench: {name} not available: {notes[name]}')
            rows.append(dict(model=name, status='unavailable',
                             note=notes[name]))

    def add(name, size, precision, mode, **kw):
        model, kind, params = models[name]
        h, w, b = size
        row = dict(model=name, attention=kind, params_m=round(params, 2),
                   input=f'{h}x{w}', batch=b, precision=precision, mode=mode)
        row.update(kw)
        rows.append(row)
        log(f'bench: {row}')
        return row

    def measure(name, fn, size, precision, mode):
        h, w, b = size
        x = torch.randn(b, 3, h, w, device=device)
        try:
            first_s, times = _bench_one(fn, x, device, precision, iters,
                                        warmup)
            ms = 1e3 * statistics.median(times)
            return add(name, size, precision, mode, status='ok',
                       ms_median=round(ms, 2),
                       ms_min=round(1e3 * min(times), 2),
                       img_per_s=round(b / (ms / 1e3), 1),
                       peak_mem_mb=peak_mb(device),
                       warmup_s=round(first_s, 1))
        except Exception as e:  # noqa: BLE001
            if device.startswith('cuda'):
                torch.cuda.empty_cache()
            return add(name, size, precision, mode,
                       status='oom' if is_oom(e) else
                       'unsupported' if unsupported(e) else 'error',
                       note=short_error(e))

    # eager: every row (cheap)
    for size in sizes['bench']:
        for name in models:
            for precision in precisions:
                measure(name, models[name][0], size, precision, 'eager')
    # compiled: most informative first; skip what no longer fits the budget
    if do_compile:
        order = [p for p in ('bf16', 'amp', 'fp32') if p in comp_prec]
        est = 60.  # s per compiled row until one has been measured
        for precision in order:
            for size in reversed(sizes['bench']):  # detection size first
                for name in models:
                    if args.compile_models and \
                            name not in args.compile_models.split(','):
                        continue
                    if timer.left() < est + 30:
                        add(name, size, precision, 'compile',
                            status='skipped (time budget)')
                        continue
                    torch._dynamo.reset()
                    t = time.perf_counter()
                    try:
                        fn = torch.compile(models[name][0],
                                           backend=args.compile_backend)
                    except Exception as e:  # noqa: BLE001
                        add(name, size, precision, 'compile', status='error',
                            note=short_error(e))
                        continue
                    measure(name, fn, size, precision, 'compile')
                    est = max(est * 0.5, time.perf_counter() - t)
    write_csv(out / 'bench.csv', rows, [
        'model', 'attention', 'params_m', 'input', 'batch', 'precision',
        'mode', 'status', 'ms_median', 'ms_min', 'img_per_s', 'peak_mem_mb',
        'warmup_s', 'note'])
    plot_note = plot_bench(rows, out / 'bench.png')
    return rows, plot_note


def plot_bench(rows, path):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return 'matplotlib not installed: no bench.png'
    ok = [r for r in rows if r.get('status') == 'ok']
    if not ok:
        return 'no successful benchmark rows: no bench.png'
    inputs = sorted({(r['input'], r['batch']) for r in ok},
                    key=lambda t: t[1], reverse=True)
    groups = [(p, m) for m in ('eager', 'compile')
              for p in ('fp32', 'amp', 'bf16')]
    names = sorted({r['model'] for r in ok})
    fig, axes = plt.subplots(2, len(inputs), figsize=(7 * len(inputs), 8),
                             squeeze=False)
    for col, (inp, batch) in enumerate(inputs):
        for rowi, (key, label) in enumerate(
                (('ms_median', 'ms / batch (median)'),
                 ('peak_mem_mb', 'peak memory (MiB)'))):
            ax = axes[rowi][col]
            width = 0.8 / max(1, len(names))
            for i, name in enumerate(names):
                vals = []
                for p, m in groups:
                    match = [r for r in ok if r['model'] == name and
                             r['input'] == inp and r['batch'] == batch and
                             r['precision'] == p and r['mode'] == m]
                    v = match[0].get(key) if match else None
                    vals.append(float(v) if v not in (None, '') else 0.)
                ax.bar([g + i * width for g in range(len(groups))], vals,
                       width, label=name)
            ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
            ax.set_xticklabels([f'{p}\n{m}' for p, m in groups])
            ax.set_title(f'{inp}, batch {batch}: {label}')
            ax.set_ylabel(label)
            if rowi == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return ''


# --------------------------------------------------------------------------

def markdown_table(rows, fields):
    if not rows:
        return '(none)\n'
    lines = ['| ' + ' | '.join(fields) + ' |',
             '|' + '---|' * len(fields)]
    for r in rows:
        lines.append('| ' + ' | '.join(str(r.get(f, '')) for f in fields)
                     + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if '--pytest-device' in argv:  # the tests section's child process
        device = argv[argv.index('--pytest-device') + 1]
        rest = argv[argv.index('--') + 1:] if '--' in argv else []
        return run_pytest_inprocess(device, rest)
    args = parse_args(argv)
    import torch
    timer = Timer(args.budget_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit('gpu_check: no CUDA device here; use --device cpu --tiny')
    if args.device.startswith('cuda'):
        torch.backends.cuda.matmul.allow_tf32 = True  # as training would
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = False
    sizes = (dict(train=(64, 96, 1), bench=[(64, 64, 2), (96, 128, 1)])
             if args.tiny else
             dict(train=(800, 1333, 2), bench=[(224, 224, 64),
                                                (800, 1333, 2)]))
    env = environment(args.device)
    log(f'environment: {json.dumps(env)}')
    (out / 'env.json').write_text(json.dumps(env, indent=1))
    sections = args.sections.split(',')
    summary = [f'# mmpola GPU check, {env["time_utc"]}\n',
               f'device: {env.get("gpu", args.device)}, torch '
               f'{env["versions"]["torch"]} (CUDA {env["torch_cuda"]}), '
               f'Python {env["python"]}, mmcv ops: {env["mmcv_ops"]}\n']
    failed = False
    if 'tests' in sections:
        rows, note = section_tests(args, timer, out)
        bad = [r for r in rows if r['category'] == 'numerical/other']
        failed |= bool(bad)
        summary += [f'\n## Tests on {args.device} ({note})\n\n',
                    markdown_table([r for r in rows
                                    if r['outcome'] not in ('passed',)],
                                   ['file', 'test', 'outcome', 'category',
                                    'message']),
                    f'\n{sum(r["outcome"] == "passed" for r in rows)} '
                    f'passed of {len(rows)}\n']
    if 'train' in sections:
        rows = section_train(args, timer, out, sizes)
        failed |= any(r.get('status') not in ('ok', 'unsupported')
                      for r in rows)
        summary += ['\n## Training steps\n\n', markdown_table(rows, [
            'model', 'precision', 'input', 'batch', 'status', 'first_loss',
            'rel_diff_first_loss_vs_fp32', 'ms_per_step', 'peak_mem_mb',
            'note'])]
    if 'bench' in sections:
        rows, plot_note = section_bench(args, timer, out, sizes)
        failed |= any(r.get('status') == 'error' and
                      r['model'].startswith('pola') for r in rows)
        summary += ['\n## Benchmark (inference forward)\n\n', markdown_table(
            rows, ['model', 'attention', 'input', 'batch', 'precision',
                   'mode', 'status', 'ms_median', 'img_per_s', 'peak_mem_mb',
                   'warmup_s', 'note'])]
        if plot_note:
            summary.append(f'\n{plot_note}\n')
    summary.append(f'\ntotal {timer.elapsed():.0f}s\n')
    (out / 'summary.md').write_text(''.join(summary))
    log(f'done in {timer.elapsed():.0f}s; results in {out}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
