"""mmpola: PolaFormer backbones for the OpenMMLab 2.x stack.

``import mmpola`` registers ``PolaPVT`` and ``PolaSwin`` in MMEngine's root
``MODELS`` registry (visible from mmdet, mmseg and mmpretrain) and makes
MMEngine read checkpoints of every scheme without running code from them
(``mmpola.utils.torch_load``, SECURITY.md). In a OneDL
environment it also lets ``mmseg::`` / ``mmdet::`` / ``mmpretrain::`` base
configs resolve (``mmpola.utils.imports.onedl_config_scopes``).
"""
from .models import PolaAttention, PolaPVT, PolaSwin  # noqa: F401
from .utils.imports import onedl_config_scopes
from .utils.torch_load import register_mmengine_loader

__version__ = '0.1.0'

register_mmengine_loader()
onedl_config_scopes()

from . import hub  # noqa: E402  (mmpretrain names; released classifiers)
hub.enable_released_classifiers()
try:
    hub.register_model_index()
except ImportError:  # no MMPretrain: nothing to list by name
    pass

try:  # the released classifiers as timm models, when timm is installed
    import timm  # noqa: F401
except ImportError:
    pass
else:
    from . import timm_models  # noqa: F401
