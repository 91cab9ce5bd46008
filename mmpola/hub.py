"""Pola classifiers by name in MMPretrain, and released files as classifiers.

After ``import mmpola``:

* ``mmpretrain.list_models('*pola*')`` lists every config of
  ``configs/mmpretrain`` and ``mmpretrain.get_model(name, pretrained=FILE)``
  / ``inference_model(name, image, pretrained=FILE)`` build it
  (:func:`register_model_index`: the classification metafiles go into
  MMPretrain's public ``ModelHub.register_model_index``);
* ``FILE`` may be a released PolaFormer file (``{'model': state_dict,
  'config': ...}`` or its bare state dict) as well as a converted one
  (``backbone.*`` / ``head.fc.*``): MMPretrain's ``ImageClassifier`` runs its
  backbone's ``_checkpoint_filter`` as a load pre-hook ("weights from a third
  party"), and :func:`enable_released_classifiers` gives the Pola backbones
  one that maps the released keys to the classifier's
  (:func:`released_classifier_filter`). Detectors and segmentors do not run
  it: for them a released file stays a backbone ``init_cfg``.

Example:
    >>> import mmpola
    >>> from mmpretrain import get_model, inference_model
    >>> model = get_model('pola-pvt-tiny_8xb128_in1k',
    ...                   pretrained='checkpoints/pola_pvt_tiny.pth')
    >>> inference_model(model, 'demo.jpg')['pred_class']
"""
import os.path as osp

import torch
import yaml
from mmengine.logging import print_log

from .checkpoint import (detect_family, is_released_layout,
                         released_to_classifier)

__all__ = ['register_model_index', 'enable_released_classifiers',
           'released_classifier_filter', 'classification_metafiles']

_PACKAGE = osp.dirname(osp.abspath(__file__))


def _zoo_root():
    """The folder holding ``model-index.yml`` and ``configs/``: the
    package's ``.mim`` (a wheel's copy, or links into the checkout)."""
    mim = osp.join(_PACKAGE, '.mim')
    if osp.isfile(osp.join(mim, 'model-index.yml')):
        return mim
    return osp.dirname(_PACKAGE)  # a checkout without the links


def classification_metafiles(root=None):
    """The metafiles of ``configs/mmpretrain`` that ``model-index.yml``
    imports (absolute paths)."""
    root = root or _zoo_root()
    with open(osp.join(root, 'model-index.yml'), encoding='utf-8') as f:
        imports = yaml.safe_load(f)['Import']
    return [osp.join(root, p) for p in imports
            if p.replace('\\', '/').startswith('configs/mmpretrain/')]


def _model_names(metafile):
    with open(metafile, encoding='utf-8') as f:
        return [m['Name'].lower() for m in yaml.safe_load(f)['Models']]


def register_model_index():
    """Register mmpola's classification models in MMPretrain's ``ModelHub``
    (a metafile whose models are all known already is skipped, so calling
    it again is harmless). Raises ``ImportError`` without MMPretrain.

    Returns the names this call registered.
    """
    from mmpretrain.apis import ModelHub
    root = _zoo_root()
    registered = []
    for metafile in classification_metafiles(root):
        names = _model_names(metafile)
        if all(ModelHub.has(name) for name in names):
            continue
        # Config paths in the metafiles are relative to the zoo root.
        ModelHub.register_model_index(metafile, config_prefix=root)
        registered += names
    return registered


# ------------------------------------------------ released -> classifier

def _released_state(state_dict, prefix):
    """The released state dict inside a classifier's ``state_dict``, and the
    keys holding it: a nested ``'model'`` entry (the released file as it
    is, with its training entries), or bare released keys. None when the
    file is in another layout."""
    nested = state_dict.get(prefix + 'model')
    if isinstance(nested, dict) and nested and all(
            isinstance(v, torch.Tensor) for v in nested.values()):
        # the released file: 'model' plus optimizer, config, epoch, ...
        owned = [k for k in state_dict if k.startswith(prefix)
                 and '.' not in k[len(prefix):]
                 and not isinstance(state_dict[k], torch.Tensor)]
        sd = {(k[7:] if k.startswith('module.') else k): v
              for k, v in nested.items()}
        if is_released_layout(sd) and detect_family(sd):
            return sd, owned
        return None
    mine = {k[len(prefix):]: k for k in state_dict if k.startswith(prefix)}
    classifier_keys = ('backbone.', 'neck.', 'head.fc.', 'data_preprocessor.')
    bare = {k: state_dict[full] for k, full in mine.items()
            if not k.startswith(classifier_keys)}
    if bare and is_released_layout(bare) and detect_family(bare):
        return bare, [mine[k] for k in bare]
    return None


def released_classifier_filter(backbone, state_dict, prefix, *args):
    """``ImageClassifier`` load pre-hook: released PolaFormer weights ->
    the classifier's ``backbone.*`` (mmpola's layout) and ``head.fc.*``
    (mmpretrain's ``LinearClsHead``).

    Called by MMPretrain's ``ImageClassifier`` as its backbone's
    ``_checkpoint_filter`` with the whole model's ``state_dict`` (modified in
    place). Files in any other layout pass unchanged. The backbone's own
    pre-hook then resizes grids trained at another size.
    """
    found = _released_state(state_dict, prefix)
    if found is None:
        return
    sd, owned = found
    family = detect_family(sd)
    if family != backbone.family:
        raise ValueError(
            f'The checkpoint holds a released Pola-{str(family).upper()} '
            f'classifier, not a Pola-{backbone.family.upper()} one (keys '
            f'such as {list(sd)[:3]}): pick the config of that model.')
    converted, dropped = released_to_classifier(sd, family)
    for key in owned:
        del state_dict[key]
    state_dict.update((prefix + k, v) for k, v in converted.items())
    print_log(
        f'{type(backbone).__name__} classifier: released PolaFormer weights '
        f'mapped to backbone.* and head.fc.* ({len(converted)} tensors); '
        f'{len(dropped)} ignored (rebuilt at run time or unused)',
        logger='current')


def enable_released_classifiers():
    """Give the Pola backbones MMPretrain's third-party hook
    (``_checkpoint_filter``): every ``ImageClassifier`` built with one then
    loads released files (``get_model``, ``load_from``,
    ``tools/test.py CONFIG pola_pvt_tiny.pth``)."""
    from .models import PolaPVT, PolaSwin
    for cls in (PolaPVT, PolaSwin):
        cls._checkpoint_filter = released_classifier_filter
