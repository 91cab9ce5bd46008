# Semantic FPN + Pola-PVT-T fine-tuned on YOUR OWN semantic segmentation
# dataset, from the ImageNet weights (docs/custom_dataset.md); the same data
# and choices as upernet_pola-swin-t_8k_shapes-512x512.py.
_base_ = '../mmseg/pola_pvt/fpn_pola-pvt-t_8xb2-40k_ade20k-512x512.py'

# 1. Classes: label value i is classes[i].
classes = ('background', 'rectangle', 'ellipse', 'triangle')
palette = [[0, 0, 0], [225, 45, 45], [45, 200, 70], [55, 85, 235]]

# 2. num_classes: Semantic FPN has one head.
model = dict(decode_head=dict(num_classes=len(classes)))
# backbone: the released ImageNet weights (the base's init_cfg)
load_from = None

# 3. Where the data is (img_dir/, ann_dir/; label 0 is a class).
data_root = 'data/shapes_seg/'
crop_size = (512, 512)
dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=dict(classes=classes, palette=palette),
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=False)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),  # reduce_zero_label: the dataset's
    dict(
        type='RandomResize',
        scale=(2048, 512),
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='LoadAnnotations'),  # reduce_zero_label: the dataset's
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=2,
    dataset=dict(
        **dataset,
        data_prefix=dict(
            img_path='img_dir/train', seg_map_path='ann_dir/train'),
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        **dataset,
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

# 4. Schedule for a small dataset: 8k iterations, poly 0.9 to 0 without
#    warm-up (the base's shape), evaluated and saved every 800 (best by
#    mIoU kept).
max_iters = 8000
train_cfg = dict(max_iters=max_iters, val_interval=800)
param_scheduler = [
    dict(
        type='PolyLR',
        eta_min=0.,
        power=0.9,
        begin=0,
        end=max_iters,
        by_epoch=False)
]
default_hooks = dict(checkpoint=dict(interval=800, max_keep_ckpts=2))

# 5. Fewer GPUs: lr 2e-4 (base) is for 16 images per iteration; scaled to
#    GPUs x batch_size / 16.
auto_scale_lr = dict(enable=True, base_batch_size=16)
