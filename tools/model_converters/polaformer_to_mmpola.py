"""Convert a released PolaFormer ImageNet checkpoint to mmpola/mmpretrain.

    python tools/model_converters/polaformer_to_mmpola.py SRC DST.pth
    python tools/model_converters/polaformer_to_mmpola.py SRC DST.safetensors

SRC: a file saved by the released training code ({'model': ..., 'config':
...}), a ``state_dict`` file or a bare state dict. DST: an mmpretrain
``ImageClassifier`` checkpoint (``backbone.*``, ``head.fc.*``) that
``mmengine.runner.load_checkpoint(model, DST, strict=True)`` loads into the
classifier of the matching ``configs/mmpretrain`` config; detection and
segmentation configs can use it as ``init_cfg`` checkpoint too.

A DST ending in ``.safetensors`` is written in the safetensors format
(tensors only, no pickle): the format to share weights in. Every mmpola and
MMEngine load route reads both.
"""
import argparse
import os
import os.path as osp
import pickle
import sys

import torch

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))
from mmpola.checkpoint import convert_to_mmpretrain  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='released checkpoint')
    parser.add_argument('dst', help='output file (mmpretrain layout)')
    args = parser.parse_args()
    try:  # never executes pickled code; errors name the file
        state, family = convert_to_mmpretrain(args.src)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        sys.exit(f'error: {e}')
    if osp.dirname(args.dst):
        os.makedirs(osp.dirname(args.dst), exist_ok=True)
    tmp = f'{args.dst}.part'  # a failed write never leaves a partial DST
    meta = dict(source=osp.basename(args.src), family=f'pola_{family}')
    if args.dst.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file({k: v.contiguous().clone() for k, v in state.items()}, tmp,
                  metadata=dict(meta, format='pt'))
    else:
        torch.save(dict(state_dict=state, meta=meta), tmp)
    os.replace(tmp, args.dst)
    n = sum(v.numel() for v in state.values())
    print(f'{args.src} -> {args.dst}: Pola-{family.upper()}, '
          f'{len(state)} tensors, {n / 1e6:.2f}M parameters')


if __name__ == '__main__':
    main()
