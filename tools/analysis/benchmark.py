"""Latency, throughput and peak memory: Pola backbones / detectors against
their baselines, measured side by side; and the Pola attention core against
the released formulation.

    python tools/analysis/benchmark.py [--mode infer train core]
        [--models pola_pvt_t pvt_t pola_swin_t swin_t]
        [--sizes 224@32 512 800x1333 1600x2666] [--repeat 5] [--warmup 1]
        [--device cpu|cuda] [--out-dir work_dirs/benchmark]

Modes:
    infer  forward in eval mode under ``torch.inference_mode``.
    train  one training step: forward (train mode), loss, backward
           (no optimiser step). Backbones: loss = sum of the outputs'
           means; whole models: their own losses on random ground truth.
    core   the attention core alone, at ``--core-batch`` x ``--core-tokens``
           tokens for each ``--core-heads`` (heads x head dim):
           ``mmpola.ops.pola_linear_attention`` with the implementation of
           ``--pola-impl`` (``mmpola_core``) against the reference, the
           released formulation (``released_core``,
           ``mmpola.ops.reference``), forward and forward + backward.

``--pola-impl`` (auto / fast / reference) is set with
``mmpola.ops.set_pola_impl`` for every run (default: the environment
variable ``MMPOLA_POLA_IMPL``, else 'auto'); ``--cpu-executor on|off``
switches the opt-in CPU executor of the Pola blocks
(``mmpola.models.cpu_executor``; default: ``MMPOLA_CPU_EXECUTOR``, else
off). Both are recorded in the environment line of the outputs.

Models (``--models``; each Pola model is compared with its baseline when
both run): pola_pvt_t, pvt_t (mmdet ``PyramidVisionTransformer``, settings
of ``pvt/retinanet_pvt-t_fpn_1x_coco.py``), pola_swin_t, swin_t (mmdet
``SwinTransformer``, Swin-T settings), retinanet_pola_pvt_t,
retinanet_pvt_t, mask_rcnn_pola_swin_t, mask_rcnn_swin_t (whole detectors
from the configs; inference in 'tensor' mode: no NMS / post-processing),
or any spec ``get_flops.py --model`` accepts.

Sizes (``--sizes``): ``N``, ``HxW``, optionally ``@B`` for the batch
(default 32 at 224x224, else 1). Whole detectors get inputs padded to 32.

Timing: ``--warmup`` untimed calls per model, then ``--repeat`` rounds in
which every model runs once, in alternating order (forward, then reversed)
so that drift of the machine hits all models alike; the median is reported
(CUDA: synchronised). Peak memory: one more call per model, measured as the
peak of live tensor bytes above the start (CUDA: ``max_memory_allocated``;
CPU: the profiler's allocator events; see ``mmpola.analysis.measure``).

Writes ``benchmark.csv``, ``benchmark.md`` (the printed tables) and
``benchmark.png`` (time and memory against stage-1 token count) to
``--out-dir``.
"""
import argparse
import csv
import math
import os
import os.path as osp
import platform
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

from mmpola.analysis.measure import peak_memory, time_call  # noqa: E402
from mmpola.analysis.models import (NAMED, PAIRS, build_model,  # noqa: E402
                                    make_data_samples, num_classes_of,
                                    padded_shape, training_loss)

DEFAULT_MODELS = ['pola_pvt_t', 'pvt_t', 'pola_swin_t', 'swin_t']
DEFAULT_SIZES = ['224@32', '512', '800x1333', '1600x2666']
FIELDS = ['mode', 'size', 'height', 'width', 'batch', 'tokens', 'model',
          'median_s', 'min_s', 'images_per_s', 'peak_mem_mb', 'repeats',
          'loadavg_1m', 'status']


