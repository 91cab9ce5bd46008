"""Released checkpoints: reading, key mapping, resizing, clear errors; the
models they load into live on the test device."""
import sys

import pytest
import torch
from mmengine.registry import MODELS

import mmpola  # noqa: F401
from mmpola.checkpoint import load_pretrained, read_checkpoint
from mmpola.testing import (OFFICIAL_MODELS, make_official_checkpoint,
                            official_shapes)
from mmpola.utils.torch_load import InertCfgNode


def build(name, **kwargs):
    return MODELS.build(dict(OFFICIAL_MODELS[name], **kwargs))


@pytest.fixture(scope='module')
def pvt_tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'pola_pvt_tiny.pth'
    make_official_checkpoint('pola_pvt_tiny', str(path))
    return str(path)


@pytest.fixture(scope='module')
def swin_tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'pola_swin_tiny.pth'
    make_official_checkpoint('pola_swin_tiny_patch4_224', str(path))
    return str(path)


def test_released_file_reads_without_yacs(pvt_tiny_file):
    assert 'yacs' not in sys.modules
    ckpt = read_checkpoint(pvt_tiny_file)
    assert set(ckpt) >= {'model', 'optimizer', 'config', 'epoch'}
    assert type(ckpt['config']) is InertCfgNode  # a dict, nothing of yacs
    assert ckpt['config']['TRAIN']['EPOCHS'] == 300
    assert 'yacs' not in sys.modules


@pytest.mark.parametrize('name', sorted(OFFICIAL_MODELS))
def test_every_released_layout_loads_into_its_preset(device, name, tmp_path):
    """Keys and shapes of each released model (random values) load with no
    missing key but the new output norms and no unexpected key but the
    head, the rebuilt buffers and PVT's unused final norm."""
    path = tmp_path / f'{name}.pth'
    make_official_checkpoint(name, str(path))
    model = build(name).to(device)
    report = load_pretrained(model, str(path))
    shapes = official_shapes(name)
    assert not report['resized']
    assert all(k.startswith('norm') for k in report['new'])
    for key in report['ignored']:
        assert key.startswith('head.') or key.endswith(
            ('relative_position_index', 'attn_mask')) or (
                'pvt' in name and key.startswith('norm.'))
    assert len(report['loaded']) + len(report['ignored']) == len(shapes)
    # the values really arrived (one per family, spot-checked)
    key = ('block1.0.attn.positional_encoding'
           if 'pvt' in name else 'layers.0.blocks.0.attn.positional_encoding')
    ref = read_checkpoint(str(path))['model'][key]
    torch.testing.assert_close(model.state_dict()[key].cpu(), ref)


@pytest.mark.parametrize('name', sorted(OFFICIAL_MODELS))
def test_preset_parameter_counts_match_released(name):
    """Classifier-style backbone + linear head has exactly the released
    parameter count (the released 12.92M ... 89.14M)."""
    cfg = dict(out_indices=(3, ))
    if 'pvt' in name:
        cfg['out_norms'] = False
    model = build(name, **cfg)
    shapes = official_shapes(name)
    head = sum(torch.Size(s).numel() for k, s in shapes.items()
               if k.startswith('head.'))
    released = sum(torch.Size(s).numel() for k, s in shapes.items()
                   if not k.endswith(('relative_position_index', 'attn_mask'))
                   and not ('pvt' in name and k.startswith('norm.')))
    ours = sum(p.numel() for p in model.parameters())
    assert ours + head == released


def test_init_cfg_pretrained_and_grid_resizing(swin_tiny_file):
    model = build('pola_swin_tiny_patch4_224', pretrain_img_size=320,
                  init_cfg=dict(type='Pretrained', checkpoint=swin_tiny_file))
    model.init_weights()
    # stage 2 grid 40x40 (resized from 28x28); stage 1 stays at the Pola
    # window, 56x56
    pe = model.layers[1].blocks[0].attn.positional_encoding
    assert pe.shape == (1, 40 * 40, 192)
    assert model.layers[0].blocks[0].attn.positional_encoding.shape == (
        1, 56 * 56, 96)
    ref = read_checkpoint(swin_tiny_file)['model']
    norm = ref['norm.weight']
    torch.testing.assert_close(model.norm3.weight.detach(), norm)


def test_pvt_pos_embed_resized(pvt_tiny_file):
    model = build('pola_pvt_tiny', pretrain_img_size=256)
    report = load_pretrained(model, pvt_tiny_file)
    assert 'pos_embed1' in report['resized']
    assert 'block1.0.attn.positional_encoding' in report['resized']
    assert model.pos_embed1.shape == (1, 64 * 64, 64)


def mmpola_layout_file(tmp_path, released_file, name='pola_pvt_tiny'):
    """A detector-style file (``backbone.*`` keys in mmpola's layout) of the
    released file's backbone, and the backbone it came from."""
    model = build(name)
    load_pretrained(model, released_file)
    path = tmp_path / 'converted.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in
                               model.state_dict().items()}}, path)
    return str(path), model


