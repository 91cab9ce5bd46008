"""Argument handling of tools/train.py and tools/test.py (no training)."""
import importlib.util
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
default_scope = 'mmdet'
custom_imports = dict(imports=['os.path'], allow_failed_imports=False)
model = dict(type='Foo')
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1))
auto_scale_lr = dict(enable=False, base_batch_size=16)
env_cfg = dict(dist_cfg=dict(backend='nccl'))
default_hooks = dict(visualization=dict(type='DetVisualizationHook'))
test_evaluator = dict(type='SomeMetric')
"""


def run_main(tool, argv, monkeypatch):
    """Run ``tools/<tool>.py`` with ``argv``; return the config it would
    have built the Runner from."""
    spec = importlib.util.spec_from_file_location(tool, ROOT / 'tools' /
                                                  f'{tool}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = []

    class FakeRunner:
        train = test = staticmethod(lambda: None)
        test_evaluator = SimpleNamespace(metrics=[])

    def build_runner(cfg):
        built.append(cfg)
        return FakeRunner()

    monkeypatch.setattr(module, 'build_runner', build_runner)
    monkeypatch.setattr(sys, 'argv', [tool] + [str(a) for a in argv])
    module.main()
    return built[0], FakeRunner.test_evaluator.metrics


@pytest.fixture
def config(tmp_path):
    path = tmp_path / 'my_config.py'
    path.write_text(CONFIG)
    return path


def test_train_args(config, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg, _ = run_main('train', [config, '--amp', '--auto-scale-lr',
                                '--cfg-options', 'model.depth=3'], monkeypatch)
    assert cfg.custom_imports.imports == ['os.path', 'mmpola']
    assert cfg.work_dir == './work_dirs/my_config' and cfg.launcher == 'none'
    assert cfg.model == dict(type='Foo', depth=3)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    assert cfg.auto_scale_lr.enable and not cfg.get('resume')

    cfg, _ = run_main('train', [config, '--resume'], monkeypatch)
    assert cfg.resume and cfg.load_from is None  # latest in the work dir
    cfg, _ = run_main(
        'train', [config, '--resume', 'a.pth', '--work-dir', 'w'], monkeypatch)
    assert cfg.resume and cfg.load_from == 'a.pth' and cfg.work_dir == 'w'


def test_test_args(config, monkeypatch):
    cfg, dumps = run_main('test', [config, 'model.pth', '--work-dir', 'w',
                                   '--show-dir', 'painted', '--out', 'p.pkl'],
                          monkeypatch)
    assert cfg.load_from == 'model.pth' and not cfg.get('resume')
    assert 'mmpola' in cfg.custom_imports.imports
    assert cfg.default_hooks.visualization.draw
    assert cfg.default_hooks.visualization.test_out_dir == 'painted'
    assert [type(m).__name__ for m in dumps] == ['DumpDetResults']


def test_test_out_per_codebase(config, monkeypatch):
    """--out: mmpretrain dumps a pickle, mmseg writes label maps."""
    cfg, dumps = run_main(
        'test', [config, 'm.pth', '--out', 'p.pkl', '--cfg-options',
                 'default_scope=mmpretrain'], monkeypatch)
    assert [type(m).__name__ for m in dumps] == ['DumpResults']
    cfg, dumps = run_main('test', [config, 'm.pth', '--out', 'maps',
                                   '--cfg-options', 'default_scope=mmseg'],
                          monkeypatch)
    assert not dumps and cfg.test_evaluator.output_dir == 'maps'
    assert cfg.test_evaluator.keep_results


def test_cpu_distributed(config, monkeypatch):
    """Without CUDA, a torchrun-launched tool uses gloo and CPU DDP."""
    import torch
    import torch.distributed as dist
    from mmpola.utils.launch import _use_cpu_distributed
    from mmengine.config import Config
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = str(s.getsockname()[1])
    for key, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1',
                           MASTER_ADDR='127.0.0.1', MASTER_PORT=port).items():
        monkeypatch.setenv(key, value)
    cfg = Config.fromfile(config)
    cfg.launcher = 'pytorch'
    try:
        _use_cpu_distributed(cfg)
        assert dist.get_backend() == 'gloo'
    finally:
        dist.destroy_process_group()
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == 'MMDistributedDataParallel'
    assert cfg.model_wrapper_cfg.device_ids is None
    cfg.launcher = 'slurm'
    with pytest.raises(RuntimeError, match='needs CUDA'):
        _use_cpu_distributed(cfg)
