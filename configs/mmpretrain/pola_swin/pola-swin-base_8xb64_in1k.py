# Pola-Swin-B, ImageNet-1k 224x224; the Pola-Swin-T recipe with the released
# pola_swin_b.yaml's batch (8 GPUs x 64 = 512 images per iteration), lr and
# drop path. Gradient clipping 5.0 as every Swin model.
_base_ = './pola-swin-tiny_8xb128_in1k.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5),  # PF cfg
    head=dict(in_channels=1024))

train_dataloader = dict(batch_size=64)  # x 8 GPUs = 512 (PF)
optim_wrapper = dict(
    optimizer=dict(lr=5e-4),  # PF: 5e-4 per 512 images
    clip_grad=dict(max_norm=5.0))  # PF: CLIP_GRAD 5.0
auto_scale_lr = dict(enable=False, base_batch_size=512)
