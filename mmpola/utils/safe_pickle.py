"""A pickle reader that builds nothing real from file data.

torch's checkpoint formats are pickles. This module is the only pickle
reader mmpola hands to ``torch.load`` (as its ``pickle_module``), on every
supported torch. It is Python's own pure-Python unpickler with every opcode
that can reach code replaced:

* ``GLOBAL`` / ``STACK_GLOBAL`` resolve a fixed table of names
  (:data:`_FUNCTIONS`, :data:`_CLASSES`, :data:`_VALUES`) to *markers*
  (:class:`_Global`), never to the named object; any other name raises
  :class:`UnsafeCheckpointError`.
* ``REDUCE`` / ``NEWOBJ`` call only this module's own builders, chosen by
  the marker: tensors and parameters from the file's storages, plain
  containers (``OrderedDict``, ``Counter``, sets), bytes, ``torch.device``
  and inert stand-ins for numpy data, MMEngine's ``HistoryBuffer`` and
  yacs' ``CfgNode``. Each builder checks the types of its arguments.
* ``BUILD`` only stores plain state on a stand-in (or the ``_metadata`` of
  an ``OrderedDict``); it never sets an attribute of a class or module and
  never calls ``__setstate__``.
* ``INST``, ``OBJ``, ``EXT*``, text ``PERSID`` and out-of-band buffers are
  refused; ``BINPERSID`` accepts only torch's storage ids, whose sizes must
  fit in the file.

After the pickle is read, :func:`materialize` turns the stand-ins into real
objects from validated data: numpy arrays and dtypes of plain numeric and
bool types (never object, void, structured or sub-array dtypes), and
MMEngine ``HistoryBuffer`` objects through its public constructor. yacs
configs stay :class:`InertCfgNode` (a ``dict`` of their items).

The tables are module constants built from torch and numpy at import time;
no file can add to them.
"""
import _compat_pickle
import math
import pickle
import re
from collections import Counter, OrderedDict

import numpy as np
import torch

__all__ = ['UnsafeCheckpointError', 'CorruptCheckpointError',
           'InertCfgNode', 'HistoryBufferState', 'escape',
           'pickle_module', 'materialize', 'allowed_global_names']

MAX_DEPTH = 512  # nesting of the loaded data
_INT_LIMIT = 1 << 62


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asks for code (a global outside the allow-list, a call,
    an attribute write); nothing from the file was executed."""


class CorruptCheckpointError(RuntimeError):
    """A file is not a readable checkpoint (empty, truncated, malformed)."""


def escape(text, limit=80):
    """``text`` as printable ASCII (control characters escaped), at most
    ``limit`` characters: for names taken from a file into a message."""
    text = ascii(str(text))[1:-1]
    return text if len(text) <= limit else text[:limit - 3] + '...'


# ------------------------------------------------------------ stand-ins


class _Global:
    """A name the file asked for, resolved to a marker (nothing callable)."""
    __slots__ = ('name', )

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f'<global {self.name}>'


class InertCfgNode(dict):
    """The released files' yacs ``CfgNode``: a ``dict`` of the config's
    items; yacs' own flags (immutable, deprecated keys, ...) are kept as a
    plain dict in :attr:`yacs_state`. Nothing of yacs is imported or run."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.yacs_state = {}

    def __reduce__(self):  # re-saves as a plain dict of its items
        return (dict, (dict(self), ))


class HistoryBufferState:
    """An MMEngine ``HistoryBuffer`` as read: its pickled ``__dict__`` as
    plain data (:attr:`state`). :func:`materialize` rebuilds the real
    buffer with ``HistoryBuffer(log_history, count_history, max_length)``."""
    __slots__ = ('state', )

    def __init__(self):
        self.state = None


class _StatisticRef:
    """``getattr(HistoryBuffer, name)`` for one of MMEngine's own
    statistics (how a buffer's ``statistics_methods`` are pickled)."""
    __slots__ = ('name', )

    def __init__(self, name):
        self.name = name


class _NdarrayState:
    __slots__ = ('state', )

    def __init__(self):
        self.state = None


class _DtypeState:
    __slots__ = ('args', 'state', '_dtype')

    def __init__(self, args):
        self.args, self.state, self._dtype = args, None, None

    def dtype(self):
        if self._dtype is None:
            self._dtype = _numpy_dtype(self.args, self.state)
        return self._dtype


_STANDINS = (HistoryBufferState, _NdarrayState, _DtypeState)

