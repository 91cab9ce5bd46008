"""Loading checkpoints under torch >= 2.6 without running pickled code.

torch >= 2.6 loads with ``weights_only=True``: MMEngine 0.10.7's own
checkpoints (message hub ``HistoryBuffer`` objects, numpy arrays, bound
methods pickled as ``getattr(buffer, 'mean')``) and the released PolaFormer
files (a yacs ``CfgNode``) are refused. ``safe_load`` reads them with an
unpickler that resolves only an allow-list: torch's own weights-only
globals, the data classes MMEngine checkpoints hold, and ``getattr`` limited
to a ``HistoryBuffer``'s statistics. Everything else is an error, or, for
files where only the tensors matter, an inert placeholder.

``import mmpola`` routes MMEngine's local-file checkpoint loading (resume,
``load_from``, ``Pretrained`` init) through ``safe_load``.
"""
import os.path as osp
import pickle

import numpy as np
import torch


def _extra_globals():
    from mmengine.logging import HistoryBuffer
    multiarray = getattr(np, '_core', None) or np.core
    multiarray = multiarray.multiarray
    objs = [HistoryBuffer, np.ndarray, np.dtype, multiarray._reconstruct,
            multiarray.scalar]
    objs += {type(np.dtype(t)) for t in np.sctypeDict.values()}
    return {f'{o.__module__}.{o.__qualname__}': o for o in objs}


def _history_getattr(obj, name):
    """``getattr`` as MMEngine pickles it: HistoryBuffer's statistics."""
    from mmengine.logging import HistoryBuffer
    if (obj is HistoryBuffer or isinstance(obj, HistoryBuffer)) and \
            name in {'min', 'max', 'mean', 'current',
                     *HistoryBuffer._statistics_methods}:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({obj!r:.40}, {name!r}) in a checkpoint')


class _Placeholder:
    """Inert stand-in for a pickled object whose class is not allowed."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):  # dict subclasses (yacs CfgNode)
        pass


def _restricted_pickle_module(unknown):
    from torch import _weights_only_unpickler as wou
    allowed = dict(wou._get_allowed_globals())
    allowed.update(wou._get_user_allowed_globals())
    allowed.update(_extra_globals())
    allowed['builtins.getattr'] = allowed['__builtin__.getattr'] = \
        _history_getattr

    class Unpickler(pickle.Unpickler):

        def find_class(self, module, name):
            obj = allowed.get(f'{module}.{name}')
            if obj is not None:
                return obj
            if unknown == 'placeholder':
                return type(name, (_Placeholder, ), {})
            raise pickle.UnpicklingError(
                f'{module}.{name} is not an allowed global in a checkpoint')

    class Module:
        pass

    Module.Unpickler = Unpickler
    Module.load = pickle.load
    Module.__name__ = 'mmpola_restricted_pickle'
    return Module


def safe_load(path, map_location='cpu', unknown='error'):
    """``torch.load`` that never executes pickled code.

    Args:
        path (str): checkpoint file.
        map_location: as for ``torch.load``.
        unknown (str): 'error' to refuse objects outside the allow-list,
            'placeholder' to replace them by inert objects (for files where
            only the tensors are used, e.g. the released training code's).
    """
    assert unknown in ('error', 'placeholder')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        return torch.load(path, map_location=map_location,
                          weights_only=False,
                          pickle_module=_restricted_pickle_module(unknown))


def register_mmengine_loader():
    """Make MMEngine load local checkpoints with :func:`safe_load`."""
    from mmengine.runner.checkpoint import CheckpointLoader

    @CheckpointLoader.register_scheme(prefixes='', force=True)
    def load_from_local(filename, map_location):
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        return safe_load(filename, map_location)
