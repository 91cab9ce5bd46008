"""Generators of small datasets in the COCO, ADE20K and ImageNet formats."""
from .synthetic import (ADE_BACKGROUND, ADE_OBJECTS, COCO_CLASSES, make_ade20k,
                        make_coco, make_imagenet)

__all__ = [
    'make_coco', 'make_ade20k', 'make_imagenet', 'COCO_CLASSES',
    'ADE_BACKGROUND', 'ADE_OBJECTS'
]
