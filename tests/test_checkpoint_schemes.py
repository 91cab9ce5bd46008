"""Every MMEngine checkpoint scheme reads through mmpola's safe reader:
MMEngine (or torch.hub's cache) fetches the bytes, ``safe_load`` reads
them. Served from a local HTTP server on 127.0.0.1; no other network."""
import functools
import http.server
import json
import sys
import threading
import types

import pytest
import torch
import torch.nn as nn
from mmengine.registry import MODELS
from mmengine.runner import CheckpointLoader, load_checkpoint

import mmpola  # noqa: F401 (registers the loaders)
from mmpola.checkpoint import read_checkpoint
from mmpola.testing import make_official_checkpoint
from mmpola.utils.torch_load import UnsafeCheckpointError
from test_safe_loading import write_hostile


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(base URL, folder): an HTTP server on localhost serving the folder
    (a hostile file, a released-layout file); torch.hub's cache in
    tmp_path."""
    root = tmp_path / 'www'
    root.mkdir()
    marker = write_hostile(root / 'evil.pth', 'pickle')
    make_official_checkpoint('pola_pvt_tiny', str(root / 'pola_pvt_tiny.pth'))
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setenv('MMENGINE_HOME', str(tmp_path / 'mmengine_home'))
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}', root, marker
    finally:
        server.shutdown()
        server.server_close()
    assert not marker.exists(), 'the payload ran'


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_every_registered_scheme_is_mmpolas():
    assert len(CheckpointLoader._schemes) >= 10
    for prefix, loader in CheckpointLoader._schemes.items():
        assert loader.__module__ == 'mmpola.utils.torch_load', prefix


def test_http_hostile_file_is_refused(served):
    url, _, marker = served
    for call in (lambda: CheckpointLoader.load_checkpoint(f'{url}/evil.pth'),
                 lambda: load_checkpoint(nn.Linear(2, 2), f'{url}/evil.pth'),
                 lambda: read_checkpoint(f'{url}/evil.pth')):
        with pytest.raises(UnsafeCheckpointError, match='system'):
            call()
    assert not marker.exists()


def test_init_cfg_pretrained_from_a_url(served):
    url, root, _ = served
    model = MODELS.build(dict(type='PolaPVT', arch='tiny', init_cfg=dict(
        type='Pretrained', checkpoint=f'{url}/pola_pvt_tiny.pth')))
    model.init_weights()
    local = MODELS.build(dict(type='PolaPVT', arch='tiny', init_cfg=dict(
        type='Pretrained', checkpoint=str(root / 'pola_pvt_tiny.pth'))))
    local.init_weights()
    for k, v in local.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_open_mmlab_names_url_and_local(served, tmp_path):
    url, root, _ = served
    home = tmp_path / 'mmengine_home'
    home.mkdir(exist_ok=True)
    (home / 'local.pth').write_bytes((root / 'evil.pth').read_bytes())
    (home / 'open_mmlab.json').write_text(json.dumps(
        dict(pola_evil=f'{url}/evil.pth', pola_local='local.pth',
             pola_ok=f'{url}/pola_pvt_tiny.pth')))
    for name in ('pola_evil', 'pola_local'):
        for scheme in ('open-mmlab://', 'openmmlab://'):
            with pytest.raises(UnsafeCheckpointError, match='system'):
                CheckpointLoader.load_checkpoint(scheme + name)
    ckpt = CheckpointLoader.load_checkpoint('open-mmlab://pola_ok')
    assert ckpt['epoch'] == 299


def test_torchvision_and_mmcls_tables(served, monkeypatch):
    from mmengine.runner import checkpoint as ckpt
    url, _, _ = served
    monkeypatch.setattr(ckpt, 'get_torchvision_models',
                        lambda: dict(evil=f'{url}/evil.pth'))
    monkeypatch.setattr(ckpt, 'get_mmcls_models',
                        lambda: dict(evil=f'{url}/evil.pth'))
    for name in ('torchvision://evil', 'modelzoo://evil', 'mmcls://evil'):
        with pytest.raises(UnsafeCheckpointError, match='system'):
            CheckpointLoader.load_checkpoint(name)


def test_object_storage_and_pavi(served, monkeypatch, tmp_path):
    """s3:// / petrel:// (bytes from MMEngine's file backend) and pavi://
    (a downloaded file), with stand-ins for their client libraries."""
    _, root, _ = served
    evil = (root / 'evil.pth').read_bytes()

    class Client:
        def __init__(self, *args, **kwargs):
            pass

        def Get(self, path):  # noqa: N802 (petrel's API)
            return evil

    client = types.ModuleType('petrel_client.client')
    client.Client = Client
    petrel = types.ModuleType('petrel_client')
    petrel.client = client
    monkeypatch.setitem(sys.modules, 'petrel_client', petrel)
    monkeypatch.setitem(sys.modules, 'petrel_client.client', client)
    for path in ('s3://bucket/evil.pth', 'cluster:s3://bucket/evil.pth',
                 'petrel://bucket/evil.pth'):
        with pytest.raises(UnsafeCheckpointError, match='bucket/evil.pth'):
            CheckpointLoader.load_checkpoint(path)

    class Model:
        name = 'evil.pth'

        def download(self, path):
            with open(path, 'wb') as f:
                f.write(evil)

    modelcloud = types.ModuleType('pavi.modelcloud')
    modelcloud.get = lambda path: Model()
    pavi = types.ModuleType('pavi')
    pavi.modelcloud = modelcloud
    monkeypatch.setitem(sys.modules, 'pavi', pavi)
    monkeypatch.setitem(sys.modules, 'pavi.modelcloud', modelcloud)
    with pytest.raises(UnsafeCheckpointError, match='system'):
        CheckpointLoader.load_checkpoint('pavi://project/evil.pth')
