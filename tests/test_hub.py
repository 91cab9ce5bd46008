"""Pola classifiers by name (``mmpola.hub``): ``mmpretrain.list_models``,
``get_model`` and ``inference_model`` know every config of
``configs/mmpretrain``; released and converted files both load as
``pretrained``; ``import mmpola`` works without MMPretrain."""
import glob
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

import mmpola  # noqa: F401
from mmpola.checkpoint import convert_to_mmpretrain, read_checkpoint

mmpretrain = pytest.importorskip('mmpretrain')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
NAMES = sorted(
    osp.splitext(osp.basename(p))[0]
    for p in glob.glob(osp.join(ROOT, 'configs', 'mmpretrain', '*', '*.py')))
RESOLVE = 'https://huggingface.co/ZachMeng/PolaFormer/resolve/main/'
# model name -> released checkpoint (mmpola.testing.OFFICIAL_MODELS)
TINY = {
    'pola-pvt-tiny_8xb128_in1k': 'pola_pvt_tiny',
    'pola-swin-tiny_8xb128_in1k': 'pola_swin_tiny_patch4_224',
}


def test_list_models_finds_every_classification_config():
    assert len(NAMES) == 8
    assert mmpretrain.list_models('*pola*') == NAMES
    assert set(mmpretrain.list_models(
        'pola', task='Image Classification')) == set(NAMES)
    # the detection / segmentation configs are not classifiers
    assert not [n for n in mmpretrain.list_models('*pola*')
                if 'coco' in n or 'ade20k' in n]


def test_registration_is_once_per_process():
    from mmpola.hub import register_model_index
    assert register_model_index() == []  # import mmpola did it
    assert mmpretrain.list_models('*pola*') == NAMES


def test_every_name_builds_its_config():
    from mmpretrain.apis import ModelHub
    for name in NAMES:
        meta = ModelHub.get(name)
        assert meta.config.model.backbone.type in ('PolaPVT', 'PolaSwin')
        assert osp.basename(meta.config.filename) == name + '.py'
        # the released file, at its hub address
        assert meta.weights.startswith(RESOLVE), name
        assert meta.weights.endswith('.pth')


def _logits(model, size=224):
    x = torch.randn(1, 3, size, size, generator=torch.Generator()
                    .manual_seed(0))
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize('name', sorted(TINY))
def test_released_and_converted_files_load_the_same(name, released_file,
                                                    tmp_path):
    released = released_file(TINY[name])
    state, _ = convert_to_mmpretrain(str(released))
    converted = tmp_path / 'converted.pth'
    torch.save(dict(state_dict=state), converted)

    a = mmpretrain.get_model(name, pretrained=str(released))
    b = mmpretrain.get_model(name, pretrained=str(converted))
    own = a.state_dict()
    for key, value in state.items():  # every tensor of the classifier
        torch.testing.assert_close(own[key], value, rtol=0, atol=0)
    raw = read_checkpoint(str(released))['model']
    assert torch.equal(a.head.fc.weight, raw['head.weight'])
    torch.testing.assert_close(_logits(a), _logits(b), rtol=0, atol=0)
    assert a._dataset_meta['classes'][0].startswith('tench')  # ImageNet


def test_pretrained_true_reads_the_metafile_address(released_file,
                                                    tmp_path):
    """``pretrained=True`` loads the metafile's ``Weights``; MMPretrain's
    ``url_mapping`` points that address at a local copy (no network)."""
    shutil.copy(released_file('pola_pvt_tiny'),
                tmp_path / 'pola_pvt_tiny.pth')
    model = mmpretrain.get_model(
        'pola-pvt-tiny_8xb128_in1k', pretrained=True,
        url_mapping=(RESOLVE, f'{tmp_path}/'))
    raw = read_checkpoint(str(tmp_path / 'pola_pvt_tiny.pth'))['model']
    assert torch.equal(model.head.fc.bias, raw['head.bias'])