# ------------------------------------------------------- argument checks


def _corrupt(msg):
    return CorruptCheckpointError(msg)


def _int(x, what, low=0, high=_INT_LIMIT):
    if type(x) is not int or not low <= x < high:
        raise _corrupt(f'{what} must be an int in [{low}, {high}), got '
                       f'{escape(type(x).__name__)}')
    return x


def _ints(x, what):
    if type(x) not in (tuple, list) or len(x) > 64:
        raise _corrupt(f'{what} must be a tuple of at most 64 ints')
    return tuple(_int(v, what) for v in x)


def _empty_hooks(hooks):
    if type(hooks) not in (OrderedDict, dict) or hooks:
        raise UnsafeCheckpointError(
            'refused tensor backward hooks (a tensor saved with hooks)')


def _storage(storage):
    if not isinstance(storage, torch.storage.TypedStorage):
        raise _corrupt('a tensor without a storage from the file')
    return storage


# ------------------------------------------------------ tensor builders


def _tensor(self, storage, offset, size, stride, requires_grad=False,
            hooks=None, metadata=None, dtype=None):
    storage = _storage(storage)
    offset, size = _int(offset, 'storage offset'), _ints(size, 'size')
    stride = _ints(stride, 'stride')
    if len(size) != len(stride):
        raise _corrupt('tensor size and stride differ in length')
    if type(requires_grad) is not bool:
        raise _corrupt('requires_grad must be a bool')
    if hooks is not None:
        _empty_hooks(hooks)
    if metadata is not None and (type(metadata) is not dict or not all(
            type(k) is str and type(v) is bool for k, v in metadata.items())):
        raise _corrupt('tensor metadata must map names to bools')
    # a view may repeat elements (zero strides), but reading it must stay
    # proportional to the file
    untyped = storage._untyped_storage
    dtype = storage.dtype if dtype is None else dtype
    if math.prod(size) > max(untyped.nbytes(), self._max_bytes):
        raise _corrupt(f'a tensor of size {size} over a storage of '
                       f'{untyped.nbytes()} bytes')
    if not isinstance(dtype, torch.dtype):
        raise _corrupt('tensor dtype must be a torch dtype')
    t = torch.empty((0, ), dtype=dtype, device=untyped.device)
    t.set_(untyped, offset, size, stride)
    if metadata:
        torch._utils.set_tensor_metadata(t, metadata)
    t.requires_grad = requires_grad
    return t


def _tensor_v2(self, storage, offset, size, stride, requires_grad, hooks,
               metadata=None):
    return _tensor(self, storage, offset, size, stride, requires_grad,
                   hooks, metadata)


def _tensor_v3(self, storage, offset, size, stride, requires_grad, hooks,
               dtype, metadata=None):
    return _tensor(self, storage, offset, size, stride, requires_grad,
                   hooks, metadata, dtype)


def _parameter(self, data, requires_grad, hooks, state=None):
    if not isinstance(data, torch.Tensor) or type(requires_grad) is not bool:
        raise _corrupt('a parameter needs a tensor and a bool')
    _empty_hooks(hooks)
    if state not in (None, {}, ({}, None), ({}, {})):
        raise UnsafeCheckpointError('refused attributes on a parameter')
    return torch.nn.Parameter(data, requires_grad)


def _from_type(self, func, new_type, args, state):
    """``torch._tensor._rebuild_from_type_v2``: a tensor rebuilt by one of
    the builders above, as ``torch.Tensor`` or ``nn.Parameter``."""
    if not isinstance(func, _Global) or func.name not in _TENSOR_BUILDERS:
        raise UnsafeCheckpointError(
            f'refused tensor builder {escape(getattr(func, "name", func))}')
    kind = _CLASSES.get(getattr(new_type, 'name', None))
    if kind not in ('Tensor', 'Parameter'):
        raise UnsafeCheckpointError('refused tensor subclass ' + escape(
            getattr(new_type, 'name', type(new_type).__name__)))
    if state not in (None, {}, ({}, None), ({}, {})):
        raise UnsafeCheckpointError('refused attributes on a tensor')
    if type(args) is not tuple:
        raise _corrupt('tensor builder arguments must be a tuple')
    out = _FUNCTIONS[func.name](self, *args)
    if kind == 'Parameter' and not isinstance(out, torch.nn.Parameter):
        out = torch.nn.Parameter(out, out.requires_grad)
    return out


