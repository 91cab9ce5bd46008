# Mask R-CNN + Pola-Swin-T, 3x (36 epochs), multi-scale 480-800 with the
# DETR-style random crop, COCO. Built on mmdet's Swin-T recipe: 1000 iters
# linear warm-up, steps at epochs 27 and 33, 8 GPUs x 2 images.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'

custom_imports = dict(imports=['mmpola'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PolaSwin',
        arch='tiny',
        drop_path_rate=0.2,  # Swin-T detection recipe
        pola_attn_mode='global',  # Pola stages 1-2: one window over the map
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/pola_swin_tiny.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    # paper: wd 1e-4 (the Swin recipe uses 0.05); lr 1e-4 as both.
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4),
    # Added to the Swin recipe's norm / relative-position-table exemptions:
    # the Pola positional encodings (Swin's absolute_pos_embed counterpart)
    # and the per-channel Pola scale/power, exempt like norm gains.
    paramwise_cfg=dict(
        custom_keys={
            'positional_encoding': dict(decay_mult=0.),
            'attn.scale': dict(decay_mult=0.),
            'attn.power': dict(decay_mult=0.)
        }))

auto_scale_lr = dict(enable=False, base_batch_size=16)
