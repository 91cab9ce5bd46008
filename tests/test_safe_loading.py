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
    loss = state['message_hub']['log_scalars']['train/loss']
    assert type(loss) is HistoryBuffer
    saved = first.message_hub.get_scalar('train/loss')
    for got, want in zip(loss.data, saved.data):  # statistics intact
        np.testing.assert_array_equal(got, want)
    assert loss.mean() == saved.mean() and loss.max_length == \
        saved.max_length
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


# ------------------------------------------- crafted attacks (issue 27)


def _craft(path, pkl, as_zip=True):
    """A file holding the hand-written pickle ``pkl`` (a torch zip's
    data.pkl, or the raw stream)."""
    from mmpola.testing.fuzz import torch_zip
    path.write_bytes(torch_zip(pkl) if as_zip else pkl)
    return path


def _g(name):
    module, _, attr = name.rpartition('.')
    return b'c' + module.encode() + b'\n' + attr.encode() + b'\n'


def _s(text):
    data = text.encode()
    return b'X' + len(data).to_bytes(4, 'little') + data


def _class_state():
    """What a hostile file could try to change, process-wide."""
    import collections
    HistoryBuffer()  # MMEngine's own defaults are registered on first use
    return (dict(HistoryBuffer._statistics_methods),
            dict(vars(collections.Counter)), dict(vars(OrderedDict)),
            dict(vars(HistoryBuffer)), dict(vars(nn.Parameter)))


class _Stat:
    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def __reduce__(self):
        return (getattr, (self.obj, self.name))


def _save_buffer_with_statistics(obj, path, fmt):
    """Save ``obj`` while MMEngine's class-wide statistics name two dunders:
    every HistoryBuffer in it then pickles them in its state (the gadget:
    its real ``__setstate__`` widened a class-wide allow-list on load)."""
    saved = dict(HistoryBuffer._statistics_methods)
    HistoryBuffer._statistics_methods.update(
        __getattribute__=HistoryBuffer.mean, __init__=HistoryBuffer.max)
    try:
        torch.save(obj, path, _use_new_zipfile_serialization=fmt == 'zip')
    finally:
        HistoryBuffer._statistics_methods.clear()
        HistoryBuffer._statistics_methods.update(saved)


@pytest.mark.parametrize('fmt', ['zip', 'legacy'])
def test_history_buffer_state_cannot_widen_anything(tmp_path, fmt):
    before = _class_state()
    ok = tmp_path / 'ok.pth'
    _save_buffer_with_statistics(
        {'buf': HistoryBuffer([1.0, 1.0], [1, 1], 10)}, ok, fmt)
    buf = safe_load(ok)['buf']
    assert type(buf) is HistoryBuffer and buf.current() == 1.0
    assert _class_state() == before
    bad = tmp_path / 'bad.pth'
    _save_buffer_with_statistics(
        {'buf': HistoryBuffer([1.0], [1], 10),
         'get': _Stat(HistoryBuffer, '__getattribute__')}, bad, fmt)
    with pytest.raises(UnsafeCheckpointError, match='__getattribute__'):
        safe_load(bad)
    assert _class_state() == before


@pytest.mark.parametrize('cls', ['collections.Counter',
                                 'collections.OrderedDict',
                                 'mmengine.logging.history_buffer.'
                                 'HistoryBuffer',
                                 'torch.nn.parameter.Parameter'])
@pytest.mark.parametrize('as_zip', [True, False])
def test_build_on_a_class_is_refused(tmp_path, cls, as_zip):
    """BUILD with a dict on an allow-listed *class* would set class
    attributes for the whole process."""
    before = _class_state()
    pkl = (b'\x80\x02' + _g(cls) + b'}' + _s('fromkeys') + _g('builtins.set')
           + b's' + _s('_statistics_methods') + b'}' + b's' + b'b.')
    path = _craft(tmp_path / 'build.pth', pkl, as_zip)
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        safe_load(path)
    assert _class_state() == before