# ------------------------------------------------ container builders


def _ordered_dict(self, items=()):
    if type(items) not in (list, tuple):
        raise _corrupt('OrderedDict items must be a list')
    return OrderedDict(items)


def _counter(self, counts=None):
    counts = {} if counts is None else counts
    if type(counts) is not dict or not all(
            type(v) is int for v in counts.values()):
        raise _corrupt('a Counter must map keys to ints')
    return Counter(counts)


def _set(self, items=()):
    if type(items) not in (list, tuple):
        raise _corrupt('set items must be a list')
    return set(items)


def _frozenset(self, items=()):
    return frozenset(_set(self, items))


def _encode(self, text, encoding='utf-8'):
    # how protocol-2 pickles store bytes
    if type(text) is not str or encoding not in ('latin1', 'latin-1'):
        raise _corrupt('bytes must be stored as latin1 text')
    return text.encode('latin1')


_DEVICE = re.compile(r'[a-z][a-z0-9_]{0,15}(:\d{1,4})?')


def _device(self, kind, index=None):
    if type(kind) is not str or not _DEVICE.fullmatch(kind) or (
            index is not None and type(index) is not int):
        raise _corrupt(f'bad device {escape(kind)}')
    return torch.device(kind) if index is None else torch.device(kind, index)


_STATISTICS = frozenset({'min', 'max', 'mean', 'current'})


def _getattr(self, obj, name):
    """``getattr`` as MMEngine pickles it: one of ``HistoryBuffer``'s own
    statistics, returned as an inert reference."""
    if isinstance(obj, _Global) and _CLASSES.get(obj.name) == \
            'HistoryBuffer' and type(name) is str and name in _STATISTICS:
        return _StatisticRef(name)
    what = obj.name if isinstance(obj, _Global) else type(obj).__name__
    raise UnsafeCheckpointError(
        f'refused global builtins.getattr({escape(what)}, {escape(name)}): '
        'only the statistics of an mmengine HistoryBuffer may be named')


# ----------------------------------------------------------- numpy


def _np_reconstruct(self, cls, shape, typecode):
    if not isinstance(cls, _Global) or _CLASSES.get(cls.name) != 'ndarray':
        raise UnsafeCheckpointError(
            'refused numpy array subclass ' + escape(getattr(cls, 'name',
                                                             cls)))
    return _NdarrayState()


def _np_dtype(self, *args):
    return _DtypeState(args)


def _np_scalar(self, dtype, data=None):
    if not isinstance(dtype, _DtypeState) or type(data) is not bytes:
        raise _corrupt('a numpy scalar needs a dtype and bytes')
    dt = dtype.dtype()
    if len(data) != dt.itemsize:
        raise _corrupt('numpy scalar of the wrong byte size')
    return np.frombuffer(data, dtype=dt)[0]


_TYPESTR = re.compile(r'[biufc?][0-9]{0,2}')


def _numpy_dtype(args, state):
    """A plain numeric or bool numpy dtype from its pickled arguments and
    state; anything else (object, void, structured, sub-array, strings,
    datetimes) is refused."""
    typestr = args[0] if args else None
    if type(typestr) is not str or not _TYPESTR.fullmatch(typestr):
        raise UnsafeCheckpointError(
            f'refused numpy dtype {escape(typestr)}: only plain numeric '
            'and bool dtypes load')
    if state is not None:
        if type(state) is not tuple or len(state) not in (8, 9):
            raise _corrupt('malformed numpy dtype state')
        byteorder, subarray, names, fields = state[1:5]
        if byteorder not in ('<', '>', '|', '=') or (
                subarray, names, fields) != (None, None, None) or (
                len(state) == 9 and state[8] not in (None, {})):
            raise UnsafeCheckpointError(
                'refused numpy dtype with fields, sub-arrays or metadata')
    else:
        byteorder = '='
    dt = np.dtype(typestr)
    if dt.kind not in 'biufc' or dt.fields is not None or dt.subdtype \
            or dt.hasobject:
        raise UnsafeCheckpointError(f'refused numpy dtype {escape(typestr)}')
    return dt if byteorder in ('|', '=') else dt.newbyteorder(byteorder)


