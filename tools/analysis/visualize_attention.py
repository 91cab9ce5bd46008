"""Attention maps of a Pola layer next to softmax and ReLU linear attention
computed from the same q and k, and the entropy of every query's row
(PolaFormer, Figures 1 and 5).

    python tools/analysis/visualize_attention.py [IMAGE]
        [--model PolaPVT:tiny | CONFIG] [--checkpoint FILE]
        [--layer NAME | INDEX] [--query Y X] [--img-size H [W]]
        [--head mean|all|K] [--out-dir DIR]

Without IMAGE a generated test image (coloured shapes) is used; without
``--checkpoint`` the model is randomly initialised (maps then show the
arithmetic, not learned behaviour). ``--checkpoint`` takes a released
PolaFormer file or a converted one (``mmpola.checkpoint.load_pretrained``).

q, k (k with the positional encoding, both divided by softplus(scale)) and
the exponents p are the ones the layer passes to its attention core,
captured during the forward (``mmpola.analysis.attention_maps.
capture_qkvp``); softmax and ReLU attention use the same q and k. When the
layer runs on windows (Pola-Swin with ``pola_attn_mode='window'`` on large
maps) one window is shown (``--window``), its padded keys left out as the
core leaves them out. The Pola maps are the effective
weights of the released core (``mmpola.analysis.attention_maps``):
``pola_sim`` (same-sign products, the weights of the first half of the value
channels), ``pola_opp`` (opposite-sign products, second half) and ``pola``
(their mean: the weight over all value channels). Every row sums to 1.

Writes to ``--out-dir``: ``attention_maps.png`` (image with the query, one
map per method, the query row's entropy in each title),
``entropy_hist.png`` (distribution of the row entropies of all queries per
method; the dashed line is log N, the uniform distribution) and
``summary.json``.
"""
import argparse
import json
import os
import os.path as osp
import sys
import warnings

import numpy as np
import torch
from mmengine.config import DictAction

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

from mmpola.analysis.attention_maps import (METHODS,  # noqa: E402
                                            attention_weights, capture_qkvp,
                                            demo_image, entropies,
                                            reduce_heads, row_entropy)
from mmpola.analysis.models import build_model  # noqa: E402

TITLES = dict(softmax='softmax', relu='ReLU linear',
              pola_sim='Pola: same-sign (sim)',
              pola_opp='Pola: opposite-sign (opp)',
              pola='Pola: (sim + opp) / 2')
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Pola vs softmax vs ReLU attention maps and entropies')
    parser.add_argument('image', nargs='?', help='image file (default: a '
                        'generated test image)')
    parser.add_argument('--model', default='PolaPVT:tiny',
                        help='backbone spec or config (its backbone is '
                        'used): PolaPVT:tiny, pola_swin_tiny_patch4_224, ...')
    parser.add_argument('--checkpoint', help='released / converted weights')
    parser.add_argument('--layer', default='0',
                        help='PolaAttention module name or index '
                        '(default 0: the first)')
    parser.add_argument('--query', type=float, nargs=2, metavar=('Y', 'X'),
                        help='query position in the resized image, pixels '
                        '(values <= 1: fractions of H, W); default centre')
    parser.add_argument('--img-size', type=int, nargs='+', default=[224],
                        help='H [W] the image is resized to')
    parser.add_argument('--head', default='mean',
                        help="'mean' (average the heads' maps), 'all' "
                        '(entropies of every head) or a head index')
    parser.add_argument('--window', type=int, default=0,
                        help='which captured window/batch element, when the '
                        'layer runs on windows')
    parser.add_argument('--out-dir', default='work_dirs/attention')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='model overrides, e.g. pola_attn_mode=window')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def load_image(path, hw):
    from PIL import Image
    if path is None:
        return demo_image(*hw)
    img = Image.open(path).convert('RGB').resize((hw[1], hw[0]),
                                                 Image.BICUBIC)
    return np.asarray(img)


def pola_layers(model):
    from mmpola.models import PolaAttention
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, PolaAttention)]