def test_inference_model_by_name_on_a_photograph(photo, released_file):
    from mmengine.registry import DefaultScope

    # as in a fresh process: another test may have left mmdet's scope on
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        result = mmpretrain.inference_model(
            'pola-pvt-tiny_8xb128_in1k', photo,
            pretrained=str(released_file('pola_pvt_tiny')))
    assert set(result) == {'pred_scores', 'pred_label', 'pred_score',
                           'pred_class'}
    assert len(result['pred_scores']) == 1000
    assert 0 <= result['pred_label'] < 1000
    assert result['pred_score'] == pytest.approx(
        float(result['pred_scores'].max()))
    assert isinstance(result['pred_class'], str) and result['pred_class']


def test_bare_released_state_dict_loads_into_the_classifier(released_file):
    from mmengine.runner.checkpoint import load_state_dict
    raw = read_checkpoint(str(released_file('pola_pvt_tiny')))['model']
    model = mmpretrain.get_model('pola-pvt-tiny_8xb128_in1k')
    load_state_dict(model, dict(raw), strict=True)
    assert torch.equal(model.head.fc.weight, raw['head.weight'])
    assert torch.equal(model.backbone.pos_embed1, raw['pos_embed1'])


def test_released_file_of_another_family_is_an_error(released_file):
    with pytest.raises(ValueError, match='Pola-SWIN classifier, not a '
                       'Pola-PVT'):
        mmpretrain.get_model(
            'pola-pvt-tiny_8xb128_in1k',
            pretrained=str(released_file('pola_swin_tiny_patch4_224')))


def test_import_mmpola_without_mmpretrain():
    code = ('import sys; sys.modules["mmpretrain"] = None\n'
            'import mmpola\n'
            'from mmengine.registry import MODELS\n'
            'print(MODELS.get("PolaPVT").__name__)')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert proc.stdout.strip().endswith('PolaPVT')


def test_metafile_weights_name_the_released_file():
    for meta in glob.glob(osp.join(ROOT, 'configs/mmpretrain/*/metafile.yml')):
        with open(meta, encoding='utf-8') as f:
            models = yaml.safe_load(f)['Models']
        for model in models:
            assert model['Weights'] == RESOLVE + model['Converted From'][
                'File'], model['Name']
            assert model['Results'][0]['Task'] == 'Image Classification'


def test_tools_test_py_takes_a_released_file(released_file, tmp_path,
                                             monkeypatch):
    """``tools/test.py CONFIG pola_pvt_tiny.pth``: the Runner's load goes
    through the same classifier hook (no conversion step)."""
    import runpy

    from mmengine.config import Config

    from mmpola.datasets import make_imagenet
    data = tmp_path / 'imagenet'
    make_imagenet(str(data), num_classes=2, per_class=1, img_size=(72, 80),
                  num_val_per_class=1)
    cfg = Config.fromfile(osp.join(
        ROOT, 'configs/mmpretrain/pola_pvt/pola-pvt-tiny_8xb128_in1k.py'))
    loader = cfg.test_dataloader
    loader.update(batch_size=2, num_workers=0, persistent_workers=False)
    loader.dataset.data_root = str(data)
    for t in loader.dataset.pipeline:
        for key in ('scale', 'crop_size'):
            if key in t:
                t[key] = 64
    cfg.val_dataloader = loader
    cfg.visualizer.name = f'visualizer_{tmp_path.name}'
    cfg.dump(str(tmp_path / 'cfg.py'))
    monkeypatch.setattr(sys, 'argv', [
        'tools/test.py', str(tmp_path / 'cfg.py'),
        str(released_file('pola_pvt_tiny')), '--work-dir', str(tmp_path)])
    runpy.run_path(osp.join(ROOT, 'tools', 'test.py'), run_name='__main__')
    log_file, = glob.glob(str(tmp_path / '*' / '*.log'))
    with open(log_file) as f:
        log = f.read()
    assert 'released PolaFormer weights mapped to backbone.*' in log
    assert 'accuracy/top1' in log
