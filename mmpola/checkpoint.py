"""The one door for checkpoints: reading, the released->mmpola converter
(key mapping, grid resizing) and validated loading into a backbone.

Released PolaFormer files (``{'model': state_dict, 'optimizer', ...,
'config': <yacs CfgNode>}``) are read without executing pickled code and
without yacs installed (:func:`mmpola.utils.torch_load.safe_load`); files
converted by ``tools/model_converters/polaformer_to_mmpola.py``
(``backbone.*`` keys) and bare state dicts load the same way.

One converter, :func:`convert_state_dict`, serves every load route: the
backbones' state-dict pre-hook (:func:`released_state_dict_pre_hook`) runs
it inside every ``load_state_dict`` (``mmengine.runner.load_checkpoint``, a
detector's ``load_from`` with ``backbone.*`` keys), and
:func:`load_pretrained` (``init_cfg=dict(type='Pretrained', ...)``) runs it
first to refuse, before anything is loaded, a file that does not fit.
"""
import math
import os.path as osp
import re
from collections import OrderedDict

import torch
from mmengine.logging import print_log

from .layers import resize_grid_tokens
from .utils.torch_load import register_mmengine_loader, safe_load

__all__ = ['read_checkpoint', 'extract_state_dict', 'convert_released',
           'convert_state_dict', 'resize_grid_param', 'load_pretrained',
           'convert_to_mmpretrain', 'released_to_classifier',
           'released_state_dict_pre_hook']

# ---------------------------------------------------------------- reading


def read_checkpoint(path):
    """Read a checkpoint into CPU memory, never running code from it.

    ``path`` is a local file (``.pth`` or ``.safetensors``) or any URL
    MMEngine knows (``http(s)://``, ``open-mmlab://``, ``torchvision://``,
    ``s3://``, ...): MMEngine fetches the bytes, mmpola's safe reader reads
    them (:mod:`mmpola.utils.torch_load`). The released training code's
    yacs ``config`` becomes an inert dict; a file asking for code is
    refused.
    """
    path = str(path)
    if '://' in path:
        from mmengine.runner.checkpoint import CheckpointLoader
        register_mmengine_loader()
        return CheckpointLoader.load_checkpoint(path, map_location='cpu',
                                                logger='silent')
    if not osp.isfile(osp.expanduser(path)):
        raise FileNotFoundError(
            f'Checkpoint file not found: {path!r}. Download the released '
            'PolaFormer weights and put them there (see README, "Released '
            'weights"), or set the backbone init_cfg to None to train from '
            'scratch.')
    return safe_load(path)


def extract_state_dict(ckpt, path='<checkpoint>'):
    """The state dict of a checkpoint: its ``state_dict`` or ``model``
    entry, or the checkpoint itself; ``module.`` prefixes removed."""
    if isinstance(ckpt, dict):
        for key in ('state_dict', 'model'):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not all(
            isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f'{path}: no state dict found (expected a dict of '
                         'tensors, or one under "state_dict" or "model")')
    return OrderedDict(
        (k[7:] if k.startswith('module.') else k, v) for k, v in ckpt.items())


# ------------------------------------------------------ released -> mmpola

# Buffers the released files hold that depend on the input size: rebuilt
# at run time, never loaded.
REBUILT = re.compile(r'(^|\.)(relative_position_index|attn_mask)$')


def detect_family(state_dict):
    """'pvt', 'swin' or None, from backbone-relative keys."""
    if any(k.startswith(('block1.', 'pos_embed1', 'patch_embed1.'))
           for k in state_dict):
        return 'pvt'
    if any(k.startswith(('layers.0.', 'patch_embed.')) for k in state_dict):
        return 'swin'
    return None


def is_released_layout(state_dict):
    return any('.mlp.fc1.' in k or re.search(r'patch_embed\d?\.proj\.', k)
               for k in state_dict)


def _merging_to_mmcv(t):
    """Released PatchMerging concatenates the 2x2 neighbours as
    (0,0),(1,0),(0,1),(1,1); mmcv's unfold orders channels c*4 + (kh*2+kw).
    Permutes the last dim (4C) of ``reduction.weight`` / ``norm.*``."""
    lead = t.shape[:-1]
    c = t.shape[-1] // 4
    t = t.reshape(*lead, 4, c)[..., [0, 2, 1, 3], :]
    return t.transpose(-1, -2).reshape(*lead, 4 * c)


