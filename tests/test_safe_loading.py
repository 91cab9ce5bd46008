"""No checkpoint loading runs pickled code, through any door; errors name
the file; the released, converted and MMEngine files still load.

Each hostile file, if its payload ran, would create a marker file; every
test asserts that the marker never appears.
"""
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from mmengine.runner import CheckpointLoader, load_checkpoint

import mmpola  # noqa: F401 (registers the safe MMEngine loader)
from mmpola.checkpoint import load_pretrained, read_checkpoint
from mmpola.testing import make_official_checkpoint
from mmpola.utils.torch_load import (CorruptCheckpointError, InertCfgNode,
                                     UnsafeCheckpointError, safe_load)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------ payloads


class _System:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


class _Eval:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()", ))


class _Popen:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.Popen, (['touch', self.marker], ))


class _Getattr:
    """``getattr(OrderedDict, 'fromkeys')``: a getattr on something that is
    not a HistoryBuffer statistic (the first step of a gadget chain)."""

    def __init__(self, marker):
        pass

    def __reduce__(self):
        return (getattr, (OrderedDict, 'fromkeys'))


class _Holder:
    """An arbitrary class (not allow-listed) holding the payload."""

    def __init__(self, payload):
        self.payload = payload


PAYLOADS = {'os.system': _System, 'builtins.eval': _Eval,
            'subprocess.Popen': _Popen, 'builtins.getattr': _Getattr}


def _nest(payload, where, tensors=True):
    # a raw pickle.dump stream pickles tensors through a refused global
    # of its own (torch.storage._load_from_bytes): plain lists there
    tensors = {'w': torch.ones(2) if tensors else [1.0, 1.0]}
    if where == 'top':
        return payload
    if where == 'dict':
        return {'state_dict': tensors, 'meta': {'a': [1, {'b': payload}]}}
    if where == 'list':
        return {'state_dict': tensors, 'x': [0, (1, [payload])]}
    if where == 'object':
        return {'state_dict': tensors, 'x': _Holder(payload)}
    if where == 'history_buffer':  # inside an allow-listed object's state
        buf = HistoryBuffer()
        buf.update(1.0)
        buf.extra = payload
        return {'state_dict': tensors, 'message_hub': {'log_scalars': {
            'loss': buf}}}
    raise ValueError(where)


def write_hostile(path, fmt, payload='os.system', where='dict'):
    """A hostile file: ``fmt`` 'zip' (torch.save), 'legacy' (non-zip
    torch.save) or 'pickle' (a raw ``pickle.dump`` stream)."""
    marker = Path(str(path) + '.pwned')
    obj = _nest(PAYLOADS[payload](marker), where, tensors=fmt != 'pickle')
    if fmt == 'pickle':
        with open(path, 'wb') as f:
            pickle.dump(obj, f)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt == 'zip')
    return marker


def expect_refused(call, path, marker, name=None,
                   error=pickle.UnpicklingError):
    with pytest.raises(error) as info:
        call()
    msg = str(info.value)
    assert str(path) in msg
    if name is not None:
        assert name in msg, msg
    assert not marker.exists(), 'the payload ran'
    return info


# -------------------------------------------------- every file, safe_load


@pytest.mark.parametrize('fmt', ['zip', 'legacy', 'pickle'])
@pytest.mark.parametrize('payload', sorted(PAYLOADS))
def test_payloads_refused_in_every_format(tmp_path, fmt, payload):
    path = tmp_path / f'evil.{fmt}.pth'
    marker = write_hostile(path, fmt, payload, where='top')
    name = {'os.system': 'system', 'builtins.eval': 'eval',
            'subprocess.Popen': 'Popen', 'builtins.getattr': 'getattr'}
    info = expect_refused(lambda: safe_load(str(path)), path, marker,
                          name[payload])
    assert isinstance(info.value, UnsafeCheckpointError)


@pytest.mark.parametrize('where', ['dict', 'list', 'object',
                                   'history_buffer'])
@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_nested_payloads_refused(tmp_path, fmt, where):
    path = tmp_path / 'evil.pth'
    marker = write_hostile(path, fmt, 'os.system', where)
    expect_refused(lambda: safe_load(path), path, marker)