def _numpy_array(state):
    if type(state) is not tuple or len(state) != 5:
        raise _corrupt('malformed numpy array state')
    _, shape, dtype, fortran, raw = state
    shape = _ints(shape, 'numpy array shape')
    if isinstance(dtype, _DtypeState):
        dtype = dtype.dtype()
    if not isinstance(dtype, np.dtype) or type(fortran) is not bool:
        raise _corrupt('malformed numpy array state')
    if type(raw) is not bytes:  # object arrays pickle a list
        raise UnsafeCheckpointError(
            'refused numpy array without raw data (object array)')
    count = math.prod(shape)
    if len(raw) != count * dtype.itemsize:
        raise _corrupt('numpy array data does not match its shape')
    flat = np.frombuffer(raw, dtype=dtype, count=count) if count else \
        np.empty(0, dtype)
    return flat.reshape(shape, order='F' if fortran else 'C').copy(
        order='K')


# ------------------------------------------------------------ tables

_TENSOR_BUILDERS = {
    'torch._utils._rebuild_tensor_v2': _tensor_v2,
    'torch._utils._rebuild_tensor_v3': _tensor_v3,
    'torch._utils._rebuild_parameter': _parameter,
    'torch._utils._rebuild_parameter_with_state': _parameter,
}

# name -> builder(unpickler, *args) for REDUCE
_FUNCTIONS = dict(_TENSOR_BUILDERS)
_FUNCTIONS.update({
    'torch._tensor._rebuild_from_type_v2': _from_type,
    'collections.OrderedDict': _ordered_dict,
    'collections.Counter': _counter,
    'builtins.set': _set,
    'builtins.frozenset': _frozenset,
    '_codecs.encode': _encode,
    'torch.device': _device,
    'builtins.getattr': _getattr,
    'numpy.dtype': _np_dtype,
})
for _mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
    _FUNCTIONS[f'{_mod}._reconstruct'] = _np_reconstruct
    _FUNCTIONS[f'{_mod}.scalar'] = _np_scalar

# name -> the class it stands for (NEWOBJ, or an argument of a builder)
_CLASSES = {
    'mmengine.logging.history_buffer.HistoryBuffer': 'HistoryBuffer',
    'yacs.config.CfgNode': 'CfgNode',
    'numpy.ndarray': 'ndarray',
    'torch.Tensor': 'Tensor',
    'torch._tensor.Tensor': 'Tensor',
    'torch.nn.parameter.Parameter': 'Parameter',
}

# name -> an immutable value the file may name: torch dtypes, and the
# untyped storage class torch's storage ids name
_VALUES = {f'torch.{n}': getattr(torch, n) for n in dir(torch)
           if isinstance(getattr(torch, n, None), torch.dtype)}
_VALUES['torch.UntypedStorage'] = torch.UntypedStorage


def allowed_global_names():
    """Every global name a checkpoint may contain."""
    return sorted(set(_FUNCTIONS) | set(_CLASSES) | set(_VALUES))


# --------------------------------------------------------- the reader

_PID_KEY = re.compile(r'[0-9A-Za-z_.]{1,64}')
_DICTS = (dict, OrderedDict, InertCfgNode)
_OPS = pickle._Unpickler.dispatch


def _refuse(what):
    def load(self):
        raise UnsafeCheckpointError(f'refused pickle opcode {what}')
    return load


