"""tools/gpu_check.py on the test device at a tiny size, so that the script
a person runs on a GPU machine cannot rot: its outputs, and that failures
fail."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def gpu_check(out, device, *args):
    cmd = [sys.executable, str(ROOT / 'tools' / 'gpu_check.py'), '--out',
           str(out), '--device', device.type, '--models',
           'pola_pvt_t,pvt_t', '--sizes', '32@2', '--graph', 'eager',
           '--repeat', '1', *args]
    return subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)


def rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_gpu_check_writes_tests_and_benchmark(device, tmp_path):
    proc = gpu_check(tmp_path, device, '--tests',
                     'tests/test_ops.py::test_switch_precedence')
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert [(r['test'], r['outcome']) for r in rows(tmp_path / 'tests.csv')
            ] == [('tests.test_ops::test_switch_precedence', 'passed')]
    bench = rows(tmp_path / 'benchmark.csv')
    assert {(r['mode'], r['model'], r['device']) for r in bench} == {
        (m, model, device.type) for m in ('infer', 'train')
        for model in ('pola_pvt_t', 'pvt_t')}
    assert all(r['status'] == 'ok' for r in bench)
    assert 'passed' in (tmp_path / 'pytest.log').read_text()


@pytest.mark.slow
def test_gpu_check_fails_when_a_test_fails(device, tmp_path):
    proc = gpu_check(tmp_path, device, '--tests', 'tests/no_such_test.py',
                     '--mode', 'infer')
    assert proc.returncode != 0
    assert '[gpu_check] FAILED: pytest exited with' in proc.stdout
