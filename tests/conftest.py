"""Shared fixtures: the device the tests run on, small generated datasets
and a way to run the tools."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption(
        '--device', default=None,
        help='torch device for the ops, layer, backbone, checkpoint and '
        'export tests (default: cuda when available, else cpu)')


@pytest.fixture(scope='session')
def device(request):
    """The ``--device`` the tests run on, as a torch.device. On CUDA, TF32
    is off so that float32 results compare with float32 tolerances."""
    name = request.config.getoption('--device') or (
        'cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(name)
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise pytest.UsageError(f'--device {name}: {e}') from e
    if dev.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return dev


@pytest.fixture(scope='session')
def coco_root(tmp_path_factory):
    from mmpola.datasets import make_coco
    root = tmp_path_factory.mktemp('coco')
    make_coco(str(root), num_train=4, num_val=2, img_size=(128, 160))
    return root


@pytest.fixture(scope='session')
def photo():
    """A real photograph shipped by an installed package: matplotlib's
    sample image of Grace Hopper (600 x 512 pixels, JPEG)."""
    from matplotlib.cbook import get_sample_data
    return get_sample_data('grace_hopper.jpg', asfileobj=False)


@pytest.fixture(scope='session')
def released_file(tmp_path_factory):
    """``released_file('pola_pvt_tiny')``: the path of a random-valued
    checkpoint in the released layout (:mod:`mmpola.testing`), written once
    per session."""
    from mmpola.testing import make_official_checkpoint
    root = tmp_path_factory.mktemp('released')
    made = {}

    def get(name):
        if name not in made:
            made[name] = root / f'{name}.pth'
            make_official_checkpoint(name, str(made[name]))
        return made[name]

    return get


@pytest.fixture(scope='session')
def run_tool():
    """``run_tool('tools/train.py', *args)`` from the repo root; returns the
    combined output and fails the test, showing it, if the tool fails."""

    def run(tool, *args, timeout=300):
        env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()))
        # one thread per process: OpenMP threads spin-waiting on a busy
        # 2-core machine make a step several times slower
        env.setdefault('OMP_NUM_THREADS', '1')
        cmd = ['bash' if tool.endswith('.sh') else sys.executable, tool]
        proc = subprocess.run(
            cmd + [str(a) for a in args], cwd=ROOT, env=env, timeout=timeout,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.returncode == 0, proc.stdout[-6000:]
        return proc.stdout

    return run


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'slow: long-running (torch.compile, whole-model '
        'training); `pytest -m "not slow"` (make test-fast) skips them')


# Whole-tool runs (train / test / dist launchers on generated data, the
# benchmark's command line, the custom-dataset fine-tuning, the inferencers
# and the image demo on every config), every config's one-step training and
# the ONNX exports (the dynamo exporter: 10 s each) are the slow tier: make
# test-fast (`-m "not slow"`) keeps the unit tests for the edit loop.
SLOW_FILES = ('test_tools_cls.py', 'test_tools_det.py', 'test_tools_seg.py',
              'test_tools_launch.py', 'test_custom_dataset.py',
              'test_inference.py')
SLOW_TESTS = ('test_config_trains_one_step', 'test_benchmark_cli',
              'test_onnx_export_runs_in_onnxruntime',
              'test_tools_test_py_takes_a_released_file')


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.fspath.basename in SLOW_FILES
                or item.originalname in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
