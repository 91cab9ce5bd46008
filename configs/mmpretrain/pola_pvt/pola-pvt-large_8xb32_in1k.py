# Pola-PVT-L, ImageNet-1k 224x224; the Pola-PVT-T recipe with the released
# pola_pvt_b.yaml's (MODEL.TYPE pola_pvt_large) batch (8 GPUs x 32 = 256
# images per iteration), lr, gradient clipping and drop path.
_base_ = './pola-pvt-tiny_8xb128_in1k.py'

model = dict(backbone=dict(arch='large', drop_path_rate=0.3))  # PF cfg

train_dataloader = dict(batch_size=32)  # x 8 GPUs = 256 (PF)
optim_wrapper = dict(
    optimizer=dict(lr=5e-4 * 256 / 512),  # PF: 5e-4 per 512 -> 2.5e-4
    clip_grad=dict(max_norm=1.0))  # PF cfg: CLIP_GRAD 1.0
auto_scale_lr = dict(enable=False, base_batch_size=256)