def main(argv=None):
    args = parse_args(argv)
    warnings.filterwarnings('ignore')
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    torch.manual_seed(args.seed)
    hw = tuple(args.img_size) * (2 if len(args.img_size) == 1 else 1)
    model, _ = build_model(args.model, args.cfg_options, backbone_only=True)
    if args.checkpoint:
        from mmpola.checkpoint import load_pretrained
        load_pretrained(model, args.checkpoint)
    model.eval()
    layers = pola_layers(model)
    if not layers:
        raise SystemExit(f'{args.model} has no PolaAttention layer')
    names = [n for n, _ in layers]
    if args.layer in names:
        name, module = layers[names.index(args.layer)]
    else:
        try:
            name, module = layers[int(args.layer)]
        except (ValueError, IndexError):
            raise SystemExit(f'--layer {args.layer!r}: give an index '
                             f'< {len(layers)} or one of {names}')
    img = load_image(args.image, hw)
    x = torch.from_numpy((img - MEAN) / STD).float().permute(2, 0, 1)[None]
    seen = capture_qkvp(model, module, x)
    Hm, Wm = seen['hw']
    q, k, p = seen['q'], seen['k'], seen['p']
    seen['windows'] = q.shape[0]
    if q.shape[0] > 1:
        print(f'{name} ran on {q.shape[0]} windows; showing window '
              f'{args.window} (query and maps in its own {Hm}x{Wm} grid)')
    q, k = q[args.window].float(), k[args.window].float()  # (heads, N, d)
    p = p.reshape(-1, 1, p.shape[-1]).float()  # (heads or 1, 1, d)
    key_mask = seen['key_mask']
    if key_mask is not None:  # padded keys of a window, left out
        key_mask = key_mask[args.window].reshape(-1) > 0
    N = Hm * Wm
    n_keys = N if key_mask is None else int(key_mask.sum())

    # query token. On windows the query and the maps are in the window's
    # own grid (--query as fractions of it) and not laid over the image.
    H, W = hw
    windowed = seen['windows'] > 1
    qy, qx = args.query if args.query else (H / 2, W / 2)
    if qy <= 1 and qx <= 1:
        qy, qx = qy * H, qx * W
    ty = min(int(qy * Hm / H), Hm - 1)
    tx = min(int(qx * Wm / W), Wm - 1)
    qi = ty * Wm + tx
    if windowed:  # draw in window-token units
        qy, qx, H, W = ty + 0.5, tx + 0.5, Hm, Wm

    head_maps = 'mean' if args.head == 'all' else args.head
    with torch.no_grad():
        rows = attention_weights(q[:, qi:qi + 1], k, p, key_mask=key_mask)
        maps = {m: reduce_heads(a, head_maps)[0].reshape(Hm, Wm)
                for m, a in rows.items()}
        query_entropy = {m: float(row_entropy(a.reshape(1, -1))[0])
                         for m, a in maps.items()}
        ents = entropies(q, k, p, head_reduce=args.head, key_mask=key_mask)

    os.makedirs(args.out_dir, exist_ok=True)
    # attention maps
    fig, axes = plt.subplots(1, len(METHODS) + 1,
                             figsize=(3.2 * (len(METHODS) + 1), 3.6))
    axes[0].imshow(img)
    if windowed:
        axes[0].set_title(f'window {args.window} of {seen["windows"]}: '
                          f'query token {qi} ({ty}, {tx})', fontsize=9)
    else:
        axes[0].plot([qx], [qy], marker='*', color='white', markersize=14,
                     markeredgecolor='black')
        axes[0].set_title(f'query ({int(qy)}, {int(qx)}) -> token {qi}',
                          fontsize=9)
    for ax, m in zip(axes[1:], METHODS):
        if not windowed:
            ax.imshow(img, alpha=0.35)
        ax.imshow(maps[m].numpy(), cmap='jet', alpha=0.65,
                  extent=(0, W, H, 0), interpolation='nearest')
        ax.plot([qx], [qy], marker='*', color='white', markersize=10,
                markeredgecolor='black')
        ax.set_title(f'{TITLES[m]}\nH = {query_entropy[m]:.2f} '
                     f'(max {np.log(n_keys):.2f})', fontsize=9)
    for ax in axes:
        ax.axis('off')
    fig.suptitle(f'{args.model} {name} ({Hm}x{Wm} tokens, head '
                 f'{head_maps}, '
                 f'{"checkpoint" if args.checkpoint else "random init"}; '
                 'each map on its own colour scale)', fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(osp.join(args.out_dir, 'attention_maps.png'), dpi=110)
    plt.close(fig)

    # entropy histograms
    fig, ax = plt.subplots(figsize=(7, 4.2))
    top = np.log(n_keys)
    low = min(float(e.min()) for e in ents.values())
    pad = 0.02 * max(top - low, 1e-3)
    bins = np.linspace(low - pad, top + pad, 60)
    for m in METHODS:
        ax.hist(ents[m].numpy(), bins=bins, histtype='step', linewidth=1.6,
                label=f'{TITLES[m]} (mean {ents[m].mean():.2f})')
    ax.axvline(top, color='k', linestyle='--', linewidth=1)
    ax.set_xlabel('row entropy (nats); dashed: log N (uniform)')
    ax.set_ylabel('queries')
    ax.set_title(f'{name}: entropy of every query row ({n_keys} keys)',
                 fontsize=10)
    ax.legend(fontsize=8, loc='upper left')
    fig.tight_layout()
    fig.savefig(osp.join(args.out_dir, 'entropy_hist.png'), dpi=110)
    plt.close(fig)

    summary = dict(
        model=args.model, layer=name, checkpoint=args.checkpoint,
        image=args.image or 'generated', image_hw=list(hw),
        map_hw=[Hm, Wm], heads=int(q.shape[0]), head=args.head,
        windows=seen['windows'], window=args.window if windowed else None,
        query_token=qi, query_rc=[ty, tx], log_n=float(top),
        query_entropy=query_entropy,
        mean_entropy={m: float(e.mean()) for m, e in ents.items()},
        median_entropy={m: float(e.median()) for m, e in ents.items()},
        qk_source=seen['source'],
        padded_keys=0 if key_mask is None else int((~key_mask).sum()))
    with open(osp.join(args.out_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    print(f'{args.model} {name}: {Hm}x{Wm} tokens, query token {qi}')
    print('method      query-row H   mean H   median H   (log N = '
          f'{top:.2f})')
    for m in METHODS:
        print(f'{m:<11} {query_entropy[m]:>11.3f} {summary["mean_entropy"][m]:>8.3f}'
              f' {summary["median_entropy"][m]:>10.3f}')
    print(f'wrote {args.out_dir}/attention_maps.png, entropy_hist.png, '
          'summary.json')


if __name__ == '__main__':
    main()
