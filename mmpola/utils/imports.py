"""Optional dependencies: import them lazily, and say what to install.

mmpola's core needs torch, numpy, MMEngine and MMCV's Python bricks; mmdet,
mmseg, mmpretrain, matplotlib... are extras (``pip install 'mmpola[det]'``).
``require('mmdet')`` returns the module, or raises an ``ImportError`` that
names the extra to install. Only a missing package is translated: an error
raised *inside* an installed package (a broken mmcv build, say) propagates
unchanged.
"""
import importlib

# module -> (extra, what the OneDL fork calls the distribution)
EXTRAS = {
    'mmengine': ('openmmlab', 'onedl-mmengine'),
    'mmcv': ('openmmlab', 'onedl-mmcv'),
    'mmdet': ('det', 'onedl-mmdetection'),
    'mmseg': ('seg', 'onedl-mmsegmentation'),
    'mmpretrain': ('cls', 'onedl-mmpretrain'),
    'torchvision': ('cls', None),
    'matplotlib': ('analysis', None),
    'pytest': ('tests', None),
}


def install_hint(module, extra=None):
    """The sentence telling what to install for ``module``."""
    top = module.split('.')[0]
    default_extra, onedl = EXTRAS.get(top, (None, None))
    extra = extra or default_extra
    if extra is None:
        return f'pip install {top}'
    hint = f"pip install 'mmpola[{extra}]'"
    if onedl:
        hint += (f" (in a OneDL environment: pip install {onedl}, or "
                 f"'mmpola[onedl]' for the whole OneDL stack)")
    return hint


def require(module, extra=None, purpose=None):
    """Import ``module`` and return it; if it (or its top-level package) is
    not installed, raise ``ImportError`` saying what to install.

    ``purpose`` names what needs it, e.g. ``'Pola-Swin'``.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split('.')[0]
        if e.name is None or e.name.split('.')[0] != top:
            raise  # a dependency of an installed package is missing
        who = purpose or 'this part of mmpola'
        raise ImportError(f'{who} needs {top}, which is not installed: '
                          f'{install_hint(module, extra)}') from e


def onedl_config_scopes():
    """Make ``_base_ = 'mmseg::...'`` configs resolve in a OneDL environment.

    MMEngine finds a ``scope::`` config through the *distribution* of the
    scope's package (``mmseg`` -> ``mmsegmentation``); OneDL installs that
    module as ``onedl-mmsegmentation``, so onedl-mmengine 0.10.12 reports
    "mmsegmentation is not installed" (seen 2026-12-03). Where a scope's
    distribution is missing but its module imports, map the scope to the
    module name (MMEngine then finds it with ``find_spec``). A no-op in an
    upstream OpenMMLab environment. Returns the scopes it changed.
    """
    import importlib.metadata as md
    import importlib.util
    try:
        from mmengine.config import utils as cfg_utils
    except ImportError:
        return []
    changed = []
    for module, dist in list(cfg_utils.MODULE2PACKAGE.items()):
        if module == dist:
            continue
        try:
            md.version(dist)
        except md.PackageNotFoundError:
            if importlib.util.find_spec(module) is not None:
                cfg_utils.MODULE2PACKAGE[module] = module
                changed.append(module)
    return changed


def is_available(module):
    """Whether ``module`` imports (without raising)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
