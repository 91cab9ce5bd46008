#!/usr/bin/env python
"""The GPU check: the device-aware tests on the GPU, then the benchmark on
it. Run it on a machine with a GPU (offline: ``bash tools/gpu_check.sh run
OUT`` installs the wheels of ``make gpu-wheels`` first)::

    python tools/gpu_check.py --out OUT [--device cuda] [--tests ...]
        [--sizes 224@64 800x1333@2] [--graph eager compile] [--repeat 5]

1. ``pytest --device DEVICE`` on the tests that run on any device (the
   core, the layer, the backbones, checkpoint loading, export) ->
   ``OUT/pytest.log``, ``OUT/pytest.xml`` and ``OUT/tests.csv`` (one row per
   test: name, outcome, seconds).
2. ``tools/analysis/benchmark.py --device DEVICE``: Pola-PVT-T / Pola-Swin-T
   against mmdet's PVT-T / Swin-T and mmpretrain's Swin-T, inference and a
   training step, eager and ``torch.compile`` -> ``OUT/benchmark.csv`` (and
   ``benchmark.png`` with matplotlib), ``OUT/benchmark.log``.

The exit status is non-zero when a test fails or errs, a benchmark row
fails, or a Pola model has no measured row: failures fail. A baseline whose
package does not import (mmdet where mmcv has no compiled ops) is reported
``unavailable``.
"""
import argparse
import csv
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ['tests/test_ops.py', 'tests/test_pola_attention.py',
         'tests/test_backbones.py', 'tests/test_checkpoint.py',
         'tests/test_export.py']


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--device', default='cuda')
    p.add_argument('--tests', nargs='*', default=TESTS,
                   help='pytest files / node ids (none: skip the tests)')
    p.add_argument('--models', default='pola_pvt_t,pvt_t,pola_swin_t,swin_t,'
                   'swin_t_mmpretrain')
    p.add_argument('--sizes', nargs='+', default=['224@64', '800x1333@2'])
    p.add_argument('--mode', nargs='+', default=['infer', 'train'])
    p.add_argument('--graph', nargs='+', default=['eager', 'compile'])
    p.add_argument('--repeat', type=int, default=3)
    return p.parse_args(argv)


def run(cmd, log):
    """Run ``cmd`` from the repository root, its output to the console and
    to ``log``; returns its exit status."""
    print('$ ' + ' '.join(cmd), flush=True)
    paths = [str(ROOT)] + os.environ.get('PYTHONPATH', '').split(os.pathsep)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)))
    with open(log, 'w') as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        for line in proc.stdout:
            sys.stdout.write(line)
            f.write(line)
    return proc.wait()


def junit_to_csv(xml_path, csv_path):
    """One row per test case of pytest's JUnit XML; returns the rows."""
    rows = []
    for case in ET.parse(xml_path).getroot().iter('testcase'):
        outcome = 'passed'
        for tag in ('failure', 'error', 'skipped'):
            if case.find(tag) is not None:
                outcome = {'failure': 'failed'}.get(tag, tag)
        rows.append(dict(test=f'{case.get("classname")}::{case.get("name")}',
                         outcome=outcome, seconds=case.get('time')))
    with open(csv_path, 'w', newline='') as f:
        writer = csv.DictWriter(f, ['test', 'outcome', 'seconds'])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    failures = []
    if args.tests:
        status = run([sys.executable, '-m', 'pytest', *args.tests,
                      '--device', args.device, '-q', '-p', 'no:cacheprovider',
                      f'--junitxml={out / "pytest.xml"}'], out / 'pytest.log')
        rows = (junit_to_csv(out / 'pytest.xml', out / 'tests.csv')
                if (out / 'pytest.xml').exists() else [])
        bad = [r['test'] for r in rows if r['outcome'] in ('failed', 'error')]
        if status != 0 or not rows:
            failures.append(f'pytest exited with {status}: {bad[:10]}')
    status = run([sys.executable, 'tools/analysis/benchmark.py',
                  '--device', args.device, '--models', args.models,
                  '--sizes', *args.sizes, '--mode', *args.mode,
                  '--graph', *args.graph, '--repeat', str(args.repeat),
                  '--out-dir', str(out)], out / 'benchmark.log')
    bench = out / 'benchmark.csv'
    rows = []
    if bench.exists():
        with open(bench, newline='') as f:
            rows = list(csv.DictReader(f))
    unmeasured = sorted({r['model'] for r in rows if r['status'] != 'ok'
                         and r['model'].startswith('pola')})
    if status != 0 or not rows or unmeasured:
        failures.append(f'the benchmark exited with {status}, Pola models '
                        f'without a measurement: {unmeasured} '
                        f'({out / "benchmark.log"})')
    for failure in failures:
        print(f'[gpu_check] FAILED: {failure}', flush=True)
    print(f'[gpu_check] {"FAILED" if failures else "passed"}; outputs in '
          f'{out}', flush=True)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
