# UperNet + Pola-Swin-T fine-tuned on YOUR OWN semantic segmentation
# dataset, from the ImageNet weights (docs/custom_dataset.md). The example
# data: a background and three classes of shapes, written by
#   python tools/misc/make_demo_data.py seg data/shapes_seg
# in the layout MMSegmentation suggests for a new dataset:
#   img_dir/{train,val}/*.jpg  and  ann_dir/{train,val}/*.png
# (a label map per image: value i = classes[i], 255 = not labelled).
_base_ = '../mmseg/pola_swin/upernet_pola-swin-t_8xb2-160k_ade20k-512x512.py'

# 1. Classes: label value i is classes[i]; one colour per class.
classes = ('background', 'rectangle', 'ellipse', 'triangle')
palette = [[0, 0, 0], [225, 45, 45], [45, 200, 70], [55, 85, 235]]

# 2. num_classes in every head: the decode head and the auxiliary head.
model = dict(
    decode_head=dict(num_classes=len(classes)),
    auxiliary_head=dict(num_classes=len(classes)))
# The backbone starts from the released ImageNet weights through the base's
# backbone init_cfg (checkpoints/pola_swin_tiny.pth). load_from a whole
# segmentor instead (e.g. trained on ADE20K with the base): its classifier
# convolutions (conv_seg) do not fit and are skipped with a warning.
load_from = None

# 3. Where the data is, and how it is read. MMSegmentation's BaseSegDataset
#    with this metainfo needs no dataset class of its own. Label 0 is a
#    class here: reduce_zero_label=False (ADE20K's 0 means "other" and is
#    dropped by its dataset and by the base's LoadAnnotations).
data_root = 'data/shapes_seg/'
crop_size = (512, 512)  # the base's
dataset = dict(
    type='BaseSegDataset',
    data_root=data_root,
    metainfo=dict(classes=classes, palette=palette),
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=False)
# the pipelines of mmseg's ade20k.py; LoadAnnotations takes
# reduce_zero_label from the dataset
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
    batch_size=2,  # images per GPU (the base's)
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
# (IoUMetric logs the IoU and accuracy of every class at each evaluation)

# 4. Schedule for a small dataset: 8k iterations, evaluated and saved every
#    800 (the best checkpoint by mIoU is kept: default_hooks of the base);
#    warm-up 300 iterations, then poly 1.0 to 0 (the base's shape: 1500 of
#    160k). 8k: mmseg's shortest shared schedule is 20k for 20k-image
#    datasets; a few hundred images need far fewer passes.
max_iters = 8000
warmup_iters = 300
train_cfg = dict(max_iters=max_iters, val_interval=800)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0,
        end=warmup_iters),
    dict(
        type='PolyLR',
        power=1.0,
        eta_min=0.0,
        begin=warmup_iters,
        end=max_iters,
        by_epoch=False)
]
default_hooks = dict(checkpoint=dict(interval=800, max_keep_ckpts=2))

# 5. Fewer GPUs: the base's lr (6e-5) is for 16 images per iteration
#    (8 GPUs x 2); enable=True scales it to GPUs x batch_size / 16.
auto_scale_lr = dict(enable=True, base_batch_size=16)
