"""mmpola: PolaFormer backbones for the OpenMMLab 2.x stack.

``import mmpola`` registers ``PolaPVT`` and ``PolaSwin`` in MMEngine's root
``MODELS`` registry (visible from mmdet, mmseg and mmpretrain) and lets
``torch.load`` read MMEngine's own training checkpoints.
"""
from .models import PolaAttention, PolaPVT, PolaSwin  # noqa: F401
from .utils.torch_load import allow_mmengine_checkpoints

__version__ = '0.1.0'

allow_mmengine_checkpoints()
