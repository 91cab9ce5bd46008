"""Time and peak memory: the Pola models against their softmax baselines,
side by side in one process.

    python tools/analysis/benchmark.py [--models pola_pvt_t pvt_t ...]
        [--sizes 224@32 800x1333] [--batch B] [--mode infer train]
        [--graph eager compile onnx] [--device cpu|cuda] [--autocast bf16]
        [--repeat 5] [--warmup 1] [--threads N] [--pola-impl auto]
        [--out-dir work_dirs/benchmark]

``--mode``: ``infer`` is a forward in eval mode under
``torch.inference_mode`` (``torch.no_grad`` when compiled: Dynamo's guards
on inference tensors fail on mmdet's PVT); ``train`` one training step
(forward in train mode, loss, backward; no optimiser step): for backbones
the loss is the sum of the outputs' means, whole models use their own
losses on random ground truth. ``--graph``: ``eager`` runs the module as it
is, ``compile`` runs ``torch.compile(model, dynamic=False)`` (compiled
during the warm-up calls), ``onnx`` exports it (TorchScript exporter, opset
17, mmdeploy's route) at each size and runs it in ONNX Runtime with as many
threads as torch (inference only; no peak memory: not torch's allocator).

Models (``--models``, comma lists too): pola_pvt_t, pvt_t (mmdet's
``PyramidVisionTransformer`` as in ``pvt/retinanet_pvt-t_fpn_1x_coco.py``),
pola_swin_t, swin_t (mmdet's ``SwinTransformer``, Swin-T; it neither
compiles nor exports: swin_t_mmpretrain, mmpretrain's, does), the detectors
retinanet_pola_pvt_t, retinanet_pvt_t, mask_rcnn_pola_swin_t,
mask_rcnn_swin_t (inference in 'tensor' mode: no post-processing), or any
spec ``get_flops.py --model`` takes. Sizes: ``N``, ``HxW``, with ``@B`` for
the batch (default 32 at 224x224, else 1; ``--batch`` sets every size's).

Timing: ``--warmup`` untimed calls per model, then ``--repeat`` rounds in
which every model runs once, in alternating order, so that drift of the
machine hits all models alike; median and minimum are reported (CUDA:
synchronised). Peak memory: one more call per model, the peak of live
tensor bytes above the start (``mmpola.analysis.measure.peak_memory``).
A model that fails (e.g. out of memory) is reported in ``status`` and the
run goes on; the exit status is then 1. A model whose package does not
import is ``unavailable``, which is not a failure.

Writes ``benchmark.csv`` and, with matplotlib, ``benchmark.png`` to
``--out-dir``; prints the table and the Pola / baseline ratios.
"""
import argparse
import contextlib
import csv
import math
import os
import os.path as osp
import statistics
import sys
import warnings

import torch

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

from mmpola.analysis.measure import peak_memory, time_call  # noqa: E402
from mmpola.analysis.models import (NAMED, PAIRS, build_model,  # noqa: E402
                                    make_data_samples, num_classes_of,
                                    padded_shape, training_loss)

FIELDS = ['mode', 'graph', 'size', 'batch', 'model', 'median_s', 'min_s',
          'images_per_s', 'peak_mem_mb', 'device', 'autocast', 'pola_impl',
          'status']
