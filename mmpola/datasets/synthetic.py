"""Small synthetic datasets written in the real on-disk formats.

The files are read by the unmodified dataset classes of MMDetection
(``CocoDataset``), MMSegmentation (``ADE20KDataset``) and MMPretrain
(``ImageNet``), so whatever runs on them runs on the real data. The content is
simple enough for a small model to learn within minutes on a CPU: every class
has its own colour and shape on a noisy background. Output is deterministic
for a given ``seed``.

Sizes are ``(H, W)``; ``img_size`` may also be a list of sizes, used in turn
(e.g. ``[(375, 500), (500, 375)]`` for mixed orientations).

Example:
    >>> from mmpola.datasets import make_coco
    >>> make_coco('data/coco_demo', num_train=64, num_val=16)
"""
import json
import math
import os
import os.path as osp

import numpy as np
from PIL import Image, ImageDraw

COCO_CLASSES = ('rectangle', 'ellipse', 'triangle')
COCO_COLOURS = ((225, 45, 45), (45, 200, 70), (55, 85, 235))
# A semantic segmentation set of its own classes: label 0 is the background,
# 1.. the shapes (see make_segmentation); 255 = unlabelled.
SEG_CLASSES = ('background', ) + COCO_CLASSES

# ADE20K label values (1-based; 0 = "other", ignored with reduce_zero_label).
ADE_BACKGROUND = {3: 'sky', 2: 'building', 4: 'floor', 7: 'road'}
ADE_OBJECTS = {13: 'person', 21: 'car', 5: 'tree', 20: 'chair'}


def _sizes(img_size, num):
    sizes = [img_size] if isinstance(img_size[0], int) else list(img_size)
    return [tuple(sizes[i % len(sizes)]) for i in range(num)]


def _noisy_background(rng, h, w, base=None, std=18.):
    """A smooth colour gradient plus pixel noise, as float (H, W, 3)."""
    if base is None:
        base = rng.uniform(60, 190, size=3)
    ramp = np.linspace(-25, 25, w)[None, :, None] * rng.uniform(-1, 1, 3)
    img = base + ramp + rng.normal(0, std, size=(h, w, 3))
    return img