def convert_released(state_dict, family):
    """Released PolaFormer keys -> mmpola backbone keys.

    Returns ``(backbone_state, head_state, dropped)``: the backbone
    tensors, the classification head (``head.*``), the dropped keys
    (buffers rebuilt at run time, PVT's unused final norm).
    """
    backbone, head, dropped = OrderedDict(), OrderedDict(), []
    for key, value in state_dict.items():
        if key.startswith('head.'):
            head[key] = value
            continue
        if REBUILT.search(key) or (family == 'pvt' and key.startswith('norm.')):
            dropped.append(key)
            continue
        new = re.sub(r'\.mlp\.fc1\.', '.ffn.layers.0.0.', key)
        new = re.sub(r'\.mlp\.fc2\.', '.ffn.layers.1.', new)
        new = re.sub(r'^(patch_embed\d?)\.proj\.', r'\1.projection.', new)
        if family == 'swin':
            new = re.sub(r'^norm\.', 'norm3.', new)
            if '.downsample.' in new:
                value = _merging_to_mmcv(value)
        backbone[new] = value
    return backbone, head, dropped


# leaf name -> interpolation (PVT's pos_embed is resized bilinearly on the
# fly; the others follow the released code's bicubic precedent)
GRID_MODES = {
    'positional_encoding': 'bicubic',
    'pos_embed': 'bilinear',
    'relative_position_bias_table': 'bicubic',
}


def resize_grid_param(key, value, shape):
    """Resize a square grid parameter to ``shape``: a (1, L, C) token grid
    or a ((2w-1)^2, heads) bias table. Returns None when ``key`` is not such
    a grid or the sizes are not square."""
    mode = GRID_MODES.get(re.sub(r'\d+$', '', key.rsplit('.', 1)[-1]))
    if mode is None or value.ndim != len(shape) or value.ndim not in (2, 3):
        return None
    tokens = value if value.ndim == 3 else value[None]
    dst_len, channels = shape[-2:]
    s, d = math.isqrt(tokens.shape[1]), math.isqrt(dst_len)
    if s * s != tokens.shape[1] or d * d != dst_len or (
            tokens.shape[2] != channels):
        return None
    out = resize_grid_tokens(tokens, (s, s), (d, d), mode).contiguous()
    return out if value.ndim == 3 else out[0]


def convert_state_dict(state_dict, model):
    """The one converter: backbone-relative keys of any supported layout
    (released, or mmpola's) -> ``model``'s (a PolaPVT or PolaSwin).

    Released keys are renamed (Swin's merging weights put in mmcv's
    channel order); rebuilt buffers, the classification head, PVT's unused
    final norm and Swin's final norm when the model has no last-stage
    output norm are dropped; square grids (position embeddings, positional
    encodings, relative position tables) of another size are resized to
    the model's. Other tensors are left as they are for the caller to
    report.

    Returns:
        tuple: ``(state_dict, dropped_keys, resized_keys)``.
    """
    dropped = []
    if is_released_layout(state_dict):
        state_dict, head, dropped = convert_released(state_dict, model.family)
        dropped += list(head)
    own = {k: v.shape for k, v in model.state_dict().items()}
    final_norm = f'norm{model.num_stages - 1}.'
    out, resized = OrderedDict(), []
    for key, value in state_dict.items():
        if REBUILT.search(key) or (key not in own
                                   and key.startswith(final_norm)):
            dropped.append(key)
            continue
        if key in own and value.shape != own[key]:
            new = resize_grid_param(key, value, own[key])
            if new is not None:
                value = new
                resized.append(key)
        out[key] = value
    return out, dropped, resized


# ----------------------------------------------------------------- loading


def new_layer_keys(model):
    """Keys a released checkpoint cannot provide: the output norms that
    dense prediction adds (Swin's ``norm3`` comes from its final norm)."""
    news = set()
    for name in model.state_dict():
        m = re.match(r'^norm(\d+)\.', name)
        if m and not (model.family == 'swin' and
                      int(m.group(1)) == model.num_stages - 1):
            news.add(name)
    return news


def load_pretrained(model, path, logger='current'):
    """Load a released / converted checkpoint into a PolaPVT or PolaSwin.

    Converted by :func:`convert_state_dict` (grids trained at another size
    resized, buffers that depend on the input size rebuilt, the
    classification head ignored). Anything else that does not fit raises
    ValueError naming the file and the keys, before anything is loaded.

    Returns:
        dict: the keys ``loaded``, ``resized``, ``ignored`` and ``new``.
    """
    sd = extract_state_dict(read_checkpoint(path), path)
    ignored = []
    if any(k.startswith('backbone.') for k in sd):  # converted / mmdet file
        ignored = [k for k in sd if not k.startswith('backbone.')]
        sd = OrderedDict((k[9:], v) for k, v in sd.items()
                         if k.startswith('backbone.'))
    found = detect_family(sd)
    if found != model.family:
        raise ValueError(
            f'{path}: holds a {found or "unknown"} model, not a Pola-'
            f'{model.family.upper()} backbone (first keys: {list(sd)[:4]})')
    sd, dropped, resized = convert_state_dict(sd, model)
    ignored += dropped
    own = {k: v.shape for k, v in model.state_dict().items()}
    new_layers = [k for k in own if k not in sd and k in new_layer_keys(model)]
    problems = {
        'shape mismatch': [f'{k}: file {tuple(v.shape)} vs model '
                           f'{tuple(own[k])}' for k, v in sd.items()
                           if k in own and v.shape != own[k]],
        'unexpected keys': [k for k in sd if k not in own],
        'missing keys': [k for k in own if k not in sd
                         and k not in new_layers],
    }
    if any(problems.values()):
        raise ValueError(
            f'{path} does not fit {type(model).__name__}'
            f'({model.arch_settings}): a checkpoint of another family or '
            'size? ' + '; '.join(f'{name} ({len(keys)}): {keys[:6]}'
                                 for name, keys in problems.items() if keys))
    model.load_state_dict(sd, strict=False)
    print_log(
        f'Loaded {path} into {type(model).__name__}: {len(sd)} tensors '
        f'loaded, {len(resized)} resized {resized[:4]}, {len(ignored)} '
        f'ignored {ignored[:4]}, {len(new_layers)} newly initialised '
        f'{new_layers[:4]}', logger=logger)
    return dict(loaded=list(sd), resized=resized, ignored=ignored,
                new=new_layers)


