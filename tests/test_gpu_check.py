"""tools/gpu_check.py in its CPU mode at tiny sizes, so that the script the
GPU machine runs (docs/install.md, "GPU check") cannot rot between runs."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # about 45 s on an idle 2-core machine
@pytest.mark.timeout(900)
def test_gpu_check_cpu_mode(tmp_path):
    out = tmp_path / 'out'
    cmd = [sys.executable, str(ROOT / 'tools' / 'gpu_check.py'),
           '--device', 'cpu', '--tiny', '--out', str(out),
           '--budget-s', '900',
           # the pytest section, on one quick test of this suite
           '--test-files',
           'tests/test_environment.py::test_mmcv_nms_hand_checked',
           # Dynamo's graph capture without Inductor's code generation:
           # exercises the torch.compile rows at a fraction of the cost
           # (the Pola backbones only: Dynamo of torch 2.1 takes many
           # minutes over mmpretrain's Swin)
           '--compile', 'on', '--compile-backend', 'eager',
           '--compile-precisions', 'fp32',
           '--compile-models', 'pola_pvt_t,pola_swin_t']
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=880,
                          env={**__import__('os').environ,
                               'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stdout[-6000:]

    assert (out / 'env.json').exists()
    tests = _rows(out / 'tests.csv')
    assert [(r['test'], r['outcome']) for r in tests] == [
        ('test_mmcv_nms_hand_checked', 'passed')]

    train = _rows(out / 'train.csv')
    assert {(r['model'], r['precision']) for r in train} == {
        (m, p) for m in ('pola_pvt_t', 'pola_swin_t')
        for p in ('fp32', 'amp', 'bf16')}
    # AMP's fp16 autocast exists on the CPU from torch 2.4 on ('unsupported'
    # before); everything else must run
    assert all(r['status'] == 'ok' or (r['status'] == 'unsupported' and
                                       r['precision'] == 'amp')
               for r in train), train
    for r in train:  # same weights and input: low precision stays close
        if r['status'] == 'ok' and r['precision'] != 'fp32':
            assert float(r['rel_diff_first_loss_vs_fp32']) < 0.1, r

    bench = _rows(out / 'bench.csv')
    ok = {(r['model'], r['input'], r['precision'], r['mode'])
          for r in bench if r['status'] == 'ok' or
          (r['status'] == 'unsupported' and r['precision'] == 'amp')}
    models = {r['model'] for r in bench if r['status'] == 'ok'}
    # the Pola backbones and mmpretrain's softmax Swin always; mmdet's PVT
    # here too (this environment's mmcv has its ops)
    assert {'pola_pvt_t', 'pola_swin_t', 'swin_t_mmpretrain',
            'pvt_t_mmdet'} <= models, bench
    for m in models:
        for inp in ('64x64', '96x128'):
            for p in ('fp32', 'amp', 'bf16'):
                assert (m, inp, p, 'eager') in ok, (m, inp, p)
            if m.startswith('pola'):
                assert (m, inp, 'fp32', 'compile') in ok, (m, inp)
    assert (out / 'summary.md').read_text().startswith('# mmpola GPU check')
    pytest.importorskip('matplotlib')
    assert (out / 'bench.png').stat().st_size > 1000
