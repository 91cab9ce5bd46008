"""Reading checkpoint files without ever running code from them.

:func:`safe_load` is the one reader of every file mmpola touches, on every
supported torch (2.1 - 2.14), and ``import mmpola`` makes it MMEngine's
reader for every scheme (:func:`register_mmengine_loader`).

* ``.safetensors`` files are read with safetensors (tensors only).
* torch zip files: refused before torch sees them if they are TorchScript
  archives (``torch.load`` would hand those to ``torch.jit.load``), have
  compressed records (torch never writes them) or records the two zip
  readers see differently; then ``torch.load`` reads them with
  :mod:`mmpola.utils.safe_pickle` as its pickle module.
* legacy (non-zip) ``torch.save`` files and raw pickles are handed to
  ``torch.load`` as bytes (never as a file it could open as a tar archive),
  with the same pickle module.

The result holds tensors, containers, numbers, strings, bytes, numpy
arrays of plain numeric dtypes, MMEngine ``HistoryBuffer`` objects rebuilt
from validated data, and released yacs configs as
:class:`~mmpola.utils.safe_pickle.InertCfgNode`. Any file ends in that
value, :class:`UnsafeCheckpointError` or :class:`CorruptCheckpointError`,
both naming the file (see SECURITY.md for what is and is not promised).
"""
import io
import os
import os.path as osp
import zipfile

import torch

from .safe_pickle import (CorruptCheckpointError, InertCfgNode,
                          UnsafeCheckpointError, allowed_global_names, escape,
                          materialize, pickle_module)

__all__ = ['safe_load', 'register_mmengine_loader', 'InertCfgNode',
           'UnsafeCheckpointError', 'CorruptCheckpointError',
           'allowed_global_names', 'is_safetensors']

_ZIP_MAGIC = b'PK\x03\x04'


def _describe(source):
    if isinstance(source, (str, os.PathLike)):
        return escape(os.fspath(source), 300)
    return escape(getattr(source, 'name', '<buffer>'), 300)


def is_safetensors(data):
    """Whether ``data`` (the file's first bytes, at least 9) starts as a
    safetensors file: an 8-byte little-endian header length, then ``{``."""
    return len(data) >= 9 and data[8:9] == b'{' and \
        int.from_bytes(data[:8], 'little') < (1 << 28)


def _load_safetensors(data, map_location):
    try:
        from safetensors.torch import load
    except ImportError:  # pragma: no cover - a dependency
        raise ImportError('reading .safetensors files needs safetensors: '
                          'pip install safetensors') from None
    state = load(data)
    if isinstance(map_location, (str, torch.device)) and \
            str(map_location) != 'cpu':
        state = {k: v.to(map_location) for k, v in state.items()}
    return state


def _check_zip(f, size):
    """Refuse what ``torch.load`` would not read as plain data: TorchScript
    archives, compressed or oversized records, and archives whose record
    lists differ between Python's and torch's zip readers."""
    try:
        with zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CorruptCheckpointError(
            f'the zip archive is truncated or corrupt ({escape(e)})') from None
    f.seek(0)
    try:
        records = set(torch._C.PyTorchFileReader(f).get_all_records())
    except Exception as e:  # torch's reader refuses the archive
        raise CorruptCheckpointError(
            f'not a torch zip archive ({escape(e)})') from None
    if 'constants.pkl' in records or any(
            r.startswith(('code/', '.data/ts_code')) for r in records):
        raise UnsafeCheckpointError(
            'refused a TorchScript archive (torch.load would run it with '
            'torch.jit.load)')
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos) or \
            sum(i.file_size for i in infos) > size:
        raise CorruptCheckpointError(
            'the zip archive has compressed or oversized records (torch.save '
            'writes neither)')
    names = {i.filename.split('/', 1)[-1] for i in infos
             if not i.filename.endswith('/')}
    if not records <= names or not any(r.endswith('.pkl') for r in records):
        raise CorruptCheckpointError(
            'the zip records torch reads differ from the archive directory')
    f.seek(0)