def parse_size(text, batch=None):
    """'224@32' -> (224, 224, 32); '800x1333' -> (800, 1333, 1)."""
    size, _, b = text.partition('@')
    hw = [int(v) for v in size.lower().split('x')]
    if len(hw) == 1:
        hw *= 2
    if batch is None:
        batch = int(b) if b else (32 if hw == [224, 224] else 1)
    return hw[0], hw[1], batch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Latency / throughput / peak memory, Pola vs baselines')
    parser.add_argument('--mode', nargs='+', default=['infer', 'train'],
                        choices=['infer', 'train', 'core'])
    parser.add_argument('--models', nargs='+', default=DEFAULT_MODELS,
                        help=f'named: {", ".join(NAMED)}; comma lists ok')
    parser.add_argument('--sizes', nargs='+', default=DEFAULT_SIZES,
                        help='N, HxW, with optional @batch')
    parser.add_argument('--batch', type=int,
                        help='batch for every size (overrides @B)')
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--device', default='cuda'
                        if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--no-memory', action='store_true',
                        help='skip the peak-memory runs')
    parser.add_argument('--core-tokens', type=int, default=66800,
                        help='core mode: tokens per sequence (66,800 = the '
                        'stage-1 map of 800x1336)')
    parser.add_argument('--core-batch', type=int, default=2)
    parser.add_argument('--core-heads', nargs='+', default=['3x32', '1x64'],
                        help='core mode: heads x head dim')
    parser.add_argument(
        '--mem-limit-gb', type=float,
        help='CPU: cap the address space so that a run too big for the '
        'machine fails with an error (reported, the benchmark goes on) '
        'instead of being killed; default: current size + 75%% of the '
        'available memory; 0: no cap')
    parser.add_argument('--pola-impl', choices=['auto', 'fast', 'reference'],
                        help='mmpola.ops.set_pola_impl for every run')
    parser.add_argument('--cpu-executor', choices=['on', 'off'],
                        help='mmpola.models.cpu_executor.set_cpu_executor '
                        'for every run (default: MMPOLA_CPU_EXECUTOR, off)')
    parser.add_argument('--threads', type=int,
                        help='torch.set_num_threads (default: torch default)')
    parser.add_argument('--out-dir', default='work_dirs/benchmark')
    parser.add_argument('--no-plot', action='store_true')
    parser.add_argument('--from-csv', nargs='+', metavar='CSV',
                        help='measure nothing: merge these benchmark.csv '
                        'files into one set of outputs in --out-dir')
    args = parser.parse_args(argv)
    args.models = [m for spec in args.models for m in spec.split(',') if m]
    return args


# ------------------------------------------------------------ workloads


class Workload:
    """One model (or core implementation) at one size and mode: ``run()``
    executes one timed call."""

    def __init__(self, name, run, batch, tokens, prepare=None):
        self.name, self.run, self.batch, self.tokens = name, run, batch, tokens
        self.prepare = prepare


def model_workloads(names, H, W, batch, mode, device, built):
    """Workloads of the named models at one size (models built once and
    cached in ``built``)."""
    works = []
    for name in names:
        if name not in built:
            print(f'  building {name}', flush=True)
            model, info = build_model(name)
            built[name] = (model.to(device), info)
        model, info = built[name]
        task = info['task']
        Hp, Wp = padded_shape(H, W, info['pad_divisor'])
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 3, Hp, Wp, generator=gen).to(device)
        tokens = batch * math.ceil(Hp / 4) * math.ceil(Wp / 4)
        if mode == 'infer':
            samples = make_data_samples(task, batch, (H, W), (Hp, Wp))

            def run(model=model, x=x, task=task, samples=samples):
                with torch.inference_mode():
                    if task == 'backbone':
                        return model(x)
                    return model(x, samples, mode='tensor')

            def prepare(model=model):
                model.eval()
        else:
            samples = make_data_samples(
                task, batch, (H, W), (Hp, Wp), with_gt=True,
                num_classes=num_classes_of(info['cfg']))
            if samples is not None and device != 'cpu':
                samples = [s.to(device) for s in samples]

            def run(model=model, x=x, task=task, samples=samples):
                loss = training_loss(model, task, x, samples)
                loss.backward()
                model.zero_grad(set_to_none=True)
                return loss.detach()

            def prepare(model=model):
                model.train()
        works.append(Workload(name, run, batch, tokens, prepare))
    return works


