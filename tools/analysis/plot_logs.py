"""Plot loss, learning rate and metric curves of training runs.

    python tools/analysis/plot_logs.py RUN [RUN ...] [--keys loss mIoU]
        [--legend NAME ...] [--title T] [--out curves.png]

RUN: a work dir (its latest ``<time>/vis_data/scalars.json``), a run dir
(``<time>``) or a ``scalars.json``: the scalars MMEngine's
``LocalVisBackend`` writes for every config of mmdet, mmseg and mmpretrain
(one JSON object per line: training records with ``lr`` and the losses at
an iteration ``step``; evaluation records with the metrics at an epoch or
iteration ``step``). One panel per key, one line per run; training keys
against the iteration, metrics against the epoch (epoch-based runs) or the
iteration. The argument names follow MMDetection's
``tools/analysis_tools/analyze_logs.py plot_curve``.
"""
import argparse
import glob
import json
import os.path as osp

DEFAULT_KEYS = ('loss', )


def find_scalars(run):
    """The ``scalars.json`` of a work dir (the latest run), a run dir or
    the file itself."""
    if osp.isfile(run):
        return run
    for pattern in ('vis_data/scalars.json', '*/vis_data/scalars.json'):
        found = sorted(glob.glob(osp.join(run, pattern)))
        if found:
            return found[-1]  # run dirs are named by start time
    raise ValueError(f'{run}: no scalars.json (expected a work dir, a run '
                     'dir or the file; MMEngine writes '
                     '<work_dir>/<time>/vis_data/scalars.json)')


def load_scalars(path):
    """``(train, val, by_epoch)``: training and evaluation records (lists of
    dicts, each with ``step``) and whether evaluation steps are epochs."""
    train, val = [], []
    with open(path, encoding='utf-8') as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                (train if 'lr' in record else val).append(record)
    by_epoch = any('epoch' in r for r in train)
    return train, val, by_epoch


def curves(path, keys):
    """``{key: (xs, ys, x_label)}`` for the keys present in ``path``."""
    train, val, by_epoch = load_scalars(path)
    out = {}
    for key in keys:
        for records, x_label in ((train, 'iteration'),
                                 (val, 'epoch' if by_epoch else 'iteration')):
            points = [(r['step'], r[key]) for r in records if key in r]
            if points:
                xs, ys = zip(*points)
                out[key] = (list(xs), list(ys), x_label)
                break
    return out


def plot(runs, keys, legend=None, title=None, out=None):
    """Draw one panel per key; save to ``out`` (or show). Returns the
    figure."""
    import matplotlib
    if out:
        matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    legend = legend or [osp.basename(osp.normpath(r)) for r in runs]
    if len(legend) != len(runs):
        raise ValueError(f'--legend: {len(legend)} names for {len(runs)} '
                         'runs')
    data = [curves(find_scalars(r), keys) for r in runs]
    for key in keys:
        if not any(key in d for d in data):
            names = sorted({k for r in runs for rec in sum(
                load_scalars(find_scalars(r))[:2], []) for k in rec})
            raise ValueError(f'--keys: {key!r} is in none of the runs; '
                             f'they have {names}')
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.6 * len(keys)),
                             squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        for name, d in zip(legend, data):
            if key in d:
                xs, ys, x_label = d[key]
                ax.plot(xs, ys, marker='o' if len(xs) < 30 else None,
                        markersize=3, label=name)
                ax.set_xlabel(x_label)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if out:
        fig.savefig(out, dpi=100)
        plt.close(fig)
    else:
        plt.show()
    return fig


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('json_logs', nargs='+', metavar='RUN',
                        help='work dirs, run dirs or scalars.json files')
    parser.add_argument('--keys', nargs='+', default=list(DEFAULT_KEYS),
                        help='scalars to plot, e.g. loss lr coco/bbox_mAP '
                        'mIoU accuracy/top1')
    parser.add_argument('--legend', nargs='+', help='one name per run')
    parser.add_argument('--title')
    parser.add_argument('--out', help='PNG to write (default: show)')
    args = parser.parse_args()
    plot(args.json_logs, args.keys, args.legend, args.title, args.out)
    if args.out:
        print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
