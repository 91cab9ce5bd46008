"""The released classifiers as timm models; Hugging Face hub folders;
mmpretrain's TIMMBackbone in an mmdet config. Every door gives the released
code's numbers (the fixtures) or the same numbers as the file."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip('timm')

import mmpola  # noqa: E402,F401 (registers the timm models)
from mmpola.checkpoint import convert_to_mmpretrain  # noqa: E402
from mmpola.testing import make_official_checkpoint  # noqa: E402
from mmpola.timm_models import MODEL_ARGS  # noqa: E402
from test_backbones import fixture_arch, load_fixture, rel_err  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _released_file(fixture, path):
    torch.save({'model': {k: v.float() for k, v in
                          fixture['state_dict'].items()}, 'epoch': 1}, path)
    return str(path)


def _fixture_model(fixture, device, **kwargs):
    _, args = fixture_arch(fixture)
    name = f"pola_{fixture['family']}_tiny"
    return timm.create_model(name, num_classes=10, **args,
                             **kwargs).to(device).eval()


def test_every_released_variant_is_registered():
    assert set(timm.list_models('pola_*')) == set(MODEL_ARGS)
    assert set(timm.list_pretrained('pola_*')) == {
        f'{n}.in1k' for n in MODEL_ARGS}
    cfg = timm.get_pretrained_cfg('pola_swin_tiny')
    assert cfg.url.startswith('https://huggingface.co/ZachMeng/PolaFormer/')


@pytest.mark.parametrize('family', ['pvt', 'swin'])
@pytest.mark.parametrize('fmt', ['released', 'converted.safetensors'])
def test_pretrained_file_gives_the_released_logits(tmp_path, family, fmt,
                                                   device):
    fixture = load_fixture(family)
    path = _released_file(fixture, tmp_path / 'released.pth')
    if fmt != 'released':
        from safetensors.torch import save_file
        state, _ = convert_to_mmpretrain(path)
        path = str(tmp_path / 'converted.safetensors')
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    model = _fixture_model(fixture, device, pretrained=True,
                           pretrained_cfg_overlay=dict(file=path))
    with torch.no_grad():
        logits = model(fixture['input'].to(device)).cpu()
    assert rel_err(logits, fixture['logits']) < 1e-4


@pytest.mark.parametrize('family', ['pvt', 'swin'])
def test_features_only_and_intermediates(family, device):
    fixture = load_fixture(family)
    x = fixture['input'].to(device)
    model = _fixture_model(fixture, device)
    feats = _fixture_model(fixture, device, features_only=True,
                           out_indices=(1, 3))
    missing, _ = feats.model.load_state_dict(model.state_dict(), strict=False)
    assert not missing
    info = feats.feature_info
    assert info.reduction() == [8, 32]
    with torch.no_grad():
        outs = feats(x)
        final, inter = model.forward_intermediates(x)
        only = model.forward_intermediates(x, indices=2,
                                           intermediates_only=True)
    assert [o.shape[1] for o in outs] == info.channels()
    for o, r in zip(outs, info.reduction()):
        assert o.shape[2:] == (x.shape[2] // r, x.shape[3] // r)
    for name in info.module_name():
        model.get_submodule(name)  # the modules named exist
    torch.testing.assert_close(outs[0], inter[1])
    torch.testing.assert_close(final, model.forward_features(x))
    assert len(inter) == 4 and len(only) == 2
    torch.testing.assert_close(only[-1], inter[-1])


def test_classifier_api_and_data_config(device):
    model = timm.create_model('pola_pvt_tiny', num_classes=7).to(device)
    x = torch.randn(2, 3, 64, 96, device=device)
    assert model(x).shape == (2, 7)
    assert model.forward_head(model.forward_features(x),
                              pre_logits=True).shape == (2, 512)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    assert model.get_classifier().out_features == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, 512)
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg['interpolation'] == 'bicubic' and cfg['crop_pct'] == 0.875
    assert cfg['input_size'] == (3, 224, 224) and cfg['crop_mode'] == 'squash'
    cfg = timm.data.resolve_data_config(
        {}, model=timm.create_model('pola_swin_base_384'))
    assert cfg['input_size'] == (3, 384, 384) and cfg['crop_pct'] == 1.0
    with pytest.raises(ValueError, match='global_pool'):
        timm.create_model('pola_pvt_tiny', global_pool='max')


def test_hub_folder_loads_in_timm_and_transformers(tmp_path):
    """polaformer_to_hf.py writes config.json + model.safetensors; timm's
    local-dir and transformers' timm wrapper give the file's numbers."""
    src = tmp_path / 'pola_pvt_tiny.pth'
    make_official_checkpoint('pola_pvt_tiny', str(src))
    out = tmp_path / 'hub'
    proc = subprocess.run(
        [sys.executable, 'tools/model_converters/polaformer_to_hf.py',
         str(src), str(out), '--model', 'pola_pvt_tiny'], cwd=ROOT,
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'pola_pvt_tiny'
    assert (out / 'model.safetensors').is_file()
    x = torch.randn(1, 3, 96, 96)
    ref = timm.create_model('pola_pvt_tiny', pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(src))).eval()
    local = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    with torch.no_grad():
        expected = ref(x)
        assert torch.equal(local(x), expected)
    transformers = pytest.importorskip('transformers')
    hf = transformers.AutoModelForImageClassification.from_pretrained(
        str(out)).eval()
    with torch.no_grad():
        assert torch.equal(hf(x).logits, expected)


def test_hostile_file_is_refused_through_timm(tmp_path):
    from test_safe_loading import write_hostile

    from mmpola.utils.torch_load import UnsafeCheckpointError
    path = tmp_path / 'evil.pth'
    marker = write_hostile(path, 'zip')
    with pytest.raises(UnsafeCheckpointError, match='system'):
        timm.create_model('pola_pvt_tiny', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))
    assert not marker.exists()


def test_timm_backbone_in_an_mmdet_config():
    """mmpretrain's TIMMBackbone builds the timm model inside a detector."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from mmdet.registry import MODELS
    cfg = Config.fromfile(str(ROOT / 'configs/mmdet/pola_pvt/'
                              'retinanet_pola-pvt-t_fpn_1x_coco.py'))
    cfg.model.backbone = dict(
        type='mmpretrain.TIMMBackbone', model_name='pola_pvt_tiny',
        features_only=True, pretrained=False, out_indices=(1, 2, 3))
    cfg.model.neck.in_channels = [128, 320, 512]
    cfg.model.neck.start_level = 0
    with DefaultScope.overwrite_default_scope('mmdet'):
        detector = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        feats = detector.extract_feat(torch.randn(1, 3, 128, 160))
    assert len(feats) == 5 and feats[0].shape[1] == 256
