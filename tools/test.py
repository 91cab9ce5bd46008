"""Test (and evaluate) a checkpoint with an mmdet, mmseg or mmpretrain config.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE]
        [--show-dir DIR] [--cfg-options k=v ...] [--launcher pytorch]

``--out``: predictions as a pickle (mmdet, mmpretrain) or, for mmseg, a
directory of predicted label maps. ``--show-dir``: painted predictions.
Multi-process: ``tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [args]``.
"""
import argparse

from mmpola.utils.launch import (add_common_args, build_runner,
                                 load_config, shutdown_distributed)


def parse_args():
    parser = argparse.ArgumentParser(description='Test a model')
    parser.add_argument('config', help='test config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='where to dump the predictions')
    parser.add_argument('--show-dir', help='where to save painted results')
    add_common_args(parser)
    return parser.parse_args()


def enable_visualization(cfg, show_dir):
    """Turn on the codebase's visualization hook, saving under show_dir."""
    hook = cfg.default_hooks.visualization
    if cfg.default_scope == 'mmpretrain':
        hook.update(enable=True, out_dir=show_dir)
    elif cfg.default_scope == 'mmdet':
        hook.update(draw=True, test_out_dir=show_dir)
    else:  # mmseg saves through its visualizer
        hook.update(draw=True)
        cfg.visualizer.save_dir = show_dir


def dump_metric(scope, out):
    """A metric that dumps the predictions to the pickle file ``out``."""
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults  # masks as RLE
        return DumpDetResults(out_file_path=out)
    from mmengine.evaluator import DumpResults
    return DumpResults(out_file_path=out)


def main():
    args = parse_args()
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        enable_visualization(cfg, args.show_dir)
    if args.out and cfg.default_scope == 'mmseg':
        # mmseg's IoUMetric writes the predicted label maps itself
        cfg.test_evaluator.update(output_dir=args.out, keep_results=True)
    runner = build_runner(cfg)
    if args.out and cfg.default_scope != 'mmseg':
        runner.test_evaluator.metrics.append(
            dump_metric(cfg.default_scope, args.out))
    try:
        runner.test()
    finally:
        shutdown_distributed()


if __name__ == '__main__':
    main()
