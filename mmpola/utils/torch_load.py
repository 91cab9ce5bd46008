"""Reading checkpoint files without ever running pickled code.

Every file mmpola reads goes through :func:`safe_load`: torch's own
``weights_only=True`` unpickler, with a small explicit allow-list added for
the duration of the call (``torch.serialization.safe_globals``):

* MMEngine's checkpoints: the message hub's ``HistoryBuffer`` (and
  ``getattr`` restricted to a ``HistoryBuffer``'s statistics, the one
  function call MMEngine pickles), numpy arrays, dtypes and scalars;
* the released PolaFormer files: their yacs ``config`` becomes a plain
  ``OrderedDict`` (:class:`InertCfgNode`), with no yacs import.

Nothing else is resolved: any other global (``os.system``,
``builtins.eval``, ``subprocess.Popen``, an arbitrary class), in a zip or
a legacy (non-zip) ``torch.save`` file or a raw pickle stream, makes the
load fail with :class:`UnsafeCheckpointError` naming the file and the
refused global, before anything is called. Empty, truncated, text and
corrupt files raise :class:`CorruptCheckpointError` naming the file.

``import mmpola`` registers :func:`safe_load` as MMEngine's loader for
local files (``load_from``, ``resume``, ``init_cfg=Pretrained``,
``mmengine.runner.load_checkpoint``, ``CheckpointLoader``): torch's
default (``weights_only=True`` since torch 2.6) plus the allow-list above,
so MMEngine's own checkpoints resume on torch >= 2.6, and no file loads
that torch's default would refuse for containing code.

On torch < 2.4 (no ``safe_globals``) the same allow-list is enforced by a
restricted unpickler (``find_class``) used for every pickle torch reads.
"""
import _codecs
import _compat_pickle
import importlib
import os
import os.path as osp
import pickle
import pickletools
import re
import zipfile
from collections import Counter, OrderedDict

import numpy as np
import torch

__all__ = ['safe_load', 'register_mmengine_loader', 'InertCfgNode',
           'UnsafeCheckpointError', 'CorruptCheckpointError',
           'safe_global_names']


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint names a global (function or class) outside the
    allow-list; nothing was executed."""


class CorruptCheckpointError(RuntimeError):
    """A file is not a readable checkpoint (empty, truncated, text, ...)."""


class InertCfgNode:
    """Stand-in for ``yacs.config.CfgNode`` (the released files' training
    config), resolved by that name: it unpickles as a plain
    ``collections.OrderedDict`` of the config's items (yacs' own attributes
    land in the dict's ``__dict__``), so nothing of yacs is imported or
    run, and torch's weights-only reader can fill it.
    """

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


InertCfgNode.__module__ = 'yacs.config'
InertCfgNode.__qualname__ = InertCfgNode.__name__ = 'CfgNode'

# HistoryBuffer attributes MMEngine may pickle through ``getattr``
_HISTORY_STATISTICS = frozenset({'min', 'max', 'mean', 'current'})


def _history_getattr(obj, name):
    """``getattr`` as MMEngine pickles it: a statistic of ``HistoryBuffer``
    (``getattr(HistoryBuffer, 'mean')`` in every message hub's state);
    anything else is refused."""
    from mmengine.logging import HistoryBuffer
    allowed = _HISTORY_STATISTICS | set(HistoryBuffer._statistics_methods)
    if (obj is HistoryBuffer or isinstance(obj, HistoryBuffer)) \
            and name in allowed:
        return getattr(obj, name)
    what = getattr(obj, '__qualname__', type(obj).__qualname__)
    raise UnsafeCheckpointError(
        f'refused global builtins.getattr({what}.{name}): only the '
        'statistics of an mmengine HistoryBuffer may be read')


_history_getattr.__module__ = 'builtins'
_history_getattr.__qualname__ = _history_getattr.__name__ = 'getattr'


def _numpy_multiarray():
    """numpy's ``multiarray`` (``numpy._core`` in 2.x, ``numpy.core`` in
    1.x, whose ``numpy._core`` is an incomplete shim)."""
    for name in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, '_reconstruct'):
            return module
    raise ImportError('numpy.core.multiarray._reconstruct not found')


def _numpy_globals():
    multiarray = _numpy_multiarray()
    objs = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    objs += sorted({type(np.dtype(t)) for t in np.sctypeDict.values()},
                   key=repr)
    pairs = [(o, f'{o.__module__}.{o.__qualname__}') for o in objs]
    # files written with numpy 1.x name numpy.core, 2.x numpy._core
    for o, name in list(pairs):
        for old, new in (('numpy._core.', 'numpy.core.'),
                         ('numpy.core.', 'numpy._core.')):
            if name.startswith(old):
                pairs.append((o, new + name[len(old):]))
    return pairs


def _safe_global_pairs():
    """(object, fully qualified name) of everything allowed beyond torch's
    own weights-only globals."""
    pairs = _numpy_globals()
    # how protocol-2 pickles store bytes (numpy buffers); torch >= 2.4
    # allows it too
    pairs.append((_codecs.encode, '_codecs.encode'))
    pairs.append((set, 'builtins.set'))  # yacs' deprecated keys; ditto
    pairs.append((Counter, 'collections.Counter'))  # torch 2.1 optimizers
    pairs += [(InertCfgNode, 'yacs.config.CfgNode'),
              (_history_getattr, 'builtins.getattr'),
              (_history_getattr, '__builtin__.getattr')]
    try:
        from mmengine.logging import HistoryBuffer
        pairs.append((HistoryBuffer, 'mmengine.logging.history_buffer.'
                      'HistoryBuffer'))
    except ImportError:  # pragma: no cover - mmengine is a dependency
        pass
    return pairs


def safe_global_names():
    """Names of the globals allowed beyond torch's weights-only set."""
    return sorted({name for _, name in _safe_global_pairs()})