def core_workloads(batch, tokens, heads, dims, backward, device):
    import mmpola.ops as ops

    def pola_linear_attention(q, k, v, p):  # the chosen implementation
        return ops.pola_linear_attention(q, k, v, p)

    def released_pola_core(q, k, v, p):  # the released formulation
        return ops.pola_linear_attention(q, k, v, p, impl='reference')
    gen = torch.Generator().manual_seed(0)
    shape = (batch, heads, tokens, dims)
    q, k, v = (torch.randn(shape, generator=gen).to(device) * 0.5
               for _ in range(3))
    p = (1 + 4 * torch.sigmoid(torch.randn(1, heads, 1, dims,
                                           generator=gen))).to(device)
    grad = torch.randn(shape, generator=gen).to(device)
    works = []
    for name, fn in (('mmpola_core', pola_linear_attention),
                     ('released_core', released_pola_core)):
        if backward:
            leaves = [t.clone().requires_grad_() for t in (q, k, v, p)]

            def run(fn=fn, leaves=leaves):
                out = fn(*leaves)
                out.backward(grad)
                for t in leaves:
                    t.grad = None
        else:
            def run(fn=fn):
                with torch.inference_mode():
                    return fn(q, k, v, p)
        works.append(Workload(f'{name}[{heads}x{dims}]', run, batch,
                              batch * tokens))
    return works


# ------------------------------------------------------------ measuring


def measure(works, repeat, warmup, device, memory=True, label=''):
    """Time the workloads side by side (alternating order), then their
    peak memory. Returns {name: row dict}."""
    rows = {w.name: dict(model=w.name, batch=w.batch, tokens=w.tokens,
                         times=[], status='ok') for w in works}
    alive = list(works)

    def call(w):
        if w.prepare:
            w.prepare()
        return time_call(w.run, device)

    def guarded(w, fn):
        try:
            return fn(w)
        except (RuntimeError, MemoryError) as e:  # e.g. out of memory
            msg = str(e).splitlines()[0][:120]
            if "can't allocate memory" in msg or 'out of memory' in msg:
                msg = 'out of memory'
            rows[w.name]['status'] = f'error: {msg}'
            print(f'    {w.name}: FAILED ({msg})', flush=True)
            alive.remove(w)
            if device != 'cpu':
                torch.cuda.empty_cache()
            return None

    for i in range(warmup):
        for w in list(alive):
            t = guarded(w, call)
            if t is not None:
                print(f'  {label} warm-up {w.name}: {t:.3f} s', flush=True)
    for r in range(repeat):
        order = list(alive) if r % 2 == 0 else list(reversed(alive))
        for w in order:
            t = guarded(w, call)
            if t is not None:
                rows[w.name]['times'].append(t)
                print(f'  {label} round {r + 1}/{repeat} {w.name}: '
                      f'{t:.3f} s', flush=True)
    for w in list(alive):
        row = rows[w.name]
        if memory:
            if w.prepare:
                w.prepare()
            mem = guarded(w, lambda w: peak_memory(w.run, device))
            row['peak_mem_mb'] = None if mem is None else mem / 2**20
            if mem is not None:
                print(f'  {label} peak memory {w.name}: '
                      f'{row["peak_mem_mb"]:.1f} MB', flush=True)
    for row in rows.values():
        times = row.pop('times')
        row['repeats'] = len(times)
        if times:
            row['median_s'] = statistics.median(times)
            row['min_s'] = min(times)
            row['images_per_s'] = row['batch'] / row['median_s']
    return rows


# ------------------------------------------------------------ reporting


def fmt(v, digits=3):
    if v is None or v == '':
        return '-'
    if isinstance(v, float):
        return f'{v:.{digits}f}'
    return str(v)


def tables(results, pairs):
    """Markdown tables: every measurement, then Pola / baseline ratios."""
    lines = ['| mode | size | batch | model | median s | img/s | peak MB | '
             'status |', '|---|---|---|---|---|---|---|---|']
    for r in results:
        lines.append(
            f'| {r["mode"]} | {r["size"]} | {r["batch"]} | {r["model"]} | '
            f'{fmt(r.get("median_s"))} | {fmt(r.get("images_per_s"), 2)} | '
            f'{fmt(r.get("peak_mem_mb"), 1)} | {r["status"]} |')
    ratio_lines = ['| mode | size | Pola | baseline | time ratio | '
                   'memory ratio |', '|---|---|---|---|---|---|']
    index = {(r['mode'], r['size'], r['model']): r for r in results}
    for (mode, size, model), r in index.items():
        base = pairs.get(model)
        b = index.get((mode, size, base))
        if base is None or b is None:
            continue

        def ratio(key):
            if r.get(key) and b.get(key):
                return f'{r[key] / b[key]:.2f}'
            return '-'

        ratio_lines.append(f'| {mode} | {size} | {model} | {base} | '
                           f'{ratio("median_s")} | {ratio("peak_mem_mb")} |')
    return '\n'.join(lines), '\n'.join(ratio_lines)


