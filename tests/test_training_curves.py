"""Seeing training go: every config keeps its best checkpoint by the task's
metric and writes MMEngine's scalars; ``tools/analysis/plot_logs.py``
plots them (docs/training_curves.md)."""
import glob
import os.path as osp
import runpy
import sys

import pytest
from mmengine.config import Config
from PIL import Image

import mmpola  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(
    osp.relpath(p, ROOT)
    for p in glob.glob(osp.join(ROOT, 'configs', '*', '*', '*.py')))
TOOL = osp.join(ROOT, 'tools', 'analysis', 'plot_logs.py')
BEST = {'mmdet': 'coco/bbox_mAP', 'mmseg': 'mIoU',
        'mmpretrain': 'accuracy/top1'}


@pytest.mark.parametrize('rel_path', CONFIGS)
def test_configs_keep_the_best_checkpoint_and_write_scalars(rel_path):
    cfg = Config.fromfile(osp.join(ROOT, rel_path))
    hook = cfg.default_hooks.checkpoint
    assert hook.type == 'CheckpointHook'
    assert hook.save_best == BEST[cfg.default_scope]
    assert hook.rule == 'greater'
    backends = [b['type'] for b in cfg.visualizer.vis_backends]
    assert 'LocalVisBackend' in backends  # vis_data/scalars.json
    if rel_path.startswith(osp.join('configs', 'custom')):
        assert cfg.val_evaluator.get('classwise', True)  # per-class AP


def _write_run(work_dir, run, by_epoch, metric, values):
    """A run's scalars as MMEngine writes them (its LocalVisBackend):
    training records every 2 iterations, an evaluation per epoch."""
    from mmengine.visualization import LocalVisBackend
    backend = LocalVisBackend(str(work_dir / run / 'vis_data'))
    iters_per_epoch = 4
    for epoch, value in enumerate(values, 1):
        for it in range(2, iters_per_epoch + 1, 2):
            step = (epoch - 1) * iters_per_epoch + it
            record = dict(lr=1e-4, loss=2.0 / step, loss_cls=1.0 / step,
                          iter=step)
            if by_epoch:
                record['epoch'] = epoch
            backend.add_scalars(record, step=step)
        backend.add_scalars({metric: value, 'data_time': 0.01},
                            step=epoch if by_epoch else
                            epoch * iters_per_epoch)
    backend.close()
    return work_dir / run / 'vis_data' / 'scalars.json'


def _run_tool(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, 'argv', [TOOL, *[str(a) for a in args]])
    runpy.run_path(TOOL, run_name='__main__')
    return capsys.readouterr().out


def test_plot_logs_reads_mmengine_scalars(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, osp.dirname(TOOL))
    try:
        import plot_logs
    finally:
        sys.path.remove(osp.dirname(TOOL))
    det = tmp_path / 'det'
    _write_run(det, '20261201_000000', True, 'coco/bbox_mAP', [0.1, 0.3])
    latest = _write_run(det, '20261202_000000', True, 'coco/bbox_mAP',
                        [0.2, 0.4, 0.5])
    # a work dir -> its latest run
    assert plot_logs.find_scalars(str(det)) == str(latest)
    got = plot_logs.curves(str(latest), ['loss', 'coco/bbox_mAP'])
    xs, ys, label = got['loss']
    assert label == 'iteration' and xs == [2, 4, 6, 8, 10, 12]
    assert ys[0] == pytest.approx(1.0)
    assert got['coco/bbox_mAP'] == ([1, 2, 3], [0.2, 0.4, 0.5], 'epoch')
    # iteration-based runs (mmseg): metrics against the iteration
    seg = _write_run(tmp_path / 'seg', 'run', False, 'mIoU', [10., 20.])
    assert plot_logs.curves(str(seg), ['mIoU'])['mIoU'] == (
        [4, 8], [10., 20.], 'iteration')

    out = tmp_path / 'curves.png'
    printed = _run_tool(monkeypatch, capsys, det, seg.parent.parent,
                        '--keys', 'loss', 'lr', '--legend', 'det', 'seg',
                        '--out', out)
    assert f'wrote {out}' in printed
    with Image.open(out) as img:
        assert img.format == 'PNG'
        assert img.size == (700, 520)  # 7 x 2.6 inches per panel at 100 dpi


def test_plot_logs_errors_name_the_problem(tmp_path, monkeypatch, capsys):
    run = _write_run(tmp_path, 'run', True, 'accuracy/top1', [50.])
    with pytest.raises(ValueError, match="'mIoU' is in none of the runs; "
                       r"they have \[.*'accuracy/top1'"):
        _run_tool(monkeypatch, capsys, run, '--keys', 'mIoU', '--out',
                  tmp_path / 'x.png')
    with pytest.raises(ValueError, match='2 names for 1 runs'):
        _run_tool(monkeypatch, capsys, run, '--legend', 'a', 'b', '--out',
                  tmp_path / 'x.png')
    with pytest.raises(ValueError, match='no scalars.json'):
        _run_tool(monkeypatch, capsys, tmp_path / 'empty', '--out',
                  tmp_path / 'x.png')
