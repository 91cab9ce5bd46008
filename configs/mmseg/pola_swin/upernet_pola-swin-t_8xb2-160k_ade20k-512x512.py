# UperNet + Pola-Swin-T, 160k iterations, 512x512 crops, ADE20K.
# mmseg's Swin-T UperNet recipe: auxiliary FCN head on stage 3, 8 GPUs x 2
# images, 1500 iters linear warm-up then poly (power 1.0) decay to 0,
# whole-image inference; the paper's lr and weight decay.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'  # noqa

custom_imports = dict(imports=['mmpola'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PolaSwin',
        arch='tiny',
        drop_path_rate=0.3,  # Swin-T segmentation recipe
        pola_attn_mode='global',  # Pola stages 1-2: one window over the map
        init_cfg=dict(
            type='Pretrained', checkpoint='checkpoints/pola_swin_tiny.pth')),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

optim_wrapper = dict(
    # paper: lr 2e-4, wd 1e-3 (the Swin recipe uses lr 6e-5, wd 1e-2).
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-3),
    # Added to the Swin recipe's norm / relative-position-table exemptions:
    # the Pola positional encodings (Swin's absolute_pos_embed counterpart)
    # and the per-channel Pola scale/power, exempt like norm gains.
    paramwise_cfg=dict(
        custom_keys={
            'positional_encoding': dict(decay_mult=0.),
            'attn.scale': dict(decay_mult=0.),
            'attn.power': dict(decay_mult=0.)
        }))
