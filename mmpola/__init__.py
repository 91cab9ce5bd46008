"""mmpola: PolaFormer backbones for the OpenMMLab 2.x stack.

With torch alone, ``import mmpola`` gives the attention layer
(``mmpola.layers.PolaAttention``) and its core (``mmpola.ops``). With
MMEngine and mmcv installed it also registers ``PolaPVT`` and ``PolaSwin``
in MMEngine's root ``MODELS`` registry (visible from mmdet, mmseg and
mmpretrain) and makes MMEngine load local checkpoints without running
pickled code (``mmpola.utils.torch_load``: torch's weights-only reader with
a small allow-list, never less strict than torch's default). In a OneDL
environment it also lets ``mmseg::`` / ``mmdet::`` / ``mmpretrain::`` base
configs resolve (``mmpola.utils.imports.onedl_config_scopes``).
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
