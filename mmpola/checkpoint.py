"""The one door for checkpoints: reading, released->mmpola key mapping,
grid resizing and validated loading into a backbone.

Released PolaFormer files (``{'model': state_dict, 'optimizer', ...,
'config': <yacs CfgNode>}``) are read without executing pickled code and
without yacs installed; files converted by
``tools/model_converters/polaformer_to_mmpola.py`` (``backbone.*`` keys) and
bare state dicts load the same way.
"""
import math
import os.path as osp
import re
from collections import OrderedDict

import torch
from mmengine.logging import print_log
from mmpretrain.models.utils import resize_pos_embed

from .utils.torch_load import safe_load

# ---------------------------------------------------------------- reading


def read_checkpoint(path):
    """Read a checkpoint file into CPU memory, never running pickled code.

    Objects other than tensor data (e.g. the released training code's yacs
    ``config``) become inert placeholders (see ``mmpola.utils.torch_load``).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'Checkpoint file not found: {path!r}. Download the released '
            'PolaFormer weights and put them there (see README, "Released '
            'weights"), or set the backbone init_cfg to None to train from '
            'scratch.')
    return safe_load(path, unknown='placeholder')


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


def backbone_state_from_file(path, family):
    """Read any supported file and return mmpola-layout backbone tensors.

    Returns ``(state_dict, dropped_keys)``.
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
    if is_released_layout(sd):
        sd, head, more = convert_released(sd, family)
        dropped += list(head) + more
    dropped += [k for k in sd if REBUILT.search(k)]
    sd = OrderedDict((k, v) for k, v in sd.items() if not REBUILT.search(k))
    return sd, dropped


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
    out = resize_pos_embed(src, (s, s), (d, d), mode, num_extra_tokens=0)
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
    sd, ignored = backbone_state_from_file(path, model.family)
    own = model.state_dict()
    resized, bad_shape = [], []
    for key in list(sd):
        if key in own and sd[key].shape != own[key].shape:
            new = resize_grid_param(key, sd[key], own[key].shape)
            if new is None:
                bad_shape.append(f'{key}: file {tuple(sd[key].shape)} vs '
                                 f'model {tuple(own[key].shape)}')
            else:
                sd[key] = new
                resized.append(key)
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
