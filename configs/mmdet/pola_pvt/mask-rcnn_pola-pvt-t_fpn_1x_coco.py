# Mask R-CNN + Pola-PVT-T, 1x (12 epochs), single scale 1333x800, COCO.
# mmdet has no PVT Mask R-CNN config; this is the Mask R-CNN recipe of the
# PVT code and of the same lab's Agent-Attention code (they agree): AdamW
# lr 2e-4, wd 1e-4, 500 iters linear warm-up, steps at epochs 8 and 11,
# 8 GPUs x 2 images, no gradient clipping. Sources: README.md ("Provenance").
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
        drop_path_rate=0.1,  # PVT and Agent-Attention Mask R-CNN configs
        # Raw block outputs into the FPN, as every PVT reference (PVT,
        # Agent-Attention, mmdet's PVTv1): no output norms.
        out_norms=False,
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/pola_pvt_tiny.pth')),
    neck=dict(in_channels=[64, 128, 320, 512]))

optim_wrapper = dict(
    optimizer=dict(
        _delete_=True,
        type='AdamW',
        # 2e-4: the PVT and the Agent-Attention Mask R-CNN configs (the
        # recipe behind the PVT baselines and the same lab's downstream
        # code). Alternative: 1e-4, the paper's A.2 (stated for detection in
        # general, not per detector).
        lr=2e-4,
        # Every parameter decayed (no paramwise_cfg in either reference):
        # norms, positional encodings and the Pola scale/power too.
        weight_decay=1e-4))
# schedule_1x: 500 iters linear warm-up, steps at 8 and 11 (both references)

auto_scale_lr = dict(enable=False, base_batch_size=16)  # 8 GPUs x 2

# Training visibility (docs/training_curves.md): besides the base's periodic
# checkpoints, keep the best one by box AP ('coco/bbox_mAP': mmdet's
# CocoMetric key, evaluated after every epoch), as the reported number is
# the best epoch's. Scalars (losses, lr, every metric) go to
# work_dir/<time>/vis_data/scalars.json through the base's LocalVisBackend.
default_hooks = dict(
    checkpoint=dict(save_best='coco/bbox_mAP', rule='greater'))
