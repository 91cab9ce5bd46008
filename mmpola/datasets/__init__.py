"""Generators of small datasets in the COCO, ADE20K and ImageNet formats,
and a semantic segmentation set of its own classes."""
from .synthetic import (ADE_BACKGROUND, ADE_OBJECTS, COCO_CLASSES,
                        SEG_CLASSES, make_ade20k, make_coco, make_imagenet,
                        make_segmentation)

__all__ = [
    'make_coco', 'make_ade20k', 'make_imagenet', 'make_segmentation',
    'COCO_CLASSES', 'SEG_CLASSES', 'ADE_BACKGROUND', 'ADE_OBJECTS'
]
