# RetinaNet + Pola-PVT-T, 1x (12 epochs), single scale 1333x800, COCO.
# mmdet's PVT RetinaNet config is the PVT authors' recipe, and the paper's
# (A.2), the same lab's Agent-Attention code and the PVT code all agree:
# AdamW lr 1e-4, wd 1e-4, 500 iters linear warm-up, steps at epochs 8 and 11,
# 8 GPUs x 2 images, no gradient clipping. Sources: README.md ("Provenance").
_base_ = 'mmdet::pvt/retinanet_pvt-t_fpn_1x_coco.py'

custom_imports = dict(imports=['mmpola'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PolaPVT',
        arch='tiny',
        drop_path_rate=0.1,  # PVT and Agent-Attention RetinaNet configs
        # Raw block outputs into the FPN, as every PVT reference (PVT,
        # Agent-Attention, mmdet's PVTv1): no output norms.
        out_norms=False,
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/pola_pvt_tiny.pth')))
# neck: the base's FPN on the four stages, start_level=1 (stride 8 up).

# Every parameter is weight-decayed (no paramwise_cfg in the PVT / Agent-
# Attention configs): norms, positional encodings and the Pola scale/power.
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4))

auto_scale_lr = dict(enable=False, base_batch_size=16)  # 8 GPUs x 2

# Training visibility (docs/training_curves.md): besides the base's periodic
# checkpoints, keep the best one by box AP ('coco/bbox_mAP': mmdet's
# CocoMetric key, evaluated after every epoch), as the reported number is
# the best epoch's. Scalars (losses, lr, every metric) go to
# work_dir/<time>/vis_data/scalars.json through the base's LocalVisBackend.
default_hooks = dict(
    checkpoint=dict(save_best='coco/bbox_mAP', rule='greater'))