_HAS_SAFE_GLOBALS = hasattr(torch.serialization, 'safe_globals')


def _restricted_pickle_module():
    """torch < 2.4: a pickle module whose every read (``load`` and
    ``Unpickler``, both of which torch uses) resolves only torch's
    weights-only globals and :func:`_safe_global_pairs`."""
    from torch import _weights_only_unpickler as wou
    allowed = dict(wou._get_allowed_globals())
    allowed.update((name, obj) for obj, name in _safe_global_pairs())

    class Unpickler(pickle.Unpickler):

        def find_class(self, module, name):
            # protocol < 3 names Python 2 modules (__builtin__, copy_reg)
            module, name = _compat_pickle.NAME_MAPPING.get(
                (module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            full = f'{module}.{name}'
            if full not in allowed:
                raise UnsafeCheckpointError(
                    f'Unsupported global: GLOBAL {full} was not an allowed '
                    'global')
            return allowed[full]

    class Module:
        pass

    Module.Unpickler = Unpickler
    Module.load = staticmethod(lambda f, **kw: Unpickler(f, **kw).load())
    Module.__name__ = 'mmpola_restricted_pickle'
    return Module


def _pickled_globals(data):
    """Globals named by the pickles at the start of ``data`` (a raw pickle
    stream or a legacy ``torch.save`` file: a few pickles in a row), read
    with ``pickletools`` (nothing is resolved or executed)."""
    names, pos, strings = [], 0, []
    for _ in range(6):  # magic number, protocol, sys info, object, keys
        stream = _BytesWithPos(data, pos)
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ('SHORT_BINUNICODE', 'BINUNICODE', 'UNICODE',
                               'BINUNICODE8'):
                    strings = (strings + [arg])[-2:]
                elif op.name == 'GLOBAL':
                    names.append(arg.replace(' ', '.'))
                elif op.name == 'STACK_GLOBAL' and len(strings) == 2:
                    names.append('.'.join(strings))
        except Exception:  # not (or no longer) a pickle
            break
        pos = stream.tell()
        if pos >= len(data):
            break
    return names


class _BytesWithPos:
    """A read-only view of ``data`` from ``pos`` for ``pickletools``."""

    def __init__(self, data, pos):
        self.data, self.pos = data, pos

    def read(self, n=-1):
        end = len(self.data) if n < 0 else self.pos + n
        out = self.data[self.pos:end]
        self.pos += len(out)
        return out

    def readline(self):
        end = self.data.find(b'\n', self.pos)
        end = len(self.data) if end < 0 else end + 1
        return self.read(end - self.pos)

    def tell(self):
        return self.pos


def refused_globals(path):
    """The globals a checkpoint file names that :func:`safe_load` refuses
    (a diagnostic: reads the pickles' opcodes, executes nothing)."""
    from torch import _weights_only_unpickler as wou
    allowed = set(wou._get_allowed_globals())
    allowed |= {name for _, name in _safe_global_pairs()}
    names = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                if member.endswith('.pkl'):
                    names += _pickled_globals(zf.read(member))
    else:
        with open(path, 'rb') as f:
            names = _pickled_globals(f.read(1 << 26))
    return sorted({n for n in names if n not in allowed})


_REFUSED = re.compile(r'refused global (\S+)')


def _describe(path):
    if isinstance(path, (str, os.PathLike)):
        return os.fspath(path)
    return getattr(path, 'name', repr(path))


def _classify(path, err):
    """The error to raise for ``err`` raised by torch.load on ``path``."""
    name = _describe(path)
    text = str(err)
    is_file = isinstance(path, (str, os.PathLike)) and osp.isfile(name)
    refused = []
    if isinstance(err, pickle.UnpicklingError):
        m = _REFUSED.search(text)
        refused = [m.group(1).rstrip(':')] if m else []
        if not refused and is_file:
            try:
                refused = refused_globals(name)
            except Exception:  # a diagnostic only
                refused = []
    if refused:
        return UnsafeCheckpointError(
            f'{name}: refused to load: the file names the global(s) '
            f'{", ".join(refused[:5])}, not on the allow-list (torch '
            'weights-only tensors and containers, numpy arrays, mmengine '
            'HistoryBuffer, yacs CfgNode). Nothing was executed. If you '
            'trust the file, load it yourself and re-save its tensors.')
    if is_file and osp.getsize(name) == 0:
        reason = 'the file is empty'
    elif 'Unsupported operand' in text:
        reason = ('a pickle torch\'s weights-only reader does not accept '
                  '(a raw pickle stream, or pickle protocol 4+ framing: '
                  're-save the tensors with torch.save\'s default protocol)')
    elif isinstance(err, (EOFError, zipfile.BadZipFile)) or any(
            s in text for s in ('EOF', 'central directory', 'truncated')):
        reason = 'the file is truncated or corrupt'
    else:
        reason = 'not a PyTorch checkpoint (corrupt, or another format)'
    first = text.splitlines()[0][:200] if text else ''
    return CorruptCheckpointError(
        f'{name}: cannot read checkpoint: {reason} '
        f'({type(err).__name__}: {first})')


def safe_load(path, map_location='cpu'):
    """``torch.load`` that never executes pickled code.

    Args:
        path (str | os.PathLike | file-like): the checkpoint.
        map_location: as for ``torch.load``.

    Returns:
        The loaded object (tensors, containers, numpy data, mmengine
        ``HistoryBuffer``; a yacs config as an ``OrderedDict``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file names a global outside the
            allow-list (nothing was executed).
        CorruptCheckpointError: empty, truncated, text or corrupt file.
    """
    if isinstance(path, (str, os.PathLike)):
        path = osp.expanduser(os.fspath(path))
        if not osp.isfile(path):
            raise FileNotFoundError(f'checkpoint file not found: {path!r}')
    try:
        if _HAS_SAFE_GLOBALS:
            with torch.serialization.safe_globals(
                    [(o, n) for o, n in _safe_global_pairs()]):
                return torch.load(path, map_location=map_location,
                                  weights_only=True)
        return torch.load(path, map_location=map_location,
                          weights_only=False,
                          pickle_module=_restricted_pickle_module())
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError,
            zipfile.BadZipFile, UnicodeDecodeError, KeyError, IndexError,
            TypeError, AttributeError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise _classify(path, err) from err


def register_mmengine_loader():
    """Make MMEngine read local checkpoint files with :func:`safe_load`
    (MMEngine's ``load_from_local`` calls ``torch.load`` with torch's
    default, which on torch >= 2.6 refuses MMEngine's own checkpoints)."""
    from mmengine.runner.checkpoint import CheckpointLoader

    @CheckpointLoader.register_scheme(prefixes='', force=True)
    def load_from_local(filename, map_location):
        return safe_load(filename, map_location)
