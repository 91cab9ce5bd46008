"""Write a small synthetic dataset in the COCO, ADE20K or ImageNet file format.

    python tools/misc/make_demo_data.py coco data/coco_demo --num-train 64
    python tools/misc/make_demo_data.py ade20k data/ade_demo --img-size 375 500
    python tools/misc/make_demo_data.py seg data/shapes_seg   # own classes
    python tools/misc/make_demo_data.py imagenet data/in_demo --num-classes 4

See ``mmpola.datasets.synthetic`` for the layouts.
"""
import argparse

from mmpola.datasets import (make_ade20k, make_coco, make_imagenet,
                             make_segmentation)

DEFAULT_SIZE = dict(coco=(256, 320), ade20k=(375, 500), seg=(256, 320),
                    imagenet=(64, 64))
MAKE = dict(coco=make_coco, ade20k=make_ade20k, seg=make_segmentation)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('format', choices=list(DEFAULT_SIZE))
    parser.add_argument('root', help='output directory')
    parser.add_argument('--num-train', type=int, default=32,
                        help='training images (per class for imagenet)')
    parser.add_argument('--num-val', type=int, default=8,
                        help='validation images (per class for imagenet)')
    parser.add_argument('--num-classes', type=int, default=4,
                        help='imagenet only')
    parser.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'))
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    size = tuple(args.img_size or DEFAULT_SIZE[args.format])
    if args.format == 'imagenet':
        make_imagenet(args.root, args.num_classes, args.num_train, size,
                      args.seed, num_val_per_class=args.num_val)
    else:
        MAKE[args.format](args.root, args.num_train, args.num_val, size,
                          args.seed)
    print(f'wrote {args.format}-format data to {args.root}')


if __name__ == '__main__':
    main()