def test_converted_layout_loads(tmp_path, pvt_tiny_file):
    """A file with ``backbone.*`` keys in mmpola's layout loads the same."""
    path, a = mmpola_layout_file(tmp_path, pvt_tiny_file)
    b = build('pola_pvt_tiny')
    report = load_pretrained(b, path)
    assert not report['resized'] and not report['new']
    _same_state(a, b)


def test_missing_file_names_the_path():
    model = build('pola_pvt_tiny', init_cfg=dict(
        type='Pretrained', checkpoint='checkpoints/nope.pth'))
    with pytest.raises(FileNotFoundError, match='checkpoints/nope.pth'):
        model.init_weights()


def test_wrong_family_is_an_error(pvt_tiny_file):
    with pytest.raises(ValueError, match='pola_pvt_tiny.pth.*not a Pola-SWIN'):
        load_pretrained(build('pola_swin_tiny_patch4_224'), pvt_tiny_file)


def test_wrong_size_is_an_error(pvt_tiny_file):
    model = build('pola_pvt_small')
    before = model.block1[0].attn.qg.weight.detach().clone()
    with pytest.raises(ValueError, match=r'pola_pvt_tiny.pth.*missing keys'):
        load_pretrained(model, pvt_tiny_file)
    # nothing was half-loaded
    torch.testing.assert_close(model.block1[0].attn.qg.weight, before)


def test_unresizable_shape_is_an_error(tmp_path, pvt_tiny_file):
    ckpt = read_checkpoint(pvt_tiny_file)
    ckpt['model']['block1.0.attn.scale'] = torch.zeros(1, 1, 65)
    path = tmp_path / 'bad.pth'
    torch.save(ckpt['model'], path)
    with pytest.raises(ValueError, match=r'block1.0.attn.scale'):
        load_pretrained(build('pola_pvt_tiny'), str(path))


# ------------------------------------------- every load route converts


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k].cpu(), sb[k].cpu(), msg=k)


@pytest.mark.parametrize('name', ['pola_pvt_tiny', 'pola_swin_tiny_patch4_224'])
def test_load_checkpoint_of_released_file_converts(device, name, tmp_path):
    """``mmengine.runner.load_checkpoint(backbone, released_file)`` and
    ``backbone.load_state_dict(released_state_dict)`` give what
    ``init_cfg=Pretrained`` gives (keys mapped, Swin's merging weights in
    mmcv's order, head and rebuilt buffers dropped)."""
    from mmengine.runner import load_checkpoint
    path = tmp_path / f'{name}.pth'
    released = make_official_checkpoint(name, str(path))
    torch.manual_seed(0)
    ref = build(name)
    load_pretrained(ref, str(path))
    for load in ('mmengine', 'torch'):
        torch.manual_seed(0)  # the same new output norms as ref
        model = build(name).to(device)
        if load == 'mmengine':
            load_checkpoint(model, str(path), map_location='cpu')
        else:
            model.load_state_dict(dict(released), strict=False)
        _same_state(model, ref)
    if 'swin' in name:  # permuted once, at load
        from mmpola.checkpoint import _merging_to_mmcv
        key = 'layers.0.downsample.reduction.weight'
        torch.testing.assert_close(model.state_dict()[key].cpu(),
                                   _merging_to_mmcv(released[key]))


class _Detector(torch.nn.Module):
    def __init__(self, **backbone):
        super().__init__()
        self.backbone = MODELS.build(backbone)
        self.head = torch.nn.Linear(4, 2)


def test_backbone_keys_of_another_size_are_resized_on_load_from(
        tmp_path, pvt_tiny_file):
    """A detector's ``load_from`` with ``backbone.*`` keys made for 224
    loads into a backbone built for 256 (grids resized)."""
    from mmengine.runner import load_checkpoint
    path, _ = mmpola_layout_file(tmp_path, pvt_tiny_file)
    det = _Detector(type='PolaPVT', arch='tiny', pretrain_img_size=256)
    load_checkpoint(det, str(path), map_location='cpu')
    ref = build('pola_pvt_tiny', pretrain_img_size=256)
    load_pretrained(ref, pvt_tiny_file)
    torch.testing.assert_close(det.backbone.pos_embed1, ref.pos_embed1)
    assert det.backbone.pos_embed1.shape == (1, 64 * 64, 64)


def test_released_file_as_whole_model_load_from_is_an_error(pvt_tiny_file):
    from mmengine.runner import load_checkpoint
    det = _Detector(type='PolaPVT', arch='tiny')
    with pytest.raises(ValueError, match=r"backbone.init_cfg.*Pretrained"):
        load_checkpoint(det, pvt_tiny_file, map_location='cpu')
    bare = read_checkpoint(pvt_tiny_file)['model']
    with pytest.raises(ValueError, match='released Pola-PVT'):
        det.load_state_dict(bare, strict=False)
