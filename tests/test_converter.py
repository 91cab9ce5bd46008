"""Released checkpoint -> mmpretrain classifier: the fixtures' logits."""
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import load_checkpoint

import mmpola  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATA = osp.join(ROOT, 'tests', 'data')
CONFIGS = {
    'pvt': 'configs/mmpretrain/pola_pvt/pola-pvt-tiny_8xb128_in1k.py',
    'swin': 'configs/mmpretrain/pola_swin/pola-swin-tiny_8xb128_in1k.py',
}


def released_file(family, tmp_path):
    """The fixture's weights saved as the released training code does."""
    fixture = torch.load(osp.join(DATA, f'pola_{family}_reference.pt'),
                         weights_only=True)
    path = tmp_path / f'released_{family}.pth'
    state = {k: v.float() for k, v in fixture['state_dict'].items()}
    torch.save(dict(model=state, epoch=299, max_accuracy=0.), path)
    return fixture, str(path)


def classifier_for(fixture):
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(osp.join(ROOT, CONFIGS[fixture['family']]))
    a = fixture['arch']
    if fixture['family'] == 'pvt':
        arch = {k: a[k] for k in ('embed_dims', 'depths', 'num_heads',
                                  'mlp_ratios')}
        channels = a['embed_dims'][-1]
    else:
        arch = dict(embed_dims=a['embed_dim'], depths=a['depths'],
                    num_heads=a['num_heads'])
        channels = a['embed_dim'] * 8
    cfg.model.backbone.update(arch=arch, pretrain_img_size=a['img_size'])
    cfg.model.head.update(num_classes=a['num_classes'], in_channels=channels)
    return MODELS.build(cfg.model).eval()


@pytest.mark.parametrize('family', ['pvt', 'swin'])
def test_converted_classifier_reproduces_released_logits(family, tmp_path):
    fixture, src = released_file(family, tmp_path)
    dst = tmp_path / 'converted.pth'
    subprocess.run([sys.executable, 'tools/model_converters/'
                    'polaformer_to_mmpola.py', src, str(dst)],
                   cwd=ROOT, check=True)
    model = classifier_for(fixture)
    load_checkpoint(model, str(dst), map_location='cpu', strict=True)
    with torch.no_grad():
        logits = model(fixture['input'], mode='tensor')
    ref = fixture['logits']
    assert ((logits - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_converter_rejects_a_non_released_file(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': {'conv.weight': torch.ones(1)}}, path)
    proc = subprocess.run([sys.executable, 'tools/model_converters/'
                           'polaformer_to_mmpola.py', str(path),
                           str(tmp_path / 'out.pth')],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert 'not a released PolaFormer checkpoint' in proc.stderr