def test_tensor_rebuild_cannot_call_anything(tmp_path):
    """torch's _rebuild_from_type_v2 calls the function it is handed."""
    pkl = (b'\x80\x02' + _g('torch._tensor._rebuild_from_type_v2') + b'('
           + _g('builtins.getattr') + _g('torch.Tensor') + b')' + b'N'
           + b'tR.')
    with pytest.raises(UnsafeCheckpointError, match='getattr'):
        safe_load(_craft(tmp_path / 'fromtype.pth', pkl))
    pkl = (b'\x80\x02' + _g('torch._tensor._rebuild_from_type_v2') + b'('
           + _g('collections.Counter') + _g('torch.Tensor') + b')' + b'N'
           + b'tR.')
    with pytest.raises(UnsafeCheckpointError, match='Counter'):
        safe_load(_craft(tmp_path / 'fromtype2.pth', pkl))


class _Dtype:
    def __init__(self, args, state):
        self.args, self.state = args, state

    def __reduce__(self):
        return (np.dtype, self.args, self.state)


class _Array:
    def __init__(self, dtype, raw):
        self.dtype, self.raw = dtype, raw

    def __reduce__(self):
        from numpy.core.multiarray import _reconstruct
        return (_reconstruct, (np.ndarray, (0, ), b'b'),
                (1, (1, ), self.dtype, False, self.raw))


