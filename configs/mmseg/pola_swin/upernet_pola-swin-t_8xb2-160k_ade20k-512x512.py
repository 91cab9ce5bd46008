# UperNet + Pola-Swin-T, 160k iterations, 512x512 crops, ADE20K.
# mmseg's Swin-T UperNet config is the Swin authors' recipe, and the same
# lab's Agent-Attention code uses it too: auxiliary FCN head on stage 3,
# 8 GPUs x 2 images, AdamW lr 6e-5, wd 0.01, 1500 iters linear warm-up then
# poly (power 1.0) decay to 0, whole-image inference. Sources: README.md
# ("Provenance").
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'  # noqa

custom_imports = dict(imports=['mmpola'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PolaSwin',
        arch='tiny',
        drop_path_rate=0.3,  # Swin authors' / mmseg's Swin-T UperNet
        pola_attn_mode='global',  # Pola stages 1-2: one window over the map
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/pola_swin_tiny.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

optim_wrapper = dict(
    # 6e-5 and 0.01: the Swin authors' and Agent-Attention UperNet configs
    # (the base). Alternative: lr 2e-4, wd 1e-3, the paper's A.2 (stated for
    # segmentation in general; the Semantic FPN recipe's lr).
    optimizer=dict(type='AdamW', lr=6e-5, weight_decay=0.01),
    # The base's (= Swin authors') exemptions: absolute_pos_embed,
    # relative_position_bias_table and every '*norm*' parameter. The Pola
    # positional encodings and scale/power are decayed, as in the released
    # classification code and in the references' lists, which name only
    # these keys.
)
# param_scheduler (base): LinearLR from 1e-6 over 1500 iters, then PolyLR
# power 1.0 to 0 at 160k (Swin authors, Agent-Attention).

auto_scale_lr = dict(enable=False, base_batch_size=16)  # 8 GPUs x 2

# Training visibility (docs/training_curves.md): besides the base's periodic
# checkpoints, keep the best one by mIoU (mmseg's IoUMetric key, evaluated
# at every val_interval). Scalars (losses, lr, metrics) go to
# work_dir/<time>/vis_data/scalars.json through the base's LocalVisBackend.
default_hooks = dict(checkpoint=dict(save_best='mIoU', rule='greater'))
