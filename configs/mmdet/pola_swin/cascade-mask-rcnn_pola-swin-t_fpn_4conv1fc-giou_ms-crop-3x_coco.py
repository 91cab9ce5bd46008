# Cascade Mask R-CNN + Pola-Swin-T, 3x (36 epochs), multi-scale crop, COCO.
# mmdet has no Swin cascade config. Heads: 4conv1fc box heads with GIoU loss
# and SyncBN, as the Swin authors' cascade recipe that produced the paper's
# Swin-T baseline (50.4 box AP). mmdet's ConvNeXt-T cascade config is that
# recipe's model and data (cascade-mask-rcnn_r50_fpn + those heads + the Swin
# ms-crop pipeline, steps at 27 and 33); backbone, optimizer and warm-up are
# replaced by the Swin ones. Sources: README.md ("Provenance").
_base_ = 'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'  # noqa

custom_imports = dict(imports=['mmpola'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PolaSwin',
        arch='tiny',
        # 0.1: the same lab's Agent-Attention cascade 3x config (the code
        # family behind the Pola runs). Alternative: 0.2, the Swin authors'
        # cascade 3x config behind the 50.4 baseline.
        drop_path_rate=0.1,
        pola_attn_mode='global',  # Pola stages 1-2: one window over the map
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/pola_swin_tiny.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))

# The Swin recipe's plain AdamW instead of ConvNeXt's AMP + layer-wise lr
# decay; fp32 (the Pola attention runs in fp32 anyway).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW',
        lr=1e-4,  # paper, Swin authors, Agent-Attention (ConvNeXt base: 2e-4)
        betas=(0.9, 0.999),
        # 0.05: the Swin authors' and Agent-Attention configs. Alternative:
        # 1e-4, the paper's A.2 (stated for detection in general).
        weight_decay=0.05),
    # The Swin authors' exemptions (only these keys; the Pola positional
    # encodings and scale/power are decayed, as in the released code).
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))

max_epochs = 36
param_scheduler = [
    # 500 iters: the Swin authors' and Agent-Attention configs (the ConvNeXt
    # base uses 1000).
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1)
]

auto_scale_lr = dict(enable=False, base_batch_size=16)  # 8 GPUs x 2

# Training visibility (docs/training_curves.md): besides the base's periodic
# checkpoints, keep the best one by box AP ('coco/bbox_mAP': mmdet's
# CocoMetric key, evaluated after every epoch), as the reported number is
# the best epoch's. Scalars (losses, lr, every metric) go to
# work_dir/<time>/vis_data/scalars.json through the base's LocalVisBackend.
default_hooks = dict(
    checkpoint=dict(save_best='coco/bbox_mAP', rule='greater'))