@pytest.mark.parametrize('dtype', [
    _Dtype(('V8', False, True), (3, '|', None, ('a', ), {'a': (
        np.dtype('O'), 16)}, 8, 1, 0x3f)),  # object field at a bogus offset
    _Dtype(('O8', False, True), (3, '|', None, None, None, -1, -1, 0x3f)),
    _Dtype(('f8', False, True), (3, '<', (np.dtype('O'), (1, )), None, None,
                                 -1, -1, 0)),  # an object sub-array
    _Dtype(('U1', False, True), (3, '<', None, None, None, 4, 4, 8)),
], ids=['void-object-field', 'object', 'subarray', 'unicode'])
def test_numpy_dtypes_other_than_plain_numbers_are_refused(tmp_path, dtype):
    """Run in a subprocess: the void dtype used to crash the process."""
    path = tmp_path / 'np.pth'
    torch.save({'a': _Array(dtype, b'\x01' * 8)}, path)
    code = ('import sys; from mmpola.utils.torch_load import safe_load\n'
            'try:\n    safe_load(sys.argv[1])\n'
            'except Exception as e:\n    print(type(e).__name__, e)')
    proc = subprocess.run([sys.executable, '-c', code, str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith('UnsafeCheckpointError'), proc.stdout
    assert 'numpy dtype' in proc.stdout


@pytest.mark.parametrize('pkl, kind, text', [
    (b'\x80\x02' + _s('abc') + b'Q.', CorruptCheckpointError,
     'not a torch storage'),
    (b'\x80\x02(' + _s('storage') + _g('torch.FloatStorage') + _s('0')
     + _s('cpu') + b'\x8a\x05\x00\x00\x00\x00\x01tQ.', CorruptCheckpointError,
     'larger than the file'),
    (b'\x80\x02(i__main__\nX\n.', UnsafeCheckpointError, 'INST'),
    (b'\x80\x02(' + _g('builtins.object') + b'o.', UnsafeCheckpointError,
     'builtins.object'),
    (b'\x80\x02\x82\x01.', UnsafeCheckpointError, 'EXT1'),
    (b'\x80\x02' + _s('x') + b'\x94' + _g('copyreg._reconstructor') + b'.',
     UnsafeCheckpointError, 'copyreg._reconstructor'),
], ids=['string-persistent-id', 'oversized-storage', 'INST', 'OBJ', 'EXT1',
        'reconstructor'])
def test_crafted_streams_end_in_a_named_error(tmp_path, pkl, kind, text):
    # as a raw stream torch reads a magic number first, with no storage
    # types: the storage id is refused before its size is checked
    raw = text != 'larger than the file'
    for as_zip in (True, False)[:1 + raw]:
        path = _craft(tmp_path / f'c{as_zip}.pth', pkl, as_zip)
        with pytest.raises(kind) as info:
            safe_load(path)
        assert str(path) in str(info.value) and text in str(info.value)


def test_refused_names_are_escaped_and_truncated(tmp_path):
    name = 'evil\x1b[31m\n' * 50 + '.payload'
    path = _craft(tmp_path / 'names.pth', b'\x80\x02' + _g(name) + b'.')
    with pytest.raises(UnsafeCheckpointError) as info:
        safe_load(path)
    msg = str(info.value)
    assert msg.isprintable() and '\x1b' not in msg and 'evil' in msg
    assert len(msg) < 1000


def test_torchscript_archives_never_reach_torch_jit(tmp_path, monkeypatch):
    module = torch.jit.script(nn.Linear(2, 2))
    path = tmp_path / 'scripted.pt'
    torch.jit.save(module, str(path))
    monkeypatch.setattr(torch.jit, 'load', lambda *a, **k: pytest.fail(
        'torch.jit.load was called'))
    with pytest.raises(UnsafeCheckpointError, match='TorchScript'):
        safe_load(path)
    with pytest.raises(UnsafeCheckpointError, match='TorchScript'):
        CheckpointLoader.load_checkpoint(str(path))


def test_legacy_tar_files_are_never_extracted(tmp_path):
    """torch.load's oldest (tar) reader extracts members to disk: a file is
    handed to torch as bytes, so that reader never runs."""
    import tarfile
    path = tmp_path / 'old.tar'
    inner = tmp_path / 'storages'
    inner.write_bytes(b'x')
    with tarfile.open(path, 'w') as tar:
        tar.add(inner, arcname='storages')
    with pytest.raises(CorruptCheckpointError, match=str(path)):
        safe_load(path)


def test_forced_weights_only_uses_torchs_reader(tmp_path, monkeypatch):
    path = tmp_path / 'sd.pth'
    torch.save({'w': torch.ones(2)}, path)
    monkeypatch.setenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '1')
    assert safe_load(path)['w'].sum() == 2
    marker = write_hostile(tmp_path / 'evil.pth', 'zip')
    with pytest.raises((UnsafeCheckpointError, CorruptCheckpointError)):
        safe_load(tmp_path / 'evil.pth')
    assert not marker.exists()


# ------------------------------------------------------------ safetensors


def test_converter_writes_safetensors_every_route_reads_it(tmp_path):
    from safetensors.torch import load_file
    src = tmp_path / 'pola_pvt_tiny.pth'
    make_official_checkpoint('pola_pvt_tiny', str(src))
    outs = {}
    for ext in ('pth', 'safetensors'):
        outs[ext] = tmp_path / f'converted.{ext}'
        proc = subprocess.run(
            [sys.executable, 'tools/model_converters/polaformer_to_mmpola.py',
             str(src), str(outs[ext])], cwd=ROOT, capture_output=True,
            text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    pth = safe_load(outs['pth'])['state_dict']
    st = safe_load(outs['safetensors'])
    assert set(st) == set(pth) == set(load_file(str(outs['safetensors'])))
    for k in pth:
        assert torch.equal(st[k], pth[k])
    assert torch.equal(read_checkpoint(str(outs['safetensors']))[
        'head.fc.weight'], pth['head.fc.weight'])
    model = MODELS.build(dict(type='PolaPVT', arch='tiny', init_cfg=dict(
        type='Pretrained', checkpoint=str(outs['safetensors']))))
    model.init_weights()
    key = 'patch_embed1.projection.weight'
    assert torch.equal(model.state_dict()[key], pth['backbone.' + key])
    whole = nn.Module()
    whole.backbone = MODELS.build(dict(type='PolaPVT', arch='tiny'))
    load_checkpoint(whole, str(outs['safetensors']), strict=False)
    assert torch.equal(whole.backbone.state_dict()[key],
                       pth['backbone.' + key])