AUTOCAST = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def parse_size(text, batch=None):
    """'224@32' -> (224, 224, 32); '800x1333' -> (800, 1333, 1)."""
    size, _, b = text.partition('@')
    try:
        hw = [int(v) for v in size.lower().split('x')]
        if len(hw) == 1:
            hw *= 2
        if len(hw) != 2 or min(hw) < 1:
            raise ValueError
        if batch is None:
            batch = int(b) if b else (32 if hw == [224, 224] else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'size {text!r}: expected N, HxW, N@B or HxW@B') from None
    return hw[0], hw[1], batch


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description='Time and peak memory, Pola models vs their baselines')
    p.add_argument('--models', nargs='+',
                   default=['pola_pvt_t', 'pvt_t', 'pola_swin_t', 'swin_t'],
                   help=f'named: {", ".join(NAMED)}; comma lists ok')
    p.add_argument('--sizes', nargs='+', default=['224@32', '800x1333'],
                   help='N, HxW, with an optional @batch')
    p.add_argument('--batch', type=int, help='batch for every size')
    p.add_argument('--mode', nargs='+', default=['infer'],
                   choices=['infer', 'train'])
    p.add_argument('--graph', nargs='+', default=['eager'],
                   choices=['eager', 'compile', 'onnx'])
    p.add_argument('--device', default='cuda'
                   if torch.cuda.is_available() else 'cpu')
    p.add_argument('--autocast', choices=['fp16', 'bf16'],
                   help='run under torch.autocast with this dtype')
    p.add_argument('--repeat', type=int, default=5)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--threads', type=int,
                   help='torch.set_num_threads (default: torch default)')
    p.add_argument('--pola-impl',
                   choices=['auto', 'fast', 'grouped', 'reference'],
                   help='mmpola.ops.set_pola_impl for every run')
    p.add_argument('--no-memory', action='store_true',
                   help='skip the peak-memory calls')
    p.add_argument('--out-dir', default='work_dirs/benchmark')
    args = p.parse_args(argv)
    args.models = [m for spec in args.models for m in spec.split(',') if m]
    try:
        args.sizes = [parse_size(s, args.batch) for s in args.sizes]
    except argparse.ArgumentTypeError as e:
        p.error(str(e))
    if args.repeat < 1 or args.warmup < 0:
        p.error('--repeat must be >= 1 and --warmup >= 0')
    return args


def onnx_session(model, x, path, device):
    """``model`` exported at x's shape to ``path`` (TorchScript exporter,
    opset 17), in an ONNX Runtime session with torch's thread count."""
    import inspect

    import onnxruntime as ort
    kwargs = dict(opset_version=17)
    if 'dynamo' in inspect.signature(torch.onnx.export).parameters:
        kwargs['dynamo'] = False
    model.eval()  # not model.eval(): some backbones' train() returns None
    with torch.no_grad():
        torch.onnx.export(model, (x, ), path, **kwargs)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    providers = ['CPUExecutionProvider']
    if device.startswith('cuda'):
        providers.insert(0, 'CUDAExecutionProvider')
    return ort.InferenceSession(path, opts, providers=providers)


def workload(model, info, H, W, batch, mode, device, graph, out_dir=''):
    """``(prepare, run)`` of one model at one size: ``run()`` is one timed
    call."""
    task = info['task']
    Hp, Wp = padded_shape(H, W, info['pad_divisor'])
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, Hp, Wp, generator=gen).to(device)
    if graph == 'onnx':
        if task != 'backbone' or mode != 'infer':
            raise ValueError('--graph onnx: backbones, inference only')
        path = osp.join(out_dir, f'{info["name"]}_{H}x{W}_b{batch}.onnx')
        session = onnx_session(model, x, path, device)
        feed = {session.get_inputs()[0].name: x.cpu().numpy()}
        return (lambda: None), (lambda: session.run(None, feed))
    if mode == 'infer':
        samples = make_data_samples(task, batch, (H, W), (Hp, Wp))

        def run():
            with (torch.no_grad() if graph == 'compile' else
                  torch.inference_mode()):
                if task == 'backbone':
                    return model(x)
                return model(x, samples, mode='tensor')

        return (lambda: model.eval()), run
    samples = make_data_samples(task, batch, (H, W), (Hp, Wp), with_gt=True,
                                num_classes=num_classes_of(info['cfg']))
    if samples is not None:
        samples = [s.to(device) for s in samples]

    def run():
        training_loss(model, task, x, samples).backward()
        model.zero_grad(set_to_none=True)

    return (lambda: model.train()), run