def _torch_load(f, map_location, size):
    """``torch.load`` with :mod:`~mmpola.utils.safe_pickle` as its pickle
    module (never torch's ``weights_only`` allow-list, which files could
    not widen but which differs between torch versions)."""
    if os.getenv('TORCH_FORCE_WEIGHTS_ONLY_LOAD', '0').lower() in (
            '1', 'y', 'yes', 'true'):
        # the user asked for torch's own reader everywhere: honour it
        return torch.load(f, map_location=map_location, weights_only=True)
    kwargs = {}
    if 'mmap' in torch.load.__code__.co_varnames:
        kwargs['mmap'] = False
    out = torch.load(f, map_location=map_location, weights_only=False,
                     pickle_module=pickle_module(size), **kwargs)
    return materialize(out)


def safe_load(source, map_location='cpu'):
    """Read a checkpoint without running code from it.

    Args:
        source (str | os.PathLike | bytes | file-like): the checkpoint
            (``.pth`` zip or legacy ``torch.save`` file, or
            ``.safetensors``); a file-like object is read to its end.
        map_location: as for ``torch.load`` (safetensors files: a device
            string or ``torch.device``; anything else loads on the CPU).

    Returns:
        The loaded data: tensors, containers, numbers, strings, numpy
        arrays, MMEngine ``HistoryBuffer`` objects; a released yacs
        config as :class:`InertCfgNode`.

    Raises:
        FileNotFoundError: ``source`` is a path that does not exist.
        UnsafeCheckpointError: the file asks for code (a global outside the
            allow-list, a call, an attribute write, a TorchScript archive).
            Nothing from it was executed.
        CorruptCheckpointError: anything else that is not a readable
            checkpoint (empty, truncated, malformed).
    """
    name = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = osp.expanduser(os.fspath(source))
        if not osp.isfile(path):
            raise FileNotFoundError(f'checkpoint file not found: {name!r}')
        f = open(path, 'rb')
    elif isinstance(source, (bytes, bytearray, memoryview)):
        f = io.BytesIO(bytes(source))
    else:
        f = io.BytesIO(source.read())
    try:
        with f:
            size = os.fstat(f.fileno()).st_size if hasattr(f, 'fileno') \
                and not isinstance(f, io.BytesIO) else len(f.getbuffer())
            head = f.read(16)
            f.seek(0)
            if not head:
                raise CorruptCheckpointError('the file is empty')
            if is_safetensors(head):
                return _load_safetensors(f.read(), map_location)
            if head.startswith(_ZIP_MAGIC):
                _check_zip(f, size)
                return _torch_load(f, map_location, size)
            # legacy torch.save / raw pickle: as bytes, so torch never
            # tries its tar reader on the file
            return _torch_load(io.BytesIO(f.read()), map_location, size)
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(
            f'{name}: refused to load: {e}. Nothing from the file was '
            'executed. Only tensors, containers, numbers, strings, numpy '
            'arrays, MMEngine message-hub data and yacs configs load; if '
            'you trust the file, load it yourself and re-save its tensors '
            '(tools/model_converters/polaformer_to_mmpola.py writes '
            '.safetensors).') from None
    except CorruptCheckpointError as e:
        raise CorruptCheckpointError(
            f'{name}: cannot read checkpoint: {e}') from None
    except Exception as e:  # whatever torch or the format raised
        first = escape(str(e).splitlines()[0] if str(e) else '', 200)
        raise CorruptCheckpointError(
            f'{name}: cannot read checkpoint: not a readable PyTorch '
            f'checkpoint ({type(e).__name__}: {first})') from None


# ------------------------------------------------------------- MMEngine


def _download(url, model_dir=None, progress=True):
    """The cached file for ``url`` (downloaded once): torch.hub's cache
    folder and naming, without ``torch.hub``'s loader."""
    from urllib.parse import urlparse
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    filename = osp.basename(urlparse(url).path)
    if filename in ('', '.', '..'):
        raise ValueError(f'{escape(url, 300)}: the URL names no file')
    cached = osp.join(model_dir, filename)
    if not osp.exists(cached):
        os.makedirs(model_dir, exist_ok=True)
        torch.hub.download_url_to_file(url, cached, None, progress=progress)
    return cached


