"""Write a released / converted PolaFormer checkpoint as a timm / Hugging Face
hub folder (``config.json`` + ``model.safetensors``).

    python tools/model_converters/polaformer_to_hf.py SRC OUT_DIR --model pola_pvt_tiny

SRC: a released file ({'model': ..., 'config': ...}), a converted file
(``backbone.*``, ``head.fc.*``; .pth or .safetensors), read without running
code from it. OUT_DIR then loads with
``timm.create_model('local-dir:OUT_DIR', pretrained=True)``
or transformers' ``AutoModelForImageClassification.from_pretrained(OUT_DIR)``
(after ``import mmpola``), and can be pushed as it is
(``huggingface-cli upload USER/REPO OUT_DIR``).
"""
import argparse
import json
import os
import os.path as osp
import pickle
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))


def main():
    from mmpola.timm_models import MODEL_ARGS
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='released or converted checkpoint')
    parser.add_argument('out_dir', help='output folder (hub format)')
    parser.add_argument('--model', required=True, choices=sorted(MODEL_ARGS),
                        help='the timm name of the released model')
    args = parser.parse_args()
    import timm
    from timm.models import save_for_hf

    import mmpola  # noqa: F401 (registers the timm models)
    try:  # never executes pickled code; errors name the file
        model = timm.create_model(args.model, pretrained=True,
                                  pretrained_cfg_overlay=dict(file=args.src))
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        sys.exit(f'error: {e}')
    os.makedirs(args.out_dir, exist_ok=True)
    save_for_hf(model, args.out_dir, safe_serialization=True)
    # recent timm also records num_classes under model_args, which
    # transformers' timm wrapper passes a second time (it takes the
    # top-level num_classes); the top-level value is what both read
    path = osp.join(args.out_dir, 'config.json')
    with open(path) as f:
        config = json.load(f)
    config.get('model_args', {}).pop('num_classes', None)
    with open(path, 'w') as f:
        json.dump(config, f, indent=2)
    n = sum(p.numel() for p in model.parameters())
    print(f'{args.src} -> {args.out_dir}: {args.model}, {n / 1e6:.2f}M '
          'parameters (config.json, model.safetensors)')


if __name__ == '__main__':
    main()