def measure(works, args):
    """Time the workloads {name: (prepare, run)} side by side, then their
    peak memory. Returns {name: row}."""
    rows = {name: dict(model=name, status='ok', times=[]) for name in works}
    alive = list(works)
    ctx = (torch.autocast(torch.device(args.device).type,
                          dtype=AUTOCAST[args.autocast])
           if args.autocast else contextlib.nullcontext())

    def call(name, fn):
        prepare, run = works[name]
        try:
            prepare()
            with ctx:
                return fn(run)
        except Exception as e:  # noqa: BLE001 (out of memory, compiler...)
            msg = (str(e).splitlines() or [''])[0][:120]
            rows[name]['status'] = f'error: {type(e).__name__}: {msg}'
            print(f'    {name}: FAILED ({rows[name]["status"]})', flush=True)
            alive.remove(name)
            if args.device.startswith('cuda'):
                torch.cuda.empty_cache()

    def timed(run):
        return time_call(run, args.device)

    for _ in range(args.warmup):
        for name in list(alive):
            call(name, timed)
    for r in range(args.repeat):
        for name in (alive if r % 2 == 0 else alive[::-1]):
            t = call(name, timed)
            if t is not None:
                rows[name]['times'].append(t)
                print(f'    round {r + 1} {name}: {t:.3f} s', flush=True)
    for name in list(alive):
        if not args.no_memory:
            mem = call(name, lambda run: peak_memory(run, args.device))
            rows[name]['peak_mem_mb'] = None if mem is None else mem / 2**20
    for row in rows.values():
        times = row.pop('times')
        if times and row['status'] == 'ok':
            row.update(median_s=statistics.median(times), min_s=min(times))
    return rows


# baselines compared besides PAIRS' (mmdet's Swin neither compiles nor
# exports; mmpretrain's does)
MORE_BASELINES = {'pola_swin_t': 'swin_t_mmpretrain'}


def ratio_lines(results):
    """'Pola / baseline' lines: median time and peak memory ratios."""
    index = {(r['mode'], r['graph'], r['size'], r['model']): r
             for r in results}
    lines = []
    pairs = [(k, base) for k in index for base in (
        PAIRS.get(k[3]), MORE_BASELINES.get(k[3])) if base]
    for (mode, graph, size, model), base in pairs:
        r = index[(mode, graph, size, model)]
        b = index.get((mode, graph, size, base))
        if b is None or r['status'] != 'ok' or b['status'] != 'ok':
            continue
        ratios = [f'{key} {r[key] / b[key]:.2f}'
                  for key in ('median_s', 'min_s', 'peak_mem_mb')
                  if r.get(key) and b.get(key)]
        lines.append(f'{mode} {graph} {size}: {model} / {b["model"]}: '
                     + (', '.join(ratios) or '-'))
    return lines


