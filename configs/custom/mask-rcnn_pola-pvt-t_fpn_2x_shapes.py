# Mask R-CNN + Pola-PVT-T fine-tuned on YOUR OWN COCO-format dataset, from
# the ImageNet weights (docs/custom_dataset.md). The example data: three
# classes of shapes written by
#   python tools/misc/make_demo_data.py coco data/shapes
# Copy this file and change what the numbered comments point at.
_base_ = '../mmdet/pola_pvt/mask-rcnn_pola-pvt-t_fpn_1x_coco.py'

# 1. Classes: the names of the annotation file's "categories" (mmdet keeps
#    only these, in this order); one colour per class for the visualizer.
classes = ('rectangle', 'ellipse', 'triangle')
metainfo = dict(
    classes=classes, palette=[(225, 45, 45), (45, 200, 70), (55, 85, 235)])

# 2. num_classes in every head that predicts classes: the box head and the
#    mask head (the RPN is class-agnostic).
model = dict(
    roi_head=dict(
        bbox_head=dict(num_classes=len(classes)),
        mask_head=dict(num_classes=len(classes))))
# The backbone starts from the released ImageNet weights through the base's
# backbone init_cfg (checkpoints/pola_pvt_tiny.pth): nothing to set. To
# start from a whole detector instead (e.g. one trained with the base config
# on COCO), set load_from; its class-specific layers (fc_cls, fc_reg,
# conv_logits) do not fit the new num_classes and are skipped with a warning.
load_from = None

# 3. Where the data is: the COCO layout, data_root/annotations/*.json and an
#    image folder per split (file_name in the json is relative to it).
data_root = 'data/shapes/'
train_dataloader = dict(
    batch_size=2,  # images per GPU (the base's)
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
    classwise=True)  # AP per class in the log and in the metrics
test_evaluator = val_evaluator

# 4. Schedule for a small dataset: 24 epochs, lr steps at 16 and 22 (the
#    values of mmdet's schedule_2x.py), evaluated after every epoch (the best
#    checkpoint is kept: default_hooks of the base); warm-up 100 iterations
#    instead of the base's 500, which would span many epochs of a few hundred
#    images.
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
# Keep the best checkpoint (by coco/bbox_mAP, from the base) and the 2
# latest.
default_hooks = dict(checkpoint=dict(max_keep_ckpts=2))

# 5. Fewer GPUs: the base's lr (2e-4) is for 16 images per iteration
#    (8 GPUs x 2); enable=True scales it linearly to the batch the run has
#    (GPUs x batch_size / 16: x 1/8 on one GPU, x 1/4 on two).
auto_scale_lr = dict(enable=True, base_batch_size=16)
