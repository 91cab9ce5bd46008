"""The generated datasets are valid COCO / ADE20K / ImageNet data."""
import filecmp
import json

import numpy as np
import pytest
from PIL import Image

from mmpola.datasets import (ADE_BACKGROUND, ADE_OBJECTS, COCO_CLASSES,
                             SEG_CLASSES, make_ade20k, make_coco,
                             make_imagenet, make_segmentation)
from mmpola.datasets.synthetic import COCO_COLOURS


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('ade')
    # ADE20K-like odd sizes, both orientations
    make_ade20k(str(root), num_train=2, num_val=3,
                img_size=[(375, 500), (500, 375)])
    return root


@pytest.fixture(scope='module')
def imagenet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('imagenet')
    make_imagenet(str(root), num_classes=3, per_class=4, img_size=(48, 40))
    return root


def test_coco_annotations_match_images(coco_root):
    from pycocotools.coco import COCO
    for split in ('train2017', 'val2017'):
        coco = COCO(str(coco_root / 'annotations' / f'instances_{split}.json'))
        names = [c['name'] for c in coco.loadCats(coco.getCatIds())]
        assert names == list(COCO_CLASSES)
        for info in coco.loadImgs(coco.getImgIds()):
            img = np.asarray(Image.open(coco_root / split / info['file_name']))
            assert img.shape == (info['height'], info['width'], 3)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=info['id']))
            assert anns and all(a['iscrowd'] == 0 for a in anns)
            for ann in anns:
                mask = coco.annToMask(ann).astype(bool)
                ys, xs = np.nonzero(mask)
                x, y, w, h = ann['bbox']
                assert abs(xs.min() - x) <= 1
                assert abs(xs.max() + 1 - x - w) <= 1
                assert abs(ys.min() - y) <= 1
                assert abs(ys.max() + 1 - y - h) <= 1
                assert mask.sum() == pytest.approx(ann['area'], rel=0.1)
                # the pixels under the mask carry the class colour
                colour = COCO_COLOURS[ann['category_id'] - 1]
                assert np.abs(img[mask].mean(0) - colour).max() < 40


def test_coco_deterministic(tmp_path):
    make_coco(str(tmp_path / 'a'), 3, 1, img_size=(64, 80), seed=1)
    make_coco(str(tmp_path / 'b'), 3, 1, img_size=(64, 80), seed=1)
    make_coco(str(tmp_path / 'c'), 3, 1, img_size=(64, 80), seed=2)
    ann = 'annotations/instances_train2017.json'
    assert filecmp.cmp(tmp_path / 'a' / ann, tmp_path / 'b' / ann, False)
    assert not filecmp.cmp(tmp_path / 'a' / ann, tmp_path / 'c' / ann, False)
    img = 'train2017/000000000001.jpg'
    assert filecmp.cmp(tmp_path / 'a' / img, tmp_path / 'b' / img, False)


def test_coco_mmdet_dataset(coco_root):
    from mmcv.transforms import LoadImageFromFile
    from mmdet.datasets import CocoDataset
    from mmdet.datasets.transforms import LoadAnnotations
    ds = CocoDataset(
        data_root=str(coco_root),
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'), metainfo=dict(classes=COCO_CLASSES),
        pipeline=[LoadImageFromFile(),
                  LoadAnnotations(with_bbox=True, with_mask=True)])
    assert len(ds) == 2
    num_anns = len(json.load(open(
        coco_root / 'annotations/instances_val2017.json'))['annotations'])
    seen = 0
    for i in range(len(ds)):
        data = ds[i]
        assert data['img'].shape == (128, 160, 3)
        labels = data['gt_bboxes_labels']
        assert len(data['gt_bboxes']) == len(data['gt_masks']) == len(labels)
        assert set(labels.tolist()) <= {0, 1, 2}
        seen += len(labels)
    assert seen == num_anns


def test_ade20k_mmseg_dataset(ade_root):
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets import ADE20KDataset
    from mmseg.datasets.transforms import LoadAnnotations
    ds = ADE20KDataset(
        data_root=str(ade_root),
        data_prefix=dict(img_path='images/validation',
                         seg_map_path='annotations/validation'),
        pipeline=[LoadImageFromFile(), LoadAnnotations()])
    assert len(ds) == 3 and len(ds.metainfo['classes']) == 150
    shapes = set()
    for i in range(len(ds)):
        data = ds[i]
        seg = data['gt_seg_map']
        assert seg.shape == data['img'].shape[:2]
        shapes.add(seg.shape)
        # reduce_zero_label: 0 ("other") -> 255, class k -> k - 1
        allowed = {k - 1 for k in (*ADE_BACKGROUND, *ADE_OBJECTS)} | {255}
        assert set(np.unique(seg).tolist()) <= allowed
        assert (seg == 255).any() and len(np.unique(seg)) >= 3
    assert shapes == {(375, 500), (500, 375)}


def test_imagenet_mmpretrain_dataset(imagenet_root):
    from mmpretrain.datasets import CustomDataset, ImageNet
    train = ImageNet(data_root=str(imagenet_root), split='train')
    val = ImageNet(data_root=str(imagenet_root), split='val')  # meta/val.txt
    assert len(train) == 12 and len(val) == 3
    labels = sorted(train.get_gt_labels().tolist())
    assert labels == [0] * 4 + [1] * 4 + [2] * 4
    img = Image.open(train.get_data_info(0)['img_path'])
    assert img.size == (40, 48) and img.mode == 'RGB'
    # the folder layout alone (no annotation list) gives the same labels
    folders = CustomDataset(data_root=str(imagenet_root), data_prefix='val')
    assert folders.CLASSES == ('n00000000', 'n00000001', 'n00000002')
    assert folders.get_gt_labels().tolist() == val.get_gt_labels().tolist()


def test_segmentation_of_own_classes(tmp_path):
    """make_segmentation: MMSegmentation's img_dir/ann_dir layout, read by
    BaseSegDataset with the classes as metainfo; label i is classes[i]
    (0 the background), 255 unlabelled; each class has its colour."""
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets import BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations
    make_segmentation(str(tmp_path), num_train=2, num_val=4,
                      img_size=[(96, 128), (128, 96)], seed=3)
    assert sorted(p.name for p in (tmp_path / 'ann_dir' / 'val').iterdir()) \
        == [f'val_0000{i}.png' for i in range(1, 5)]
    ds = BaseSegDataset(
        data_root=str(tmp_path), img_suffix='.jpg', seg_map_suffix='.png',
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        metainfo=dict(classes=SEG_CLASSES), reduce_zero_label=False,
        pipeline=[LoadImageFromFile(), LoadAnnotations()])
    assert len(ds) == 4 and ds.metainfo['classes'] == SEG_CLASSES
    seen = set()
    for i in range(len(ds)):
        data = ds[i]
        seg, img = data['gt_seg_map'], data['img'][..., ::-1]  # BGR -> RGB
        assert seg.shape == img.shape[:2]
        values = set(np.unique(seg).tolist())
        assert 0 in values and 255 in values
        assert values <= {0, 1, 2, 3, 255}
        seen |= values
        for k in values - {0, 255}:
            colour = COCO_COLOURS[k - 1]
            assert np.abs(img[seg == k].mean(0) - colour).max() < 40
    assert len(seen - {0, 255}) >= 2  # objects of several classes
    with pytest.raises(ValueError, match='background and at least one'):
        make_segmentation(str(tmp_path / 'x'), classes=('background', ))