def plot(results, path):
    """Median time and peak memory per image, one bar per model, grouped
    by (mode, graph, size)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    groups = sorted({(r['mode'], r['graph'], r['size']) for r in results})
    models = list(dict.fromkeys(r['model'] for r in results))
    index = {(r['mode'], r['graph'], r['size'], r['model']): r
             for r in results}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(models)
    for ax, key, title in ((axes[0], 'median_s', 'time per image (s)'),
                           (axes[1], 'peak_mem_mb',
                            'peak memory per image (MB)')):
        for j, model in enumerate(models):
            values = []
            for g in groups:
                r = index.get(g + (model, ), {})
                v = r.get(key)
                values.append(v / r['batch'] if v else math.nan)
            ax.bar([i + j * width for i in range(len(groups))], values,
                   width, label=model)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
        ax.set_xticklabels([' '.join(g) for g in groups], fontsize=8)
        ax.set_title(title)
        ax.grid(True, axis='y', alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings('ignore')
    os.makedirs(args.out_dir, exist_ok=True)
    import mmpola.ops
    if args.pola_impl:
        mmpola.ops.set_pola_impl(args.pola_impl)
    common = dict(device=args.device, autocast=args.autocast or 'none',
                  pola_impl=mmpola.ops.get_pola_impl())
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, '
          + ', '.join(f'{k} {v}' for k, v in common.items()), flush=True)
    built, unbuilt, results = {}, {}, []
    for name in args.models:
        try:
            model, info = build_model(name)
            built[name] = (model.to(args.device), info)
        except ImportError as e:  # a baseline's package is not there
            unbuilt[name] = f'unavailable: {type(e).__name__}: {e}'
            print(f'{name}: {unbuilt[name]}', flush=True)
        except Exception as e:  # noqa: BLE001 (reported, the run goes on)
            unbuilt[name] = f'error: cannot build: {type(e).__name__}: {e}'
            print(f'{name}: {unbuilt[name]}', flush=True)
    # exports before compiling: Dynamo's state can break the TorchScript
    # exporter on some modules (mmpretrain's Swin)
    order = ('eager', 'onnx', 'compile')
    for graph in sorted(args.graph, key=order.index):
        for mode in args.mode:
            if graph == 'onnx' and mode == 'train':
                print('[train onnx] skipped: ONNX Runtime runs inference')
                continue
            for H, W, batch in args.sizes:
                size = f'{H}x{W}'
                print(f'[{mode} {graph} {size} b{batch}]', flush=True)
                if graph != 'eager':
                    # static shapes, compiled afresh for every size and mode:
                    # graphs kept from another size count against Dynamo's
                    # recompile limit, past which frames run eagerly (mmdet's
                    # PVT, whose graph breaks make one frame per block call)
                    torch.compiler.reset()
                runnable = {name: (torch.compile(m, dynamic=False)
                                   if graph == 'compile' else m, info)
                            for name, (m, info) in built.items()}
                works, failed = {}, []
                for name, (m, info) in runnable.items():
                    try:
                        works[name] = workload(m, dict(info, name=name), H,
                                               W, batch, mode, args.device,
                                               graph, args.out_dir)
                    except Exception as e:  # noqa: BLE001 (export failed)
                        msg = (str(e).splitlines() or [''])[0][:120]
                        failed.append(dict(model=name, status='error: '
                                           f'{type(e).__name__}: {msg}'))
                        print(f'    {name}: FAILED ({failed[-1]["status"]})')
                margs = argparse.Namespace(**dict(
                    vars(args), no_memory=args.no_memory or graph == 'onnx'))
                rows = list(measure(works, margs).values()) + failed + [
                    dict(model=name, status=msg)
                    for name, msg in unbuilt.items()]
                for row in rows:
                    if row.get('median_s'):
                        row['images_per_s'] = batch / row['median_s']
                    results.append(dict(row, mode=mode, graph=graph,
                                        size=size, batch=batch, **common))
    csv_path = osp.join(args.out_dir, 'benchmark.csv')
    with open(csv_path, 'w', newline='') as f:
        writer = csv.DictWriter(f, FIELDS, extrasaction='ignore')
        writer.writeheader()
        for r in results:
            writer.writerow({k: r.get(k, '') for k in FIELDS})
    print('\n' + ' | '.join(FIELDS))
    for r in results:
        print(' | '.join(f'{r[k]:.4g}' if isinstance(r.get(k), float)
                         else str(r.get(k, '-')) for k in FIELDS))
    print('\nPola / baseline:\n' + '\n'.join(ratio_lines(results)))
    written = [csv_path]
    try:
        plot(results, osp.join(args.out_dir, 'benchmark.png'))
        written.append(osp.join(args.out_dir, 'benchmark.png'))
    except ImportError:
        pass
    print('wrote ' + ', '.join(written))
    failed = [r for r in results if r['status'].startswith('error')]
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
