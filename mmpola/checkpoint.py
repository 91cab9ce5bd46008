"""The one door for checkpoints: reading, released->mmpola key mapping,
grid resizing and validated loading into a backbone.

Released PolaFormer files (``{'model': state_dict, 'optimizer', ...,
'config': <yacs CfgNode>}``) are read without executing pickled code and
without yacs installed (:func:`mmpola.utils.torch_load.safe_load`); files
converted by ``tools/model_converters/polaformer_to_mmpola.py``
(``backbone.*`` keys) and bare state dicts load the same way.

Every load route converts: ``init_cfg=dict(type='Pretrained', ...)``
(:func:`load_pretrained`, strict, with a report), and
``backbone.load_state_dict`` / ``mmengine.runner.load_checkpoint(backbone,
file)`` / a detector's ``load_from`` with ``backbone.*`` keys, through the
backbones' state-dict pre-hook :func:`released_state_dict_pre_hook`.
"""
import math
import os.path as osp
import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from mmengine.logging import print_log

from .utils.torch_load import register_mmengine_loader, safe_load

__all__ = ['read_checkpoint', 'extract_state_dict', 'convert_released',
           'to_backbone_layout', 'backbone_state_from_file',
           'resize_grid_param', 'load_pretrained', 'convert_to_mmpretrain',
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

# Keys the released files hold that a backbone never loads.
REBUILT = re.compile(r'(^|\.)(relative_position_index|attn_mask)$')
CLS_HEAD = re.compile(r'^head\.')


def detect_family(state_dict):
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
        if CLS_HEAD.match(key):
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


def to_backbone_layout(sd, family, own_shapes=None):
    """Backbone-relative keys of any supported layout -> mmpola's.

    Released keys are renamed (and Swin's merging weights put in mmcv's
    channel order, once); buffers rebuilt at run time are dropped; with
    ``own_shapes`` ({key: shape} of the target backbone), square grids
    (position embeddings, positional encodings, relative position tables)
    of another size are resized. Tensors of other shapes are left as they
    are for the caller to report.

    Returns:
        tuple: ``(state_dict, dropped_keys, resized_keys)``.
    """
    dropped = []
    if is_released_layout(sd):
        sd, head, more = convert_released(sd, family)
        dropped += list(head) + more
    dropped += [k for k in sd if REBUILT.search(k)]
    sd = OrderedDict((k, v) for k, v in sd.items() if not REBUILT.search(k))
    resized = []
    for key, value in sd.items():
        shape = (own_shapes or {}).get(key)
        if shape is not None and value.shape != shape:
            new = resize_grid_param(key, value, shape)
            if new is not None:
                sd[key] = new
                resized.append(key)
    return sd, dropped, resized


def backbone_state_from_file(path, family, own_shapes=None):
    """Read any supported file and return mmpola-layout backbone tensors.

    Returns ``(state_dict, dropped_keys, resized_keys)``
    (:func:`to_backbone_layout`).
    """
    sd = extract_state_dict(read_checkpoint(path), path)
    if any(k.startswith('backbone.') for k in sd):  # converted / mmdet file
        dropped = [k for k in sd if not k.startswith('backbone.')]
        sd = OrderedDict((k[9:], v) for k, v in sd.items()
                         if k.startswith('backbone.'))
    else:
        dropped = []
    found = detect_family(sd)
    if found != family:
        raise ValueError(
            f'{path}: holds a {found or "unknown"} model, not a Pola-'
            f'{family.upper()} backbone (first keys: {list(sd)[:4]})')
    sd, more, resized = to_backbone_layout(sd, family, own_shapes)
    return sd, dropped + more, resized


# ---------------------------------------------------------------- resizing

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
    if mode is None or value.ndim != len(shape):
        return None
    table = value.ndim == 2
    src = value[None] if table else value
    dst_len, channels = (shape if table else shape[1:])
    s, d = math.isqrt(src.shape[1]), math.isqrt(dst_len)
    if s * s != src.shape[1] or d * d != dst_len or src.shape[2] != channels:
        return None
    grid = src.reshape(1, s, s, channels).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(d, d), mode=mode,
                         align_corners=False).to(src.dtype)
    out = grid.flatten(2).transpose(1, 2)
    return out[0] if table else out


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

    Grids trained at another size are resized; buffers that depend on the
    input size are rebuilt; the classification head is ignored. Anything
    else that does not fit raises an error naming the file and the keys.
    """
    own = {k: v.shape for k, v in model.state_dict().items()}
    sd, ignored, resized = backbone_state_from_file(path, model.family, own)
    bad_shape = [f'{k}: file {tuple(v.shape)} vs model {tuple(own[k])}'
                 for k, v in sd.items() if k in own and v.shape != own[k]]
    unexpected = [k for k in sd if k not in own]
    # Swin's final norm, when the model has no last-stage output norm
    final_norm = [k for k in unexpected
                  if k.startswith(f'norm{model.num_stages - 1}.')]
    ignored += final_norm
    unexpected = [k for k in unexpected if k not in final_norm]
    missing = [k for k in own if k not in sd]
    new_layers = [k for k in missing if k in new_layer_keys(model)]
    missing = [k for k in missing if k not in new_layers]
    if bad_shape or unexpected or missing:
        problems = [f'{name} ({len(keys)}): {keys[:6]}'
                    for name, keys in (('shape mismatch', bad_shape),
                                       ('unexpected keys', unexpected),
                                       ('missing keys', missing)) if keys]
        raise ValueError(
            f'{path} does not fit {type(model).__name__}'
            f'({model.arch_settings}): a checkpoint of another family or '
            'size? ' + '; '.join(problems))
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
    backbone, head, _ = convert_released(sd, family)
    out = OrderedDict((f'backbone.{k}', v) for k, v in backbone.items()
                      if not REBUILT.search(k))
    out.update((f'head.fc.{k[5:]}', v) for k, v in head.items())
    return out, family


# ------------------------------------------------- load_state_dict pre-hook

# entries of a released training file besides its 'model' state dict
_TRAINING_ENTRIES = ('optimizer', 'lr_scheduler', 'max_accuracy', 'epoch',
                     'config', 'scaler')


def released_state_dict_pre_hook(module, state_dict, prefix, local_metadata,
                                 strict, missing_keys, unexpected_keys,
                                 error_msgs):
    """``load_state_dict`` pre-hook of PolaPVT / PolaSwin: the conversion of
    :func:`load_pretrained` on every other load route.

    * a released training file passed whole (``{'model': ..., 'config':
      ...}``, as ``mmengine.runner.load_checkpoint(backbone, file)`` hands
      it over) is unwrapped;
    * released keys under ``prefix`` are mapped to mmpola's layout, rebuilt
      buffers and the classification head dropped, grids resized to the
      backbone's sizes (a detector's ``load_from`` with ``backbone.*`` keys
      of another input size, too);
    * a released backbone file loaded into a whole detector / segmentor /
      classifier (its keys arrive without the ``backbone.`` prefix) is an
      error pointing to the backbone's ``init_cfg``.

    ``state_dict`` is modified in place (both torch's and MMEngine's
    ``load_state_dict`` pass a copy).
    """
    nested = state_dict.get(prefix + 'model')
    if isinstance(nested, dict) and nested and all(
            isinstance(v, torch.Tensor) for v in nested.values()):
        del state_dict[prefix + 'model']
        for key in _TRAINING_ENTRIES:
            state_dict.pop(prefix + key, None)
        state_dict.update((prefix + k, v) for k, v in nested.items())
    own = {k: v.shape for k, v in module.state_dict().items()}
    mine = OrderedDict((k[len(prefix):], state_dict[k]) for k in state_dict
                       if k.startswith(prefix))
    if not mine and prefix:
        foreign = [k for k in unexpected_keys if detect_family({k: None})
                   or k.split('.', 1)[0] in ('model', 'config')]
        if foreign:
            raise ValueError(
                f'The checkpoint holds a released Pola-{module.family.upper()}'
                f' backbone (keys such as {foreign[:3]}), not a whole '
                f'model with "{prefix}*" keys. Load it through the backbone: '
                f"model.{prefix.rstrip('.')}.init_cfg = dict(type='Pretrained',"
                ' checkpoint=PATH) (and no load_from), or convert it with '
                'tools/model_converters/polaformer_to_mmpola.py first.')
        return
    if not mine or not (is_released_layout(mine) or any(
            k in own and v.shape != own[k] for k, v in mine.items())
            or any(REBUILT.search(k) for k in mine)):
        return
    converted, dropped, resized = to_backbone_layout(
        mine, module.family, own)
    final_norm = [k for k in converted if k not in own and
                  k.startswith(f'norm{module.num_stages - 1}.')]
    dropped += final_norm
    for key in mine:
        del state_dict[prefix + key]
    state_dict.update((prefix + k, v) for k, v in converted.items()
                      if k not in final_norm)
    print_log(
        f'{type(module).__name__} ({prefix or "root"}): converted '
        f'{len(converted)} tensors to mmpola\'s layout, {len(resized)} '
        f'resized {resized[:4]}, {len(dropped)} ignored {dropped[:4]}',
        logger='current')
