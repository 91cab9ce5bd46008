# Cascade Mask R-CNN + Pola-Swin-T, 3x (36 epochs), multi-scale crop, COCO.
# mmdet has no Swin cascade config. Heads: 4conv1fc box heads with GIoU loss
# and SyncBN, as the Swin authors' cascade recipe that produced the paper's
# Swin-T baseline (50.4 box AP). mmdet's ConvNeXt-T cascade config is that
# recipe (cascade-mask-rcnn_r50_fpn + those heads + the Swin ms-crop pipeline,
# 1000 iters warm-up, steps at 27 and 33); only backbone and optimizer change.
_base_ = 'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'  # noqa

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

# Replaces ConvNeXt's AMP + layer-wise lr decay with the Swin recipe's plain
# AdamW: fp32 (the Pola attention runs in fp32 anyway).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    # paper: lr 1e-4, wd 1e-4 (the Swin recipe uses wd 0.05).
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    # Swin recipe's exemptions plus the Pola positional encodings and the
    # per-channel Pola scale/power, exempt like norm gains.
    paramwise_cfg=dict(
        custom_keys={
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
            'positional_encoding': dict(decay_mult=0.),
            'attn.scale': dict(decay_mult=0.),
            'attn.power': dict(decay_mult=0.)
        }))

auto_scale_lr = dict(enable=False, base_batch_size=16)
