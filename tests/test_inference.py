"""On a photograph: MMDetection's ``DetInferencer``, MMSegmentation's
``MMSegInferencer`` and MMPretrain's ``ImageClassificationInferencer`` run
every Pola config (randomly initialised detection / segmentation models; the
released-layout classifier fixtures), and ``tools/image_demo.py`` writes the
painted results for an image or a folder.

The photograph is matplotlib's sample image (600 x 512). Test images are
resized to at most 320 pixels by the configs' own ``Resize`` (the scale
lowered here) so that every model runs in seconds on a CPU; outputs are
checked in the photograph's coordinates."""
import glob
import json
import os.path as osp
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image

import mmpola  # noqa: F401

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _configs(package):
    return sorted(
        osp.relpath(p, ROOT) for p in glob.glob(
            osp.join(ROOT, 'configs', package, '*', '*.py')))


DET_CONFIGS = _configs('mmdet')
SEG_CONFIGS = _configs('mmseg')
CLS_CONFIGS = _configs('mmpretrain')
# classifier config -> released-layout fixture (mmpola.testing)
RELEASED = {
    'pola-pvt-tiny_8xb128_in1k': 'pola_pvt_tiny',
    'pola-swin-tiny_8xb128_in1k': 'pola_swin_tiny_patch4_224',
}


def _size(path):
    with Image.open(path) as img:
        return img.size  # (W, H)


def _small(rel_path, scale):
    """The config with its test ``Resize`` lowered to ``scale``."""
    cfg = Config.fromfile(osp.join(ROOT, rel_path))
    resized = 0
    for t in cfg.test_dataloader.dataset.pipeline:
        if t.type == 'Resize':
            t.scale = scale
            resized += 1
    assert resized == 1, rel_path
    return cfg


def _keep_all_detections(test_cfg):
    """score_thr 0: random heads score every class about equally low."""
    for key, value in test_cfg.items():
        if key == 'score_thr':
            test_cfg[key] = 0.
        elif isinstance(value, dict):
            _keep_all_detections(value)


@pytest.mark.parametrize('rel_path', DET_CONFIGS)
def test_det_inferencer(rel_path, photo, tmp_path):
    from mmdet.apis import DetInferencer
    from pycocotools import mask as mask_util
    cfg = _small(rel_path, (320, 320))
    _keep_all_detections(cfg.model.test_cfg)
    inferencer = DetInferencer(cfg, weights=None, device='cpu',
                               show_progress=False)
    assert type(inferencer.model.backbone).__name__ in ('PolaPVT', 'PolaSwin')
    result = inferencer(photo, out_dir=str(tmp_path), no_save_pred=False,
                        pred_score_thr=0.)
    w, h = _size(photo)
    pred, = result['predictions']
    with_mask = 'mask' in osp.basename(rel_path)
    assert set(pred) == ({'labels', 'scores', 'bboxes'}
                         | ({'masks'} if with_mask else set()))
    boxes = np.asarray(pred['bboxes'])
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0
    assert len(pred['labels']) == len(pred['scores']) == len(boxes)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all()
    assert (boxes[:, 3] >= boxes[:, 1]).all()
    assert all(0 <= label < 80 for label in pred['labels'])
    if with_mask:
        assert len(pred['masks']) == len(boxes)
        assert all(m['size'] == [h, w] for m in pred['masks'])
        rle = dict(pred['masks'][0], counts=pred['masks'][0]['counts']
                   .encode())
        assert mask_util.decode(rle).shape == (h, w)
    assert _size(tmp_path / 'vis' / osp.basename(photo)) == (w, h)
    with open(tmp_path / 'preds' / 'grace_hopper.json') as f:
        assert len(json.load(f)['bboxes']) == len(boxes)


@pytest.mark.parametrize('rel_path', SEG_CONFIGS)
def test_seg_inferencer(rel_path, photo, tmp_path):
    from mmseg.apis import MMSegInferencer
    cfg = _small(rel_path, (320, 256))
    inferencer = MMSegInferencer(cfg, weights=None, device='cpu')
    assert type(inferencer.model.backbone).__name__ in ('PolaPVT', 'PolaSwin')
    result = inferencer(photo, out_dir=str(tmp_path), return_vis=True)
    w, h = _size(photo)
    labels = np.asarray(result['predictions'])
    assert labels.shape == (h, w)  # the photograph's size
    assert labels.min() >= 0 and labels.max() < 150
    assert result['visualization'].shape == (h, w, 3)  # one input
    assert _size(tmp_path / 'vis' / osp.basename(photo)) == (w, h)
    label_maps = list((tmp_path / 'pred').iterdir())
    assert len(label_maps) == 1 and _size(label_maps[0]) == (w, h)


@pytest.mark.parametrize('rel_path', CLS_CONFIGS)
def test_classification_inferencer(rel_path, photo, released_file,
                                   tmp_path):
    from mmpretrain.apis import ImageClassificationInferencer
    name = osp.splitext(osp.basename(rel_path))[0]
    weights = (str(released_file(RELEASED[name])) if name in RELEASED
               else False)  # the others: random weights (large files)
    # (MMPretrain's inferencer builds its pipeline in the current default
    # scope, which an mmdet / mmseg inferencer of an earlier test left set)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        inferencer = ImageClassificationInferencer(
            osp.join(ROOT, rel_path), pretrained=weights, device='cpu')
        result, = inferencer(photo, show_dir=str(tmp_path))
    assert len(result['pred_scores']) == 1000
    assert 0 <= result['pred_label'] < 1000
    assert float(np.sum(result['pred_scores'])) == pytest.approx(1, abs=1e-4)
    assert result['pred_class'] == inferencer.classes[result['pred_label']]
    assert _size(tmp_path / 'grace_hopper.png') == _size(photo)
    if weights:  # the released head is the classifier's
        from mmpola.checkpoint import read_checkpoint
        raw = read_checkpoint(weights)['model']
        assert torch.equal(inferencer.model.head.fc.weight,
                           raw['head.weight'])