class RestrictedUnpickler(pickle._Unpickler):
    """Python's pure-Python unpickler with every code-reaching opcode
    replaced (see the module docstring). ``max_bytes`` bounds the storage
    bytes the file's ids may declare (the file's size)."""

    dispatch = dict(_OPS)
    max_bytes = 0

    def __init__(self, file, *args, **kwargs):
        super().__init__(file, *args, **kwargs)
        self._max_bytes = type(self).max_bytes
        self._storage_bytes = {}

    def find_class(self, module, name):
        if type(module) is not str or type(name) is not str:
            raise _corrupt('a global name must be text')
        if self.proto < 3 and self.fix_imports:
            module, name = _compat_pickle.NAME_MAPPING.get(
                (module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f'{module}.{name}'
        if full in _VALUES:
            return _VALUES[full]
        if full in _FUNCTIONS or full in _CLASSES:
            return _Global(full)
        raise UnsafeCheckpointError(f'refused global {escape(full)}')

    def _call(self, func, args):
        if not isinstance(func, _Global) or func.name not in _FUNCTIONS:
            what = func.name if isinstance(func, _Global) else \
                type(func).__name__
            raise UnsafeCheckpointError(f'refused call of {escape(what)}')
        if type(args) is not tuple:
            raise _corrupt('call arguments must be a tuple')
        try:
            return _FUNCTIONS[func.name](self, *args)
        except TypeError as e:
            raise _corrupt(f'bad arguments for {func.name}: '
                           f'{escape(e, 120)}') from None

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def _new(self, cls, args, kwargs=None):
        kind = _CLASSES.get(getattr(cls, 'name', None)) \
            if isinstance(cls, _Global) else None
        if kind not in ('HistoryBuffer', 'CfgNode') or args != () or kwargs:
            what = cls.name if isinstance(cls, _Global) else \
                type(cls).__name__
            raise UnsafeCheckpointError(
                f'refused instance of {escape(what)}')
        return HistoryBufferState() if kind == 'HistoryBuffer' else \
            InertCfgNode()

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args))
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        kind = type(inst)
        if kind in (HistoryBufferState, _NdarrayState) and \
                inst.state is None:
            inst.state = state
        elif kind is _DtypeState and inst.state is None:
            inst.state = state
        elif kind is InertCfgNode and type(state) is dict and all(
                type(k) is str for k in state):
            inst.yacs_state = state
        elif kind is OrderedDict and type(state) is dict and \
                set(state) <= {'_metadata'} and all(
                    type(v) in _DICTS for v in state.values()):
            # a module state dict's version metadata
            if state:
                inst._metadata = state['_metadata']
        else:
            raise UnsafeCheckpointError(
                f'refused state for {escape(kind.__name__)} (only plain '
                'state of inert stand-ins is set)')
    dispatch[pickle.BUILD[0]] = load_build

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._dict(self.stack[-1])[key] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        items = self.pop_mark()
        target = self._dict(self.stack[-1])
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_append(self):
        value = self.stack.pop()
        self._list(self.stack[-1]).append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self):
        items = self.pop_mark()
        self._list(self.stack[-1]).extend(items)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_additems(self):
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise _corrupt('ADDITEMS on a non-set')
        target.update(items)
    dispatch[pickle.ADDITEMS[0]] = load_additems

    @staticmethod
    def _dict(obj):
        if type(obj) not in _DICTS:
            raise _corrupt('item assignment on a '
                           f'{escape(type(obj).__name__)}')
        return obj

    @staticmethod
    def _list(obj):
        if type(obj) is not list:
            raise _corrupt(f'append on a {escape(type(obj).__name__)}')
        return obj

    def load_binpersid(self):
        pid = self.stack.pop()
        self.append(self.persistent_load(self._check_pid(pid)))
    dispatch[pickle.BINPERSID[0]] = load_binpersid

    def _check_pid(self, pid):
        """torch's storage ids: ('storage', type, key, location, numel)
        (zip) or with a view (legacy); the bytes declared must fit in the
        file."""
        if type(pid) is not tuple or len(pid) not in (5, 6) or \
                pid[0] not in ('storage', b'storage'):
            raise _corrupt('a persistent id that is not a torch storage')
        storage_type, key, location, numel = pid[1:5]
        if storage_type is torch.UntypedStorage:
            size = 1
        elif isinstance(storage_type, torch.serialization.StorageType):
            size = torch._utils._element_size(storage_type.dtype)
        else:
            raise _corrupt('a storage id without a storage type')
        if isinstance(location, bytes):
            location = location.decode('ascii', 'replace')
        if type(key) is not str or not _PID_KEY.fullmatch(key) or \
                type(location) is not str or \
                not _DEVICE.fullmatch(location):
            raise _corrupt('malformed storage id')
        numel = _int(numel, 'storage size')
        if len(pid) == 6 and pid[5] is not None:
            view = pid[5]
            if type(view) is not tuple or len(view) != 3 or \
                    type(view[0]) is not str or \
                    _int(view[1], 'view offset') + \
                    _int(view[2], 'view size') > numel:
                raise _corrupt('malformed storage view')
        self._storage_bytes[key] = numel * size
        if sum(self._storage_bytes.values()) > self._max_bytes:
            raise _corrupt('the storages declared are larger than the file')
        return pid

    for _op, _name in ((pickle.INST, 'INST'), (pickle.OBJ, 'OBJ'),
                       (pickle.EXT1, 'EXT1'), (pickle.EXT2, 'EXT2'),
                       (pickle.EXT4, 'EXT4'), (pickle.PERSID, 'PERSID'),
                       (pickle.NEXT_BUFFER, 'NEXT_BUFFER'),
                       (pickle.READONLY_BUFFER, 'READONLY_BUFFER')):
        dispatch[_op[0]] = _refuse(_name)
    del _op, _name