def load_from_http(filename, map_location=None, model_dir=None,
                   progress=False):
    """``http(s)://``: rank 0 downloads into the hub cache first (as
    MMEngine does), every rank reads the cached file with
    :func:`safe_load`."""
    from mmengine.dist import get_dist_info
    rank, world_size = get_dist_info()
    if rank == 0:
        cached = _download(filename, model_dir, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            cached = _download(filename, model_dir, progress)
    return safe_load(cached, map_location)


def load_from_local(filename, map_location=None):
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_load(filename, map_location)


def load_from_torchvision(filename, map_location=None):
    """``torchvision://NAME`` (and the deprecated ``modelzoo://``):
    MMEngine's table of torchvision URLs, then :func:`load_from_http`."""
    from mmengine.runner import checkpoint as ckpt
    name = filename.split('://', 1)[1]
    return load_from_http(ckpt.get_torchvision_models()[name], map_location)


def load_from_openmmlab(filename, map_location=None):
    """``open-mmlab://NAME``: MMEngine's model table (with its deprecated
    names and ``$MMENGINE_HOME/open_mmlab.json``); URLs go through
    :func:`load_from_http`, local entries through :func:`safe_load`."""
    from mmengine.runner import checkpoint as ckpt
    name = filename.split('://', 1)[1]
    name = ckpt.get_deprecated_model_names().get(name, name)
    url = ckpt.get_external_models()[name]
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location)
    return load_from_local(osp.join(ckpt._get_mmengine_home(), url),
                           map_location)


def load_from_mmcls(filename, map_location=None):
    from mmengine.runner import checkpoint as ckpt
    url = ckpt.get_mmcls_models()[filename[len('mmcls://'):]]
    return ckpt._process_mmcls_checkpoint(load_from_http(url, map_location))


def load_from_ceph(filename, map_location=None, backend='petrel'):
    """``s3://`` / ``petrel://``: the bytes from MMEngine's file backend."""
    from mmengine.fileio import get_file_backend
    data = get_file_backend(filename, backend_args={'backend': backend}).get(
        filename)
    buffer = io.BytesIO(data)
    buffer.name = filename
    return safe_load(buffer, map_location)


def load_from_pavi(filename, map_location=None):
    """``pavi://``: downloaded with pavi's model cloud into a temporary
    folder, read with :func:`safe_load`."""
    from tempfile import TemporaryDirectory
    try:
        from pavi import modelcloud
    except ImportError:
        raise ImportError(
            'Please install pavi to load checkpoint from modelcloud.'
        ) from None
    model = modelcloud.get(filename[len('pavi://'):])
    with TemporaryDirectory() as tmp_dir:
        downloaded = osp.join(tmp_dir, osp.basename(model.name))
        model.download(downloaded)
        return safe_load(downloaded, map_location)


SCHEMES = {
    '': load_from_local,
    ('http://', 'https://'): load_from_http,
    ('modelzoo://', 'torchvision://'): load_from_torchvision,
    ('open-mmlab://', 'openmmlab://'): load_from_openmmlab,
    'mmcls://': load_from_mmcls,
    (r'(\S+\:)?s3://', r'(\S+\:)?petrel://'): load_from_ceph,
    'pavi://': load_from_pavi,
}


def register_mmengine_loader():
    """Make every MMEngine checkpoint scheme read through :func:`safe_load`
    (``load_from``, ``resume``, ``init_cfg=Pretrained``,
    ``mmengine.runner.load_checkpoint``, ``CheckpointLoader``). MMEngine
    fetches the bytes as before (downloads, cache, file backends); none of
    its loaders calls ``torch.load`` any more."""
    from mmengine.runner.checkpoint import CheckpointLoader
    for prefixes, loader in SCHEMES.items():
        CheckpointLoader.register_scheme(
            list(prefixes) if isinstance(prefixes, tuple) else prefixes,
            loader, force=True)
