# Pola-Swin-B at 384x384: a 30-epoch FINE-TUNE of the 224 Pola-Swin-B, as the
# released model was made (PF cfgs/pola_swin_b_384.yaml, MODEL.NAME
# pola_swin_base_patch4_384_finetune; PF utils.py load_pretrained). Pola
# window 96 (one global window per Pola stage at 384), softmax window 12,
# positional encodings for the 384 grid. Sources: README.md ("Provenance").
_base_ = './pola-swin-base_8xb64_in1k.py'

# The 224 Pola-Swin-B classifier in mmpretrain's layout (backbone.* and
# head.fc.*): the released pola_swin_base.pth converted with
#   python tools/model_converters/polaformer_to_mmpola.py \
#       checkpoints/pola_swin_base.pth checkpoints/pola-swin-base_in1k.pth
# (A checkpoint of pola-swin-base_8xb64_in1k.py serves too once saved as
# {'state_dict': ckpt['state_dict']}: torch>=2.6's torch.load refuses the
# other entries MMEngine stores.)
pretrained_224 = 'checkpoints/pola-swin-base_in1k.pth'

model = dict(
    backbone=dict(
        pretrain_img_size=384,
        window_size=12,
        pola_window_size=96,
        drop_path_rate=0.5,  # PF pola_swin_b_384.yaml
        # mmpola.checkpoint.load_pretrained: the positional encodings and the
        # relative position tables are resized bicubically to the 384 sizes
        # (PF utils.py does the same), everything else loads as it is.
        init_cfg=dict(type='Pretrained', checkpoint=pretrained_224)),
    # PF keeps the 224 model's classifier (same 1000 classes).
    head=dict(
        init_cfg=dict(
            _delete_=True,  # the base has None
            type='Pretrained',
            checkpoint=pretrained_224,
            prefix='head.')))

# ---------------------------------------------------------------- data
# Same augmentation as the 224 recipe, at 384 (PF: the fine-tune changes only
# the image size). Test: PF TEST.CROP=False, a bicubic resize to a 384x384
# square, no crop.
bgr_mean = [103.53, 116.28, 123.675]
bgr_std = [57.375, 57.12, 58.395]
train_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(
        type='RandomResizedCrop',
        scale=384,
        backend='pillow',
        interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(
            pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
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
test_pipeline = [
    dict(type='LoadImageFromFile', imdecode_backend='pillow'),
    dict(
        type='Resize',
        scale=(384, 384),
        keep_ratio=False,
        backend='pillow',
        interpolation='bicubic'),
    dict(type='PackInputs')
]
# 8 GPUs x 64 = 512 images per iteration. recipes.md gives the fine-tune's
# lr per 512 images but not its batch; 512 is the 224 Swin-B batch, at which
# the lr below is exactly BASE_LR. Other batches: --auto-scale-lr.
train_dataloader = dict(batch_size=64, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# ----------------------------------------------------------- optimizer
optim_wrapper = dict(
    # PF pola_swin_b_384.yaml: BASE_LR 2e-5 per 512 images, weight decay 1e-8
    optimizer=dict(lr=2e-5, weight_decay=1e-8),
    clip_grad=dict(max_norm=5.0))  # PF: CLIP_GRAD 5.0 (config.py default)

# ------------------------------------------------------------ schedule
# 30 epochs: 5 warm-up epochs from WARMUP_LR 2e-8, then cosine to MIN_LR
# 2e-7 (per 512 images; as ratios of the lr: 1e-3 and 0.01).
warmup_epochs = 5
max_epochs = 30
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
train_cfg = dict(max_epochs=max_epochs)

auto_scale_lr = dict(enable=False, base_batch_size=512)
