# RetinaNet + Pola-PVT-T, 1x (12 epochs), single scale 1333x800, COCO.
# mmdet's PVT RetinaNet recipe already is the paper's: AdamW lr 1e-4, wd 1e-4,
# 500 iters linear warm-up, steps at epochs 8 and 11, 8 GPUs x 2 images.
_base_ = 'mmdet::pvt/retinanet_pvt-t_fpn_1x_coco.py'

custom_imports = dict(imports=['mmpola'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PolaPVT',
        arch='tiny',
        drop_path_rate=0.1,  # PVT detection recipe
        # RetinaNet's FPN starts at stride 8: leaving stage 0 out of the
        # outputs keeps its output norm from being an unused (DDP-breaking)
        # parameter; same FPN as start_level=1 on four inputs.
        out_indices=(1, 2, 3),
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/pola_pvt_tiny.pth')),
    neck=dict(in_channels=[128, 320, 512], start_level=0))

# The PVT recipe applies weight decay to every parameter (no paramwise_cfg),
# so positional encodings, norms and the Pola scale/power are decayed too.
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4))

auto_scale_lr = dict(enable=False, base_batch_size=16)
