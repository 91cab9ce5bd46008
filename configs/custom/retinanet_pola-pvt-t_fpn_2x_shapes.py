# RetinaNet + Pola-PVT-T fine-tuned on YOUR OWN COCO-format dataset, from
# the ImageNet weights (docs/custom_dataset.md); the same data and choices
# as mask-rcnn_pola-pvt-t_fpn_2x_shapes.py, for boxes only.
_base_ = '../mmdet/pola_pvt/retinanet_pola-pvt-t_fpn_1x_coco.py'

# 1. Classes, as named in the annotation file's "categories".
classes = ('rectangle', 'ellipse', 'triangle')
metainfo = dict(
    classes=classes, palette=[(225, 45, 45), (45, 200, 70), (55, 85, 235)])

# 2. num_classes: RetinaNet has one head.
model = dict(bbox_head=dict(num_classes=len(classes)))
# backbone: the released ImageNet weights (the base's init_cfg)
load_from = None

# 3. Where the data is (COCO layout).
data_root = 'data/shapes/'
train_dataloader = dict(
    batch_size=2,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/')))
val_dataloader = dict(
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/')))
test_dataloader = val_dataloader
val_evaluator = dict(
    ann_file=data_root + 'annotations/instances_val2017.json',
    classwise=True)
test_evaluator = val_evaluator

# 4. Schedule for a small dataset: mmdet's schedule_2x.py (24 epochs, steps
#    at 16 and 22), evaluated every epoch, 100 warm-up iterations.
max_epochs = 24
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=100),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[16, 22],
        gamma=0.1)
]
default_hooks = dict(checkpoint=dict(max_keep_ckpts=2))

# 5. Fewer GPUs: lr 1e-4 (base) is for 16 images per iteration; scaled to
#    GPUs x batch_size / 16.
auto_scale_lr = dict(enable=True, base_batch_size=16)