def test_history_buffer_statistics_getattr_allowed(tmp_path):
    """The one getattr MMEngine pickles (a HistoryBuffer statistic) reads
    as an inert reference; any other attribute, of anything, is refused."""

    class Stat:
        def __init__(self, buf, name):
            self.buf, self.name = buf, name

        def __reduce__(self):
            return (getattr, (self.buf, self.name))

    buf = HistoryBuffer()
    buf.update(2.0)
    path = tmp_path / 'ok.pth'
    torch.save({'stat': Stat(HistoryBuffer, 'mean'), 'buf': buf}, path)
    out = safe_load(path)
    assert out['stat'] is not HistoryBuffer.mean
    assert not callable(out['stat']) and out['stat'].name == 'mean'
    assert type(out['buf']) is HistoryBuffer and out['buf'].mean() == 2.0
    for target, name in ((HistoryBuffer, '__init__'), (buf, '__class__'),
                         (OrderedDict, 'fromkeys'),
                         (HistoryBuffer, '__getattribute__')):
        bad = tmp_path / 'bad.pth'
        torch.save({'stat': Stat(target, name)}, bad)
        with pytest.raises(UnsafeCheckpointError, match=f'getattr.*{name}'):
            safe_load(bad)


# --------------------------------------------------------- corrupt files


@pytest.mark.parametrize('kind', ['empty', 'text', 'truncated_zip',
                                  'truncated_legacy', 'garbage'])
def test_corrupt_files_name_the_file(tmp_path, kind):
    path = tmp_path / f'{kind}.pth'
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'text':
        path.write_text('this is not a checkpoint\n' * 10)
    elif kind == 'garbage':
        path.write_bytes(bytes(range(256)) * 8)
    else:
        full = tmp_path / 'full.pth'
        torch.save({'w': torch.randn(1000)}, full,
                   _use_new_zipfile_serialization=kind == 'truncated_zip')
        data = full.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CorruptCheckpointError) as info:
        safe_load(path)
    assert str(path) in str(info.value)
    # MMEngine's door names it too
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        CheckpointLoader.load_checkpoint(str(path))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        safe_load('/nonexistent/nope.pth')


# ------------------------------------------------------------ the doors


@pytest.fixture(params=['zip', 'legacy', 'pickle'])
def hostile(request, tmp_path):
    path = tmp_path / f'evil_{request.param}.pth'
    return path, write_hostile(path, request.param, 'os.system', 'dict')


def test_door_init_cfg_pretrained(hostile):
    path, marker = hostile
    model = MODELS.build(dict(type='PolaPVT', arch='tiny', init_cfg=dict(
        type='Pretrained', checkpoint=str(path))))
    expect_refused(model.init_weights, path, marker, 'system')


def test_door_read_checkpoint_and_load_pretrained(hostile):
    path, marker = hostile
    expect_refused(lambda: read_checkpoint(str(path)), path, marker)
    model = MODELS.build(dict(type='PolaSwin', arch='tiny'))
    expect_refused(lambda: load_pretrained(model, str(path)), path, marker)


def test_door_mmengine_load_checkpoint(hostile):
    path, marker = hostile
    expect_refused(lambda: load_checkpoint(nn.Linear(2, 2), str(path)),
                   path, marker)
    expect_refused(lambda: CheckpointLoader.load_checkpoint(str(path)),
                   path, marker)


class _Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, inputs, target=None, mode='loss'):
        out = self.fc(inputs)
        if mode == 'loss':
            return dict(loss=((out - target)**2).mean())
        return out


class _ToyData(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(4, generator=g),
                    target=torch.randn(2, generator=g))


def _runner(work_dir, max_iters, load_from=None, resume=False):
    from mmengine.runner import Runner
    _runner.count = getattr(_runner, 'count', 0) + 1
    return Runner(
        experiment_name=f'safe_loading_{os.getpid()}_{_runner.count}',
        model=_Toy(), work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=_ToyData(), batch_size=4,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=dict(type='LinearLR', start_factor=0.1, by_epoch=False,
                             end=4),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(
            type='CheckpointHook', interval=2, by_epoch=False)),
        load_from=load_from, resume=resume, randomness=dict(seed=0))


@pytest.mark.parametrize('resume', [False, True], ids=['load_from', 'resume'])
def test_door_runner_load_from_and_resume(hostile, tmp_path, resume):
    path, marker = hostile
    runner = _runner(tmp_path / 'work', 2, load_from=str(path), resume=resume)
    expect_refused(runner.load_or_resume, path, marker)