def convert_to_mmpretrain(path):
    """A released file as an mmpretrain ``ImageClassifier`` state dict.

    ``backbone.*`` in mmpola's layout and the linear head as
    ``head.fc.*`` (mmpretrain's ``LinearClsHead``); loads strictly into the
    classifier built from the matching ``configs/mmpretrain`` config, and
    serves detection/segmentation configs as backbone initialisation.
    """
    sd = extract_state_dict(read_checkpoint(path), path)
    family = detect_family(sd)
    if family is None or not is_released_layout(sd):
        raise ValueError(f'{path}: not a released PolaFormer checkpoint '
                         f'(first keys: {list(sd)[:4]})')
    return released_to_classifier(sd, family)[0], family


def released_to_classifier(state_dict, family):
    """Released keys -> an mmpretrain ``ImageClassifier``'s: mmpola's
    backbone layout under ``backbone.``, the linear head as ``head.fc.``
    (``LinearClsHead``). Returns ``(state_dict, dropped_keys)``."""
    backbone, head, dropped = convert_released(state_dict, family)
    out = OrderedDict((f'backbone.{k}', v) for k, v in backbone.items())
    out.update((f'head.fc.{k[5:]}', v) for k, v in head.items())
    return out, dropped


# ------------------------------------------------- load_state_dict pre-hook

# entries of a released training file besides its 'model' state dict
_TRAINING_ENTRIES = ('optimizer', 'lr_scheduler', 'max_accuracy', 'epoch',
                     'config', 'scaler')


def released_state_dict_pre_hook(module, state_dict, prefix, local_metadata,
                                 strict, missing_keys, unexpected_keys,
                                 error_msgs):
    """``load_state_dict`` pre-hook of PolaPVT / PolaSwin: runs
    :func:`convert_state_dict` on the keys under ``prefix``.

    A released training file passed whole (``{'model': ..., 'config':
    ...}``, as ``mmengine.runner.load_checkpoint(backbone, file)`` hands it
    over) is unwrapped first. A released backbone file loaded into a whole
    detector / segmentor / classifier (its keys arrive without the
    ``backbone.`` prefix) is an error pointing to the backbone's
    ``init_cfg``. ``state_dict`` is modified in place (both torch's and
    MMEngine's ``load_state_dict`` pass a copy).
    """
    nested = state_dict.get(prefix + 'model')
    if isinstance(nested, dict) and nested and all(
            isinstance(v, torch.Tensor) for v in nested.values()):
        del state_dict[prefix + 'model']
        for key in _TRAINING_ENTRIES:
            state_dict.pop(prefix + key, None)
        state_dict.update((prefix + k, v) for k, v in nested.items())
    mine = [k for k in state_dict if k.startswith(prefix)]
    if not mine:
        foreign = [k for k in unexpected_keys if detect_family({k: None})
                   or k.split('.', 1)[0] in ('model', 'config')]
        if prefix and foreign:
            raise ValueError(
                f'The checkpoint holds a released Pola-{module.family.upper()}'
                f' backbone (keys such as {foreign[:3]}), not a whole '
                f'model with "{prefix}*" keys. Load it through the backbone: '
                f"model.{prefix.rstrip('.')}.init_cfg = dict(type='Pretrained',"
                ' checkpoint=PATH) (and no load_from), or convert it with '
                'tools/model_converters/polaformer_to_mmpola.py first.')
        return
    sd = OrderedDict((k[len(prefix):], state_dict.pop(k)) for k in mine)
    converted, dropped, resized = convert_state_dict(sd, module)
    state_dict.update((prefix + k, v) for k, v in converted.items())
    if dropped or resized:
        print_log(
            f'{type(module).__name__} ({prefix or "root"}): '
            f'{len(converted)} tensors in mmpola\'s layout, {len(resized)} '
            f'resized {resized[:4]}, {len(dropped)} ignored {dropped[:4]}',
            logger='current')
