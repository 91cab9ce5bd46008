"""Parameters and FLOPs of a backbone or a whole detector / segmentor /
classifier at a fixed input shape, Pola attention counted in full.

    python tools/analysis/get_flops.py CONFIG [--shape H [W]]
        [--backbone-only] [--batch B] [--cfg-options k=v ...]
        [--no-pola-rule] [--table-depth D] [--json FILE]
    python tools/analysis/get_flops.py --model PolaPVT:tiny --shape 224
    python tools/analysis/get_flops.py --paper-table

FLOPs are multiply-adds (the papers' convention), counted by MMEngine's
``FlopAnalyzer`` with mmpola's rule for ``PolaAttention``
(``mmpola.analysis.flops``): its matrix products and element-wise work
(powers, ReLU / sign masks, normalisers, gating, positional encoding) on
top of the projections and the depthwise conv. Whole models are traced in
'tensor' mode (backbone, neck and heads, no post-processing such as NMS),
as MMDetection's and MMSegmentation's own get_flops tools count them; the
input is random, padded to the model's size divisor.

Default shapes: 800x1280 (H x W) for detectors, 512x512 for segmentors,
224x224 for classifiers and backbones (with ``--backbone-only``, the shape
of the config's whole model). ``--shape N`` means N x N.

``--paper-table`` counts the ImageNet classifiers of configs/mmpretrain at
224x224 and prints them next to the paper's Table 1 / 5 numbers.
"""
import argparse
import json
import os.path as osp
import sys
import warnings

import torch

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

from mmengine.config import DictAction  # noqa: E402

from mmpola.analysis.flops import analyze, format_count  # noqa: E402
from mmpola.analysis.models import (TensorForward, build_model,  # noqa: E402
                                    make_data_samples, padded_shape)

DEFAULT_SHAPES = dict(det=(800, 1280), seg=(512, 512), cls=(224, 224),
                      backbone=(224, 224))

# paper Tables 1 and 5 (224x224): params (M), FLOPs (G)
PAPER = [
    ('Pola-PVT-T', 'configs/mmpretrain/pola_pvt/pola-pvt-tiny_8xb128_in1k.py',
     12, 2.0),
    ('Pola-PVT-S',
     'configs/mmpretrain/pola_pvt/pola-pvt-small_8xb64_in1k.py', 21, 4.1),
    ('Pola-Swin-T',
     'configs/mmpretrain/pola_swin/pola-swin-tiny_8xb128_in1k.py', 29, 4.5),
    ('Pola-Swin-S',
     'configs/mmpretrain/pola_swin/pola-swin-small_8xb128_in1k.py', 50, 8.7),
    ('Pola-Swin-B',
     'configs/mmpretrain/pola_swin/pola-swin-base_8xb64_in1k.py', 88, 15.4),
]

GROUPS = (
    ('linear', ('linear', 'addmm')),
    ('conv', ('conv', )),
    ('other matrix products (softmax, resizing)',
     ('matmul', 'bmm', 'einsum', 'mm', 'baddbmm')),
    ('Pola core products', ('pola_matmul', )),
    ('Pola element-wise', ('pola_elementwise', )),
    ('Pola positional-encoding resize', ('pola_pos_resize', )),
    ('norms', ('layer_norm', 'group_norm', 'batch_norm', 'instance_norm')),
)


def group_ops(by_operator):
    """{group: flops} with everything else under 'other'."""
    groups, seen = {}, set()
    for title, ops in GROUPS:
        groups[title] = sum(by_operator.get(op, 0) for op in ops)
        seen.update(ops)
    groups['other (resampling, pooling)'] = sum(
        v for k, v in by_operator.items() if k not in seen)
    return groups


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Parameters and FLOPs (multiply-adds) of a model')
    parser.add_argument('config', nargs='?', help='config file')
    parser.add_argument(
        '--model', help='instead of a config: Type:arch (PolaPVT:tiny), a '
        'released name (pola_swin_tiny_patch4_224) or a benchmark name '
        '(pvt_t, swin_t, retinanet_pola_pvt_t, ...)')
    parser.add_argument('--shape', type=int, nargs='+', metavar='N',
                        help='input H W (or N for N x N)')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--backbone-only', action='store_true',
                        help="count only the config's backbone")
    parser.add_argument('--no-pola-rule', action='store_true',
                        help="MMEngine's plain count (for comparison): "
                        'misses the Pola core and its element-wise work')
    parser.add_argument('--table-depth', type=int, default=0,
                        help='print the per-module table to this depth')
    parser.add_argument('--json', help='write the numbers to this file')
    parser.add_argument('--paper-table', action='store_true',
                        help='ImageNet presets at 224 vs the paper')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, e.g. model.backbone.arch=small')
    args = parser.parse_args(argv)
    if not args.paper_table and not (args.config or args.model):
        parser.error('give a CONFIG, --model or --paper-table')
    if args.shape and len(args.shape) not in (1, 2):
        parser.error('--shape takes N or H W')
    return args