def plot(results, path):
    """Per image: median time and peak memory against stage-1 tokens, one
    row of panels per mode; a Pola model and its baseline share a colour
    (Pola: solid, circles; baseline: dashed, squares)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    series = {}
    for r in results:
        if r['mode'].startswith('core') or not r.get('median_s'):
            continue
        series.setdefault(r['mode'], {}).setdefault(r['model'], []).append(r)
    modes = [m for m in ('infer', 'train') if m in series] or ['infer']
    fig, axes = plt.subplots(len(modes), 2, figsize=(12, 4.3 * len(modes)),
                             squeeze=False)
    baselines = {b: p for p, b in PAIRS.items()}
    families = sorted({baselines.get(m, m) for rows in series.values()
                       for m in rows}, key=lambda m: (m not in PAIRS, m))
    colours = {m: f'C{i}' for i, m in enumerate(families)}
    for ax_row, mode in zip(axes, modes):
        for model, rows in sorted(series.get(mode, {}).items()):
            rows.sort(key=lambda r: r['tokens'] / r['batch'])
            pola = model not in baselines
            kw = dict(color=colours[baselines.get(model, model)],
                      linestyle='-' if pola else '--',
                      marker='o' if pola else 's', label=model)
            xs = [r['tokens'] / r['batch'] for r in rows]
            ax_row[0].plot(xs, [r['median_s'] / r['batch'] for r in rows],
                           **kw)
            mem = [(r['tokens'] / r['batch'], r['peak_mem_mb'] / r['batch'])
                   for r in rows if r.get('peak_mem_mb')]
            if mem:
                ax_row[1].plot(*zip(*mem), **kw)
        for ax, title in zip(ax_row, ('time per image (s)',
                                      'peak memory per image (MB)')):
            ax.set_xscale('log')
            ax.set_yscale('log')
            ax.set_xlabel('stage-1 tokens per image (H/4 x W/4)')
            ax.set_title(f'{mode}: {title}')
            ax.grid(True, which='both', alpha=0.3)
        ax_row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_csv(paths):
    """Rows of earlier benchmark.csv files, numbers as numbers."""
    rows = []
    for path in paths:
        with open(path) as f:
            for r in csv.DictReader(f):
                for key in ('batch', 'tokens', 'repeats', 'height', 'width'):
                    r[key] = int(r[key]) if r.get(key) else ''
                for key in ('median_s', 'min_s', 'images_per_s',
                            'peak_mem_mb', 'loadavg_1m'):
                    r[key] = float(r[key]) if r.get(key) else None
                rows.append(r)
    return rows


def limit_memory(gb):
    """Cap the process's address space (Linux, CPU runs): allocations
    beyond it raise instead of waking the OOM killer. Returns the cap in
    bytes or None."""
    try:
        import resource
        if gb is None:
            fields = {}
            for name in ('/proc/self/status', '/proc/meminfo'):
                with open(name) as f:
                    for line in f:
                        key, _, value = line.partition(':')
                        fields[key] = int(value.split()[0]) * 1024
            # 75%: the rest of the machine (other processes, page cache)
            # must not be squeezed into the OOM killer either
            cap = int(fields['VmSize'] + 0.75 * fields['MemAvailable'])
        else:
            cap = int(gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS,
                           (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
        return cap
    except (OSError, KeyError, ValueError, ImportError):
        return None


def environment(device):
    info = dict(torch=torch.__version__, device=device,
                threads=torch.get_num_threads(), cpus=os.cpu_count(),
                python=platform.python_version(),
                thp_alloc=os.environ.get('THP_MEM_ALLOC_ENABLE'))
    if device != 'cpu':
        info['gpu'] = torch.cuda.get_device_name(device)
    try:
        info['loadavg'] = ' '.join(f'{v:.2f}' for v in os.getloadavg())
    except OSError:
        pass
    return info


def save(results, pairs, args, env_start, start, final=False):
    """Write the CSV, the tables and the plot (after every group of
    measurements, so an interrupted run keeps what it measured)."""
    all_rows, ratio_rows = tables(results, pairs)
    env_now = environment(args.device)
    text = (f'environment: {env_start}\nload average '
            f'{"at the end" if final else "now"}: {env_now.get("loadavg")}\n'
            f'repeats {args.repeat}, warm-up {args.warmup}, '
            f'{time.time() - start:.0f} s\n\n{all_rows}\n\n'
            f'Pola / baseline:\n\n{ratio_rows}\n')
    if isinstance(env_start, str):  # merged from CSV files
        text = (f'{env_start}\n\n{all_rows}\n\nPola / baseline:\n\n'
                f'{ratio_rows}\n')
    with open(osp.join(args.out_dir, 'benchmark.md'), 'w') as f:
        f.write(text)
    with open(osp.join(args.out_dir, 'benchmark.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, FIELDS, extrasaction='ignore')
        writer.writeheader()
        for r in results:
            writer.writerow({k: r.get(k, '') for k in FIELDS})
    if not args.no_plot:
        plot(results, osp.join(args.out_dir, 'benchmark.png'))
    return text


def loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return ''


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings('ignore')
    os.makedirs(args.out_dir, exist_ok=True)
    if args.from_csv:
        results = read_csv(args.from_csv)
        pairs = dict(PAIRS)
        pairs.update({r['model']: r['model'].replace('mmpola_core',
                                                     'released_core')
                      for r in results
                      if r['model'].startswith('mmpola_core')})
        args.repeat = args.warmup = 'as measured'
        text = save(results, pairs, args, f'merged from {args.from_csv}',
                    time.time(), final=True)
        print(text)
        return
    import mmpola.ops
    if args.pola_impl:
        mmpola.ops.set_pola_impl(args.pola_impl)
    env_start = environment(args.device)
    env_start['pola_impl'] = mmpola.ops.get_pola_impl()
    from mmpola.models import cpu_executor
    if args.cpu_executor:
        cpu_executor.set_cpu_executor(args.cpu_executor == 'on')
    env_start['cpu_executor'] = cpu_executor.get_cpu_executor()
    if args.device == 'cpu' and args.mem_limit_gb != 0:
        try:  # import what the models need first: the cap is set above it
            import mmdet.models  # noqa: F401
        except ImportError:
            pass
        cap = limit_memory(args.mem_limit_gb)
        if cap:
            env_start['address_space_cap_gb'] = f'{cap / 2**30:.1f}'
    print('environment: ' + ', '.join(f'{k} {v}'
                                      for k, v in env_start.items()))
    results, built = [], {}
    pairs = dict(PAIRS)
    start = time.time()
    for mode in [m for m in args.mode if m != 'core']:
        for size in args.sizes:
            H, W, batch = parse_size(size, args.batch)
            label = f'[{mode} {H}x{W} b{batch}]'
            print(f'{label} {", ".join(args.models)}', flush=True)
            try:
                works = model_workloads(args.models, H, W, batch, mode,
                                        args.device, built)
            except Exception as e:  # noqa: BLE001  (report, go on)
                print(f'  {label} skipped: {e}', flush=True)
                continue
            load = loadavg()
            rows = measure(works, args.repeat, args.warmup, args.device,
                           not args.no_memory, label)
            for row in rows.values():
                results.append(dict(mode=mode, size=f'{H}x{W}', height=H,
                                    width=W, loadavg_1m=load, **row))
            del works
            save(results, pairs, args, env_start, start)
    if 'core' in args.mode:
        for spec in args.core_heads:
            heads, dims = (int(v) for v in spec.lower().split('x'))
            for backward in (False, True):
                mode = 'core_fwd_bwd' if backward else 'core_fwd'
                label = (f'[{mode} {args.core_batch}x{args.core_tokens} '
                         f'h{heads} d{dims}]')
                print(label, flush=True)
                works = core_workloads(args.core_batch, args.core_tokens,
                                       heads, dims, backward, args.device)
                load = loadavg()
                rows = measure(works, args.repeat, args.warmup, args.device,
                               not args.no_memory, label)
                for row in rows.values():
                    row.pop('images_per_s', None)
                    results.append(dict(mode=mode, size=f'{heads}x{dims}',
                                        height='', width='', loadavg_1m=load,
                                        **row))
                pairs[f'mmpola_core[{heads}x{dims}]'] = \
                    f'released_core[{heads}x{dims}]'
                del works
                save(results, pairs, args, env_start, start)
    text = save(results, pairs, args, env_start, start, final=True)
    print('\n' + text)
    print(f'wrote {args.out_dir}/benchmark.{{csv,md' +
          ('' if args.no_plot else ',png') + '}')


if __name__ == '__main__':
    main()
