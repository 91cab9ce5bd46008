"""Run a Pola detector, segmentor or classifier on an image or a folder and
write the painted results.

    python tools/image_demo.py IMAGE_OR_FOLDER MODEL [--weights FILE]
        [--out-dir DIR] [--device cpu|cuda:0] [--score-thr 0.3]

MODEL is a config file of ``configs/mmdet``, ``configs/mmseg`` or
``configs/mmpretrain`` (its ``default_scope`` picks MMDetection's
``DetInferencer``, MMSegmentation's ``MMSegInferencer`` or MMPretrain's
``ImageClassificationInferencer``), or a classification model name
(``mmpretrain.list_models('*pola*')`` after ``import mmpola``).
``--weights``: a checkpoint trained with that config; classifiers also take
a released PolaFormer file (``pola_pvt_tiny.pth``) or a converted one.
Without it the model keeps its random initialisation (a warning says so).

Writes ``DIR/vis/<image>`` (the painted image, the input's size) and the
predictions: ``DIR/preds/<image>.json`` (boxes, labels, scores, RLE masks;
or the top class) or, for segmentation, ``DIR/pred/<image>`` (the label
map). Prints the files written.
"""
import argparse
import json
import os
import os.path as osp
import warnings

import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

import mmpola  # noqa: F401  (registers the backbones and the model names)

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('inputs', help='an image file or a folder of images')
    parser.add_argument('model', help='config file, or a classification '
                        'model name (mmpretrain.list_models("*pola*"))')
    parser.add_argument('--weights', help='checkpoint file')
    parser.add_argument('--out-dir', default='outputs',
                        help='where to write vis/ and the predictions')
    parser.add_argument(
        '--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw boxes scoring at least this')
    return parser.parse_args()


def list_images(inputs):
    """The image files of a folder (sorted), or the one file."""
    if osp.isdir(inputs):
        files = sorted(
            osp.join(inputs, f) for f in os.listdir(inputs)
            if f.lower().endswith(IMG_EXTENSIONS))
        if not files:
            raise ValueError(f'{inputs}: no image files ({IMG_EXTENSIONS})')
        return files
    if not osp.isfile(inputs):
        raise ValueError(f'{inputs}: no such image file or folder')
    return [inputs]


def load_model_config(model):
    """``(config, task scope)`` of a config file or a model name."""
    if osp.isfile(model):
        cfg = Config.fromfile(model)  # imports its custom_imports
        scope = cfg.get('default_scope')
        if scope not in ('mmdet', 'mmseg', 'mmpretrain'):
            raise ValueError(
                f'{model}: default_scope {scope!r}; expected a config of '
                'mmdet, mmseg or mmpretrain')
        return cfg, scope
    if model.endswith('.py'):
        raise ValueError(f'{model}: no such config file')
    try:
        from mmpretrain.apis import ModelHub
    except ImportError as e:
        raise ValueError(f'{model!r} is not a config file, and model names '
                         'need MMPretrain') from e
    if not ModelHub.has(model.lower()):
        raise ValueError(
            f'{model!r} is neither a config file nor a model name; the Pola '
            "names: mmpretrain.list_models('*pola*')")
    return model, 'mmpretrain'


def run(files, model, scope, weights, out_dir, device, score_thr):
    """Paint and save the predictions; returns the inferencer's result."""
    if weights is None:
        warnings.warn('no --weights: the model is randomly initialised')
    if scope == 'mmdet':
        from mmdet.apis import DetInferencer
        inferencer = DetInferencer(model, weights=weights, device=device,
                                   show_progress=False)
        return inferencer(files, out_dir=out_dir, no_save_pred=False,
                          pred_score_thr=score_thr)
    if scope == 'mmseg':
        from mmseg.apis import MMSegInferencer
        inferencer = MMSegInferencer(model, weights=weights, device=device)
        return inferencer(files, out_dir=out_dir)
    from mmpretrain.apis import ImageClassificationInferencer
    vis_dir = osp.join(out_dir, 'vis')
    os.makedirs(vis_dir, exist_ok=True)
    # MMPretrain's inferencer builds its pipeline in the current default
    # scope (the mmdet / mmseg inferencers set theirs)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        inferencer = ImageClassificationInferencer(
            model, pretrained=weights or False, device=device)
        results = inferencer(files, show_dir=vis_dir)
    os.makedirs(osp.join(out_dir, 'preds'), exist_ok=True)
    for path, result in zip(files, results):
        stem = osp.splitext(osp.basename(path))[0]
        with open(osp.join(out_dir, 'preds', stem + '.json'), 'w') as f:
            json.dump({k: v for k, v in result.items() if k != 'pred_scores'},
                      f, indent=2)
    return results


def written_files(out_dir, files, scope):
    """The painted images the inferencer of ``scope`` wrote, per input."""
    vis = []
    for path in files:
        name = osp.basename(path)
        if scope == 'mmpretrain':  # MMPretrain saves PNG named by the stem
            name = osp.splitext(name)[0] + '.png'
        vis.append(osp.join(out_dir, 'vis', name))
    return vis


def main():
    args = parse_args()
    files = list_images(args.inputs)
    model, scope = load_model_config(args.model)
    run(files, model, scope, args.weights, args.out_dir, args.device,
        args.score_thr)
    for path in written_files(args.out_dir, files, scope):
        if not osp.isfile(path):
            raise RuntimeError(f'the inferencer did not write {path}')
        print(path)


if __name__ == '__main__':
    main()