def pickle_module(max_bytes):
    """A ``pickle_module`` for ``torch.load``: :class:`RestrictedUnpickler`
    for every pickle torch reads, its storages bounded by ``max_bytes``."""
    unpickler = type('Unpickler', (RestrictedUnpickler, ),
                     {'max_bytes': int(max_bytes)})

    class Module:
        Unpickler = unpickler
        UnpicklingError = pickle.UnpicklingError

        @staticmethod
        def load(file, **kwargs):
            return unpickler(file, **kwargs).load()

    Module.__name__ = 'mmpola_safe_pickle'
    return Module


# ------------------------------------------------------- materialize


def _history_buffer(state):
    try:
        from mmengine.logging import HistoryBuffer
    except ImportError:  # without mmengine the stand-in stays as it is
        return None
    if type(state) is not dict or not set(state) <= {
            'max_length', '_log_history', '_count_history',
            'statistics_methods'}:
        raise UnsafeCheckpointError(
            'refused HistoryBuffer state with other attributes')
    logs, counts = state.get('_log_history'), state.get('_count_history')
    max_length = _int(state.get('max_length', 1000000), 'max_length', 1)
    for arr in (logs, counts):
        if not isinstance(arr, np.ndarray) or arr.ndim != 1:
            raise _corrupt('HistoryBuffer history must be 1-d arrays')
    if len(logs) != len(counts):
        raise _corrupt('HistoryBuffer histories differ in length')
    return HistoryBuffer(logs, counts, max_length)


def materialize(root):
    """Replace the stand-ins in ``root`` (read by :class:`RestrictedUnpickler`)
    with numpy arrays / dtypes and MMEngine ``HistoryBuffer`` objects built
    from validated data. Containers are updated in place (tuples rebuilt);
    iterative, so any nesting up to :data:`MAX_DEPTH` is fine."""
    done = {}  # id -> replacement
    entered = set()
    keep = []  # ids stay valid while the walk runs
    stack = [(root, 0)]
    while stack:
        obj, depth = stack.pop()
        oid = id(obj)
        if oid in done:
            continue
        children = _children(obj)
        if children is None:  # a leaf
            done[oid] = obj
            continue
        if oid not in entered:
            if depth > MAX_DEPTH:
                raise _corrupt(f'data nested deeper than {MAX_DEPTH} levels')
            entered.add(oid)
            keep.append(obj)
            stack.append((obj, depth))
            stack.extend((c, depth + 1) for c in children
                         if id(c) not in done and id(c) not in entered)
            continue
        done[oid] = _rebuild(obj, done)
    return done[id(root)]


def _children(obj):
    kind = type(obj)
    if kind in (list, tuple, set, frozenset):
        return list(obj)
    if kind in (dict, OrderedDict, Counter):
        return list(obj.values()) + [getattr(obj, '_metadata', None)]
    if kind is InertCfgNode:
        return list(obj.values()) + [obj.yacs_state]
    if kind in (HistoryBufferState, _NdarrayState):
        return [obj.state]
    if kind is _DtypeState:
        return []
    if kind is _Global:
        raise _corrupt(f'a bare global {escape(obj.name)} in the data')
    return None


def _rebuild(obj, done):
    kind = type(obj)
    sub = lambda x: done.get(id(x), x)  # noqa: E731
    if kind is list:
        for i, x in enumerate(obj):
            obj[i] = sub(x)
        return obj
    if kind in (dict, OrderedDict, Counter, InertCfgNode):
        for k, v in obj.items():
            if isinstance(k, _STANDINS):
                raise _corrupt('a dict key that is not plain data')
            obj[k] = sub(v)
        return obj
    if kind is tuple:
        new = tuple(sub(x) for x in obj)
        return obj if all(a is b for a, b in zip(new, obj)) else new
    if kind in (set, frozenset):
        if any(isinstance(x, _STANDINS) for x in obj):
            raise _corrupt('a set of non-plain data')
        return obj
    if kind is _NdarrayState:
        return _numpy_array(sub(obj.state))
    if kind is _DtypeState:
        return obj.dtype()
    if kind is HistoryBufferState:
        real = _history_buffer(sub(obj.state))
        return obj if real is None else real
    raise AssertionError(kind)  # pragma: no cover
