"""mmpola: PolaFormer backbones for the OpenMMLab 2.x stack.

``import mmpola`` registers ``PolaPVT`` and ``PolaSwin`` in MMEngine's root
``MODELS`` registry (visible from mmdet, mmseg and mmpretrain) and makes
MMEngine load local checkpoints without running pickled code
(``mmpola.utils.torch_load``).
"""
from .models import PolaAttention, PolaPVT, PolaSwin  # noqa: F401
from .utils.torch_load import register_mmengine_loader

__version__ = '0.1.0'

register_mmengine_loader()
