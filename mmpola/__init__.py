"""mmpola: PolaFormer (polarity-aware linear attention) for the OpenMMLab
2.x stack, timm and plain PyTorch.

With torch alone, ``import mmpola`` gives the attention layer
(``mmpola.layers.PolaAttention``), its core (``mmpola.ops``) and the safe
checkpoint reader (``mmpola.utils.torch_load.safe_load``). With MMEngine and
mmcv installed it also registers ``PolaPVT`` and ``PolaSwin`` in MMEngine's
root ``MODELS`` registry (visible from mmdet, mmseg and mmpretrain), makes
MMEngine read checkpoints of every scheme without running code from them
(SECURITY.md), lists the classifiers by name in MMPretrain (``mmpola.hub``)
and, in a OneDL environment, lets ``mmseg::`` / ``mmdet::`` /
``mmpretrain::`` base configs resolve. With timm installed it registers the
released classifiers as timm models (``mmpola.timm_models``).
"""
from importlib.util import find_spec

from .layers import PolaAttention  # noqa: F401

__version__ = '0.1.0'

if find_spec('mmengine') is not None and find_spec('mmcv') is not None:
    from .models import PolaPVT, PolaSwin  # noqa: F401
    from .utils.imports import onedl_config_scopes
    from .utils.torch_load import register_mmengine_loader

    register_mmengine_loader()
    onedl_config_scopes()

    from . import hub  # mmpretrain names; released classifiers
    hub.enable_released_classifiers()
    try:
        hub.register_model_index()
    except ImportError:  # no MMPretrain: nothing to list by name
        pass

if find_spec('timm') is not None:
    from . import timm_models  # noqa: F401
