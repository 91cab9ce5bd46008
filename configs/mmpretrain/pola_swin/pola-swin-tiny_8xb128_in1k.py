# Pola-Swin-T, ImageNet-1k 224x224: the recipe that trained and evaluated the
# released weights, value by value. PF = the released classification code
# (ZacharyMeng/PolaFormer: cfgs/pola_swin_t.yaml, config.py, main.py,
# data/build.py, optimizer.py); sources of every value: README.md
# ("Provenance"). S / B inherit this file; the 384 model is a fine-tune of B.
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
        drop_path_rate=0.2,  # PF cfg (T 0.2, S 0.3, B 0.5)
        out_indices=(3, ),
        out_norms=True),  # norm3 = the released classifier's final norm
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        init_cfg=None,  # the model's init_cfg below covers it
        # PF: label smoothing 0.1 (SoftTargetCrossEntropy with mixup)
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    init_cfg=[
        dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
        dict(type='Constant', layer='LayerNorm', val=1., bias=0.)
    ],
    # PF: mixup 0.8, cutmix 1.0, switch prob 0.5 (one of the two per batch)
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0)
    ]))

# ---------------------------------------------------------------- data
# PF decodes with PIL (ImageFolder -> PIL.Image.convert('RGB')), for
# training and evaluation alike.
bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
train_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    # PF: timm create_transform, RandomResizedCrop bicubic
    dict(
        type='RandomResizedCrop',
        scale=224,
        backend='pillow',
        interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    # PF: RandAugment 'rand-m9-mstd0.5-inc1'
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(
            pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    # PF: random erasing 0.25, per-pixel ('rand') noise, one region
    dict(
        type='RandomErasing',
        erase_prob=0.25,
        mode='rand',
        min_area_ratio=0.02,
        max_area_ratio=1 / 3,
        fill_color=bgr_mean,
        fill_std=bgr_std),
    dict(type='PackInputs')
]
# The evaluation of the released numbers (PF data/build.py, TEST.CROP=True):
# bicubic resize to a 256x256 SQUARE (aspect ratio not kept), then a centre
# crop of 224. Not mmpretrain's ResizeEdge(256, edge='short'), which keeps
# the aspect ratio and so sees a different view of non-square images.
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(
        type='Resize',
        scale=(256, 256),
        keep_ratio=False,
        backend='pillow',
        interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs')
]
# 8 GPUs x 128 = 1024 images per iteration (PF pola_swin_t.yaml)
train_dataloader = dict(batch_size=128, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# ----------------------------------------------------------- optimizer
# PF main.py: lr is linear in the batch, BASE_LR 5e-4 per 512 images
# (1e-3 at 1024); AdamW eps 1e-8, betas (0.9, 0.999) (the schedule base).
optim_wrapper = dict(
    optimizer=dict(lr=5e-4 * 1024 / 512, weight_decay=0.05),
    clip_grad=dict(max_norm=5.0),  # PF: CLIP_GRAD 5.0 (all Swin models)
    # Weight decay as PF optimizer.py: none on 1-d parameters and biases
    # (the base's norm/bias/flat_decay_mult=0) and on Swin's skip list,
    # absolute_pos_embed (Pola-Swin has none) and relative_position_bias_table
    # (the base's custom keys). So the Pola positional encodings and the
    # Pola `scale` (1, 1, C) / `power` (1, h, 1, d) ARE decayed.
)

# ------------------------------------------------------------ schedule
# PF (timm cosine, per iteration): 20 warm-up epochs from WARMUP_LR, then
# cosine to MIN_LR at epoch 300. WARMUP_LR 5e-7 and MIN_LR 5e-6 per 512
# images scale with the batch like the lr, so they are written as ratios of
# it (auto_scale_lr keeps them): 5e-7 / 5e-4 = 1e-3, 5e-6 / 5e-4 = 0.01.
warmup_epochs = 20
max_epochs = 300
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        begin=0,
        end=warmup_epochs,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min_ratio=0.01,
        by_epoch=True,
        begin=warmup_epochs,
        end=max_epochs,
        convert_to_iter_based=True)
]
# 300 epochs, as the released configuration files that trained the released
# weights (the paper's text says 400).
train_cfg = dict(max_epochs=max_epochs)

# PF main.py keeps the best epoch's accuracy (the reported number): keep the
# best checkpoint, and only the 2 latest periodic ones (for resuming).
default_hooks = dict(
    checkpoint=dict(
        type='CheckpointHook',
        interval=1,
        max_keep_ckpts=2,
        save_best='accuracy/top1',
        rule='greater'))

# Fewer GPUs: `tools/train.py ... --auto-scale-lr` scales the lr (and with
# it warm-up start and min lr) by (GPUs x batch) / 1024.
auto_scale_lr = dict(enable=False, base_batch_size=1024)