def test_mmengine_checkpoint_resumes(tmp_path):
    """MMEngine's own checkpoint (optimizer, scheduler, message hub with
    HistoryBuffers, numpy RNG state) resumes; torch alone refuses it."""
    first = _runner(tmp_path, 4)
    first.train()
    ckpt = tmp_path / 'iter_4.pth'
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt, weights_only=True)
    state = safe_load(ckpt)
    assert state['meta']['iter'] == 4
    assert isinstance(state['message_hub']['log_scalars']['train/loss'],
                      HistoryBuffer)
    second = _runner(tmp_path, 6, load_from=str(ckpt), resume=True)
    second.load_or_resume()
    assert second.iter == 4
    torch.testing.assert_close(second.model.fc.weight, first.model.fc.weight)
    assert second.optim_wrapper.optimizer.state_dict()['state']
    second.train()
    assert second.iter == 6


def test_numpy_data_loads(tmp_path):
    path = tmp_path / 'np.pth'
    obj = {'a': np.arange(6, dtype=np.float32).reshape(2, 3),
           'b': np.int64(3), 'c': np.dtype('float16'), 'd': [np.float64(1.5)]}
    torch.save(obj, path)
    out = safe_load(path)
    np.testing.assert_array_equal(out['a'], obj['a'])
    assert out['b'] == 3 and out['c'] == np.float16 and out['d'][0] == 1.5


def test_released_file_config_is_inert(tmp_path):
    path = tmp_path / 'pola_pvt_tiny.pth'
    make_official_checkpoint('pola_pvt_tiny', str(path))
    assert 'yacs' not in sys.modules
    ckpt = safe_load(path)
    assert type(ckpt['config']) is InertCfgNode
    assert isinstance(ckpt['config'], dict)
    assert ckpt['config']['MODEL']['TYPE'] == 'pola'
    assert ckpt['config']['MODEL']['PVT']['DEPTHS'] == [2, 2, 2, 2]
    assert ckpt['config'].yacs_state['__immutable__'] is True
    assert 'yacs' not in sys.modules


def test_door_converter(hostile, tmp_path):
    path, marker = hostile
    out = tmp_path / 'out.pth'
    proc = subprocess.run(
        [sys.executable, 'tools/model_converters/polaformer_to_mmpola.py',
         str(path), str(out)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert str(path) in proc.stderr and 'refused' in proc.stderr
    assert not out.exists() and not marker.exists()


@pytest.mark.slow
def test_door_tools_test_py(tmp_path):
    """``tools/test.py CONFIG CKPT`` (and so ``--resume`` / ``load_from`` of
    tools/train.py, which share the Runner's loader) refuses the file."""
    from mmengine.config import Config

    from mmpola.datasets import make_imagenet
    root = tmp_path / 'imagenet'
    make_imagenet(str(root), num_classes=2, per_class=1, img_size=(40, 40),
                  num_val_per_class=1)
    base = sorted((ROOT / 'configs/mmpretrain').glob('pola_pvt/*tiny*.py'))[0]
    cfg = Config.fromfile(str(base))
    cfg.model.head.num_classes = 2
    cfg.data_preprocessor.num_classes = 2
    for loader in ('val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = str(root)
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
    cfg_path = tmp_path / 'cfg.py'
    cfg.dump(str(cfg_path))
    path = tmp_path / 'evil.pth'
    marker = write_hostile(path, 'zip', 'os.system', 'dict')
    proc = subprocess.run(
        [sys.executable, 'tools/test.py', str(cfg_path), str(path),
         '--work-dir', str(tmp_path / 'work')], cwd=ROOT, capture_output=True,
        text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode != 0
    assert str(path) in proc.stderr and 'system' in proc.stderr, \
        proc.stderr[-3000:]
    assert not marker.exists()


def test_door_analysis_checkpoint(hostile, tmp_path):
    """The analysis tools' ``--checkpoint`` (visualize_attention.py)."""
    path, marker = hostile
    proc = subprocess.run(
        [sys.executable, 'tools/analysis/visualize_attention.py',
         '--checkpoint', str(path), '--img-size', '64',
         '--out-dir', str(tmp_path / 'out')], cwd=ROOT, capture_output=True,
        text=True, timeout=300)
    assert proc.returncode != 0
    assert str(path) in proc.stderr and 'system' in proc.stderr, \
        proc.stderr[-2000:]
    assert not marker.exists()