def count(spec, shape=None, batch=1, backbone_only=False, cfg_options=None,
          pola_rule=True, table_depth=0):
    torch.manual_seed(0)  # random-init RPNs: the same proposals every run
    model, info = build_model(spec, cfg_options, backbone_only)
    task = info['task']
    H, W = shape or DEFAULT_SHAPES[info['whole_task']]
    Hp, Wp = padded_shape(H, W, info['pad_divisor'])
    samples = make_data_samples(task, batch, (H, W), (Hp, Wp))
    wrapper = TensorForward(model, task, samples)
    x = torch.rand(batch, 3, Hp, Wp)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        result = analyze(wrapper, x, pola_rule=pola_rule,
                         max_depth=table_depth + 1, table=table_depth > 0)
    result.update(task=task, input_shape=(batch, 3, Hp, Wp),
                  image_shape=(H, W), groups=group_ops(result['by_operator']))
    return result


def report(name, r):
    lines = [f'model:        {name} ({r["task"]})',
             f'input:        {tuple(r["input_shape"])}'
             + ('' if tuple(r['input_shape'][2:]) == tuple(r['image_shape'])
                else f' (image {r["image_shape"][0]}x{r["image_shape"][1]}'
                ' padded)'),
             f'params:       {format_count(r["params"])}',
             f'FLOPs:        {format_count(r["flops"])} (multiply-adds)']
    total = max(r['flops'], 1)
    for title, v in r['groups'].items():
        if v:
            lines.append(f'  {title:<45} {format_count(v):>9} '
                         f'{100 * v / total:5.1f}%')
    lc = r['groups']['linear'] + r['groups']['conv']
    lines.append(f'  {"= linear + conv only (module-hook counters)":<45} '
                 f'{format_count(lc):>9}')
    if r['pola_modules']:
        lines.append(f'Pola attention calls counted by the rule: '
                     f'{r["pola_modules"]}'
                     + (' (core via fallback)' if r['core_fallback'] else ''))
    unsupported = {k: v for k, v in r['unsupported'].items()}
    if unsupported:
        lines.append('not counted (ops, occurrences): ' + ', '.join(
            f'{k.replace("aten::", "")} {v}'
            for k, v in sorted(unsupported.items())))
    if r.get('table'):
        lines += ['', r['table']]
    return '\n'.join(lines)


def to_json(r):
    return dict(task=r['task'], input_shape=list(r['input_shape']),
                params=int(r['params']), flops=int(r['flops']),
                by_operator={k: int(v) for k, v in r['by_operator'].items()},
                groups={k: int(v) for k, v in r['groups'].items()},
                unsupported=dict(r['unsupported']),
                pola_calls=r['pola_modules'])


def paper_table(cfg_options=None):
    rows = []
    header = ('| Model | Params | paper | FLOPs (all) | linear+conv | paper '
              '| Pola core + element-wise + pos-enc resize | other matrix products |')
    lines = [header, '|---|---|---|---|---|---|---|---|']
    for name, config, p_params, p_flops in PAPER:
        r = count(config, (224, 224), cfg_options=cfg_options)
        g = r['groups']
        lc = g['linear'] + g['conv']
        pola = g['Pola core products'] + g['Pola element-wise'] + g[
            'Pola positional-encoding resize']
        soft = g['other matrix products (softmax, resizing)']
        lines.append(
            f'| {name} | {r["params"] / 1e6:.2f}M | {p_params}M | '
            f'{r["flops"] / 1e9:.2f}G | {lc / 1e9:.2f}G | {p_flops}G | '
            f'{pola / 1e9:.3f}G | {soft / 1e9:.3f}G |')
        rows.append(dict(model=name, config=config, paper_params_m=p_params,
                         paper_flops_g=p_flops, **to_json(r)))
        print(f'  {name}: {r["flops"] / 1e9:.2f}G', flush=True)
    return '\n'.join(lines), rows


def main(argv=None):
    args = parse_args(argv)
    if args.paper_table:
        print('ImageNet classifiers at 224x224 (FLOPs = multiply-adds):')
        table, rows = paper_table(args.cfg_options)
        print('\n' + table)
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(rows, f, indent=1)
        return
    shape = None
    if args.shape:
        shape = tuple(args.shape) * (2 if len(args.shape) == 1 else 1)
    spec = args.config or args.model
    r = count(spec, shape, args.batch, args.backbone_only, args.cfg_options,
              not args.no_pola_rule, args.table_depth)
    print(report(spec + (' [backbone]' if args.backbone_only else ''), r))
    if args.no_pola_rule:
        print('(--no-pola-rule: Pola core and element-wise work not counted)')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(model=spec, **to_json(r)), f, indent=1)


if __name__ == '__main__':
    main()
