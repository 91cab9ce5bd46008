# Mask R-CNN + Pola-PVT-T, 1x (12 epochs), single scale 1333x800, COCO.
# mmdet has no PVT Mask R-CNN config; this follows the PVT authors' Mask R-CNN
# recipe, which is their RetinaNet one: AdamW lr 1e-4, wd 1e-4, 500 iters
# linear warm-up, steps at epochs 8 and 11, 8 GPUs x 2 images.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py'
]

custom_imports = dict(imports=['mmpola'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PolaPVT',
        arch='tiny',
        drop_path_rate=0.1,  # PVT detection recipe
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/pola_pvt_tiny.pth')),
    neck=dict(in_channels=[64, 128, 320, 512]))

# The PVT recipe applies weight decay to every parameter (no paramwise_cfg),
# so positional encodings, norms and the Pola scale/power are decayed too.
optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4))

auto_scale_lr = dict(enable=False, base_batch_size=16)