def test_inferencers_import_mmpola_from_the_config(photo):
    """A fresh process that never imports mmpola: the configs'
    ``custom_imports`` bring it in for all three inferencers."""
    code = f'''
import sys
from mmdet.apis import DetInferencer
from mmseg.apis import MMSegInferencer
from mmpretrain.apis import ImageClassificationInferencer
assert 'mmpola' not in sys.modules
det = DetInferencer({DET_CONFIGS[0]!r}, device='cpu', show_progress=False)
seg = MMSegInferencer({SEG_CONFIGS[0]!r}, device='cpu')
from mmengine.registry import DefaultScope
with DefaultScope.overwrite_default_scope('mmpretrain'):
    cls = ImageClassificationInferencer({CLS_CONFIGS[0]!r}, pretrained=False,
                                        device='cpu')
    label = cls({photo!r})[0]['pred_label']
assert 'mmpola' in sys.modules
print(type(det.model.backbone).__name__, type(seg.model.backbone).__name__,
      type(cls.model.backbone).__name__, 0 <= label < 1000)
'''
    proc = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT, timeout=300,
        env=dict(__import__('os').environ, OMP_NUM_THREADS='1'),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last == 'PolaPVT PolaPVT PolaPVT True'


# ---------------------------------------------------------- tools/image_demo


def _demo(monkeypatch, capsys, *args):
    """``python tools/image_demo.py ARGS`` in this process; the files it
    printed."""
    monkeypatch.setattr(sys, 'argv', ['tools/image_demo.py',
                                      *[str(a) for a in args]])
    runpy.run_path(osp.join(ROOT, 'tools', 'image_demo.py'),
                   run_name='__main__')
    return [line for line in capsys.readouterr().out.splitlines()
            if line.startswith('/')]


@pytest.fixture(scope='module')
def photo_dir(photo, tmp_path_factory):
    """A folder of two photographs of different sizes (and a text file,
    which the demo skips)."""
    root = tmp_path_factory.mktemp('photos')
    with Image.open(photo) as img:
        img.save(root / 'hopper.jpg')
        img.crop((0, 0, 400, 300)).save(root / 'hopper_crop.png')
    (root / 'notes.txt').write_text('not an image')
    return root


def test_image_demo_detection(photo, tmp_path, monkeypatch, capsys):
    config = 'configs/mmdet/pola_pvt/retinanet_pola-pvt-t_fpn_1x_coco.py'
    written = _demo(monkeypatch, capsys, photo, config,
                    '--out-dir', tmp_path, '--device', 'cpu')
    assert written == [str(tmp_path / 'vis' / 'grace_hopper.jpg')]
    assert _size(written[0]) == _size(photo)
    with open(tmp_path / 'preds' / 'grace_hopper.json') as f:
        assert set(json.load(f)) == {'labels', 'scores', 'bboxes'}


def test_image_demo_segmentation_on_a_folder(photo_dir, tmp_path,
                                             monkeypatch, capsys):
    config = 'configs/mmseg/pola_pvt/fpn_pola-pvt-t_8xb2-40k_ade20k-512x512.py'
    written = _demo(monkeypatch, capsys, photo_dir, config,
                    '--out-dir', tmp_path, '--device', 'cpu')
    assert [osp.basename(p) for p in written] == ['hopper.jpg',
                                                  'hopper_crop.png']
    assert _size(written[0]) == (512, 600)
    assert _size(written[1]) == (400, 300)
    assert len(list((tmp_path / 'pred').iterdir())) == 2


def test_image_demo_classifier_by_name(photo, released_file, tmp_path,
                                       monkeypatch, capsys):
    written = _demo(monkeypatch, capsys, photo, 'pola-pvt-tiny_8xb128_in1k',
                    '--weights', released_file('pola_pvt_tiny'),
                    '--out-dir', tmp_path, '--device', 'cpu')
    assert written == [str(tmp_path / 'vis' / 'grace_hopper.png')]
    assert _size(written[0]) == _size(photo)
    with open(tmp_path / 'preds' / 'grace_hopper.json') as f:
        pred = json.load(f)
    assert set(pred) == {'pred_label', 'pred_score', 'pred_class'}


@pytest.mark.parametrize('model, message', [
    ('configs/mmdet/nope.py', 'no such config file'),
    ('no-such-model_in1k', 'neither a config file nor a model name'),
])
def test_image_demo_names_a_bad_model(photo, model, message, monkeypatch,
                                      capsys, tmp_path):
    with pytest.raises(ValueError, match=message):
        _demo(monkeypatch, capsys, photo, model, '--out-dir', tmp_path)


def test_image_demo_names_a_missing_input(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match='no such image file or folder'):
        _demo(monkeypatch, capsys, tmp_path / 'missing.jpg',
              'pola-pvt-tiny_8xb128_in1k')
