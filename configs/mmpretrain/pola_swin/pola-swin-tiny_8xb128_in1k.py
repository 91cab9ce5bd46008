# Pola-Swin-T, ImageNet-1k 224x224, the recipe of the released configuration
# files (Swin-style training code, shared by both Pola families): 8 GPUs x
# 128 = 1024 images per iteration, AdamW lr 5e-4 per 512 images, wd 0.05,
# grad clipping at 5, cosine decay after 20 warm-up epochs, RandAugment m9,
# mixup 0.8, cutmix 1.0, label smoothing 0.1, random erasing 0.25, bicubic
# resizing (the dataset and schedule bases).
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py'
]

custom_imports = dict(imports=['mmpola'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='PolaSwin',
        arch='tiny',
        drop_path_rate=0.2,
        out_indices=(3, ),
        out_norms=True),  # norm3 = the released classifier's final norm
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        init_cfg=None,  # the model's init_cfg below covers it
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        dict(type='Constant', layer='LayerNorm', val=1., bias=0.)
    ],
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0)
    ]))

train_dataloader = dict(batch_size=128)

optim_wrapper = dict(
    optimizer=dict(lr=5e-4 * 1024 / 512, weight_decay=0.05),
    clip_grad=dict(max_norm=5.0),
    # Besides norms, biases, 1-d tensors and relative position tables (the
    # base): the Pola positional encodings and the per-channel Pola
    # scale/power, exempt like norm gains.
    paramwise_cfg=dict(
        custom_keys={
            '.positional_encoding': dict(decay_mult=0.),
            '.attn.scale': dict(decay_mult=0.),
            '.attn.power': dict(decay_mult=0.)
        }))

# 20 warm-up epochs, then cosine: the schedule base.
# 300 epochs, as the released configuration files that trained the released
# weights (the paper's text says 400).
train_cfg = dict(max_epochs=300)