def _to_image(arr):
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _polygon(rng, kind, x0, y0, w, h):
    """Vertices [(x, y), ...] of a shape filling the box (x0, y0, w, h)."""
    if kind == 'rectangle':
        return [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    if kind == 'ellipse':
        cx, cy, n = x0 + w / 2, y0 + h / 2, 24
        return [(cx + w / 2 * math.cos(2 * math.pi * i / n),
                 cy + h / 2 * math.sin(2 * math.pi * i / n)) for i in range(n)]
    if kind == 'triangle':
        apex = x0 + rng.uniform(0.2, 0.8) * w
        return [(x0, y0 + h), (x0 + w, y0 + h), (apex, y0)]
    raise ValueError(f'unknown shape {kind!r}')


def _polygon_area(pts):
    x, y = np.asarray(pts, dtype=np.float64).T
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _place_boxes(rng, h, w, num, min_frac, max_frac, tries=50):
    """Up to ``num`` non-overlapping boxes (x0, y0, bw, bh) inside (h, w)."""
    boxes, side = [], min(h, w)
    for _ in range(tries):
        if len(boxes) == num:
            break
        bw = side * rng.uniform(min_frac, max_frac)
        bh = side * rng.uniform(min_frac, max_frac)
        x0, y0 = rng.uniform(1, w - bw - 1), rng.uniform(1, h - bh - 1)
        margin = 0.05 * side
        if all(x0 + bw + margin < bx or bx + bbw + margin < x0 or
               y0 + bh + margin < by or by + bbh + margin < y0
               for bx, by, bbw, bbh in boxes):
            boxes.append((x0, y0, bw, bh))
    return boxes


def make_coco(root, num_train=64, num_val=16, img_size=(256, 320), seed=0,
              max_objects=3):
    """Write a COCO-format instance segmentation dataset under ``root``.

    Layout: ``train2017/``, ``val2017/`` (JPEG) and
    ``annotations/instances_{train,val}2017.json`` with boxes (xywh), polygon
    masks, areas and ``iscrowd=0``. Classes: :data:`COCO_CLASSES`, each with
    its own colour. Returns the dict of annotation file paths.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    categories = [dict(id=i + 1, name=n, supercategory='shape')
                  for i, n in enumerate(COCO_CLASSES)]
    img_id = ann_id = 0
    ann_files = {}
    for split, num in (('train2017', num_train), ('val2017', num_val)):
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, annotations = [], []
        for h, w in _sizes(img_size, num):
            img_id += 1
            img = _to_image(_noisy_background(rng, h, w))
            draw = ImageDraw.Draw(img)
            n_obj = int(rng.integers(1, max_objects + 1))
            for box in _place_boxes(rng, h, w, n_obj, 0.25, 0.5):
                label = int(rng.integers(len(COCO_CLASSES)))
                pts = _polygon(rng, COCO_CLASSES[label], *box)
                colour = np.clip(np.add(COCO_COLOURS[label],
                                        rng.integers(-25, 26, 3)), 0, 255)
                draw.polygon(pts, fill=tuple(int(c) for c in colour))
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                ann_id += 1
                annotations.append(dict(
                    id=ann_id, image_id=img_id, category_id=label + 1,
                    bbox=[round(min(xs), 2), round(min(ys), 2),
                          round(max(xs) - min(xs), 2),
                          round(max(ys) - min(ys), 2)],
                    area=round(_polygon_area(pts), 2),
                    segmentation=[[round(v, 2) for p in pts for v in p]],
                    iscrowd=0))
            file_name = f'{img_id:012d}.jpg'
            img.save(osp.join(root, split, file_name), quality=92)
            images.append(dict(id=img_id, file_name=file_name, height=h,
                               width=w))
        ann_files[split] = osp.join(root, 'annotations',
                                    f'instances_{split}.json')
        with open(ann_files[split], 'w') as f:
            json.dump(dict(images=images, annotations=annotations,
                           categories=categories), f)
    return ann_files


def make_ade20k(root, num_train=32, num_val=8, img_size=(375, 500), seed=0):
    """Write an ADE20K-format semantic segmentation dataset under ``root``.

    Layout: ``images/{training,validation}/*.jpg`` and
    ``annotations/{training,validation}/*.png`` (uint8 label maps, ADE20K
    values: 0 = other, 1..150 = classes). Each image has a two-class
    background (upper and lower part, :data:`ADE_BACKGROUND`), one to three
    objects (:data:`ADE_OBJECTS`) and a small unlabelled (0) patch. Every
    class has its own colour. Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    colour_rng = np.random.default_rng(12345)  # same colours for every seed
    palette = colour_rng.integers(30, 226, size=(151, 3))
    top, bottom = list(ADE_BACKGROUND)[:2], list(ADE_BACKGROUND)[2:]
    objects = list(ADE_OBJECTS)
    kinds = ('rectangle', 'ellipse', 'triangle')
    for split, prefix, num in (('training', 'train', num_train),
                               ('validation', 'val', num_val)):
        for sub in ('images', 'annotations'):
            os.makedirs(osp.join(root, sub, split), exist_ok=True)
        for i, (h, w) in enumerate(_sizes(img_size, num)):
            label = Image.new('L', (w, h), int(rng.choice(top)))
            draw = ImageDraw.Draw(label)
            horizon = int(h * rng.uniform(0.35, 0.65))
            draw.rectangle([0, horizon, w, h], fill=int(rng.choice(bottom)))
            for box in _place_boxes(rng, h, w, int(rng.integers(1, 4)),
                                    0.2, 0.45):
                kind = kinds[int(rng.integers(len(kinds)))]
                draw.polygon(_polygon(rng, kind, *box),
                             fill=int(rng.choice(objects)))
            x0, y0 = rng.uniform(0, 0.9) * w, rng.uniform(0, 0.9) * h
            draw.ellipse([x0, y0, x0 + 0.08 * w, y0 + 0.08 * h], fill=0)
            seg = np.asarray(label)
            img = palette[seg] + rng.normal(0, 15, size=(h, w, 3))
            stem = f'ADE_{prefix}_{i + 1:08d}'
            _to_image(img).save(
                osp.join(root, 'images', split, stem + '.jpg'), quality=92)
            label.save(osp.join(root, 'annotations', split, stem + '.png'))
    return root


def make_segmentation(root, num_train=32, num_val=8, img_size=(256, 320),
                      seed=0, classes=SEG_CLASSES):
    """Write a semantic segmentation dataset of its own classes under
    ``root``, in the layout MMSegmentation's guide suggests for a new
    dataset (read by ``BaseSegDataset``):
    ``img_dir/{train,val}/*.jpg`` and ``ann_dir/{train,val}/*.png`` (uint8
    label maps: ``i`` = ``classes[i]``, 255 = an unlabelled patch).

    ``classes[0]`` is the background (a noisy gradient); each image has one
    to three objects of the other classes, each class its own colour and
    shape (rectangle, ellipse, triangle, in turn). Returns ``root``.
    """
    if len(classes) < 2:
        raise ValueError(f'classes: a background and at least one object '
                         f'class, got {classes!r}')
    rng = np.random.default_rng(seed)
    kinds = ('rectangle', 'ellipse', 'triangle')
    colours = [COCO_COLOURS[i % 3] for i in range(len(classes) - 1)]
    for split, num in (('train', num_train), ('val', num_val)):
        for sub in ('img_dir', 'ann_dir'):
            os.makedirs(osp.join(root, sub, split), exist_ok=True)
        for i, (h, w) in enumerate(_sizes(img_size, num)):
            img = _to_image(_noisy_background(rng, h, w))
            label = Image.new('L', (w, h), 0)
            draw, draw_label = ImageDraw.Draw(img), ImageDraw.Draw(label)
            for box in _place_boxes(rng, h, w, int(rng.integers(1, 4)),
                                    0.2, 0.45):
                k = int(rng.integers(1, len(classes)))
                pts = _polygon(rng, kinds[(k - 1) % 3], *box)
                colour = np.clip(np.add(colours[k - 1],
                                        rng.integers(-25, 26, 3)), 0, 255)
                draw.polygon(pts, fill=tuple(int(c) for c in colour))
                draw_label.polygon(pts, fill=k)
            x0, y0 = rng.uniform(0, 0.9) * w, rng.uniform(0, 0.9) * h
            draw_label.ellipse([x0, y0, x0 + 0.06 * w, y0 + 0.06 * h],
                               fill=255)
            stem = f'{split}_{i + 1:05d}'
            img.save(osp.join(root, 'img_dir', split, stem + '.jpg'),
                     quality=92)
            label.save(osp.join(root, 'ann_dir', split, stem + '.png'))
    return root


def make_imagenet(root, num_classes=4, per_class=8, img_size=(64, 64), seed=0,
                  num_val_per_class=None):
    """Write an ImageNet-format classification dataset under ``root``.

    Layout: ``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG`` and the annotation
    lists ``meta/{train,val}.txt`` (``<wnid>/<file> <label>`` per line), as
    read by MMPretrain's ``ImageNet`` (with or without the lists). Class ``k``
    is ``n{k:08d}``: a stripe pattern with its own colour and orientation.
    Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    num_val_per_class = num_val_per_class or max(1, per_class // 4)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    for split, per in (('train', per_class), ('val', num_val_per_class)):
        lines = []
        for label in range(num_classes):
            wnid = f'n{label:08d}'
            os.makedirs(osp.join(root, split, wnid), exist_ok=True)
            hue = 2 * math.pi * label / num_classes
            colour = 128 + 90 * np.cos(hue + np.array([0, 2.1, 4.2]))
            angle = math.pi * label / num_classes
            for k, (h, w) in enumerate(_sizes(img_size, per)):
                yy, xx = np.mgrid[0:h, 0:w]
                phase = rng.uniform(0, 2 * math.pi)
                proj = xx * math.cos(angle) + yy * math.sin(angle)
                stripes = np.sin(proj * 2 * math.pi / 12 + phase) > 0
                img = _noisy_background(rng, h, w, base=60., std=20.)
                img[stripes] = colour + rng.normal(0, 20, (stripes.sum(), 3))
                file_name = f'{wnid}_{split}_{k:05d}.JPEG'
                _to_image(img).save(osp.join(root, split, wnid, file_name),
                                    format='JPEG', quality=92)
                lines.append(f'{wnid}/{file_name} {label}\n')
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.writelines(lines)
    return root
