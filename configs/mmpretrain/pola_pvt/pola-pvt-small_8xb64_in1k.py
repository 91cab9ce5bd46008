# Pola-PVT-S, ImageNet-1k 224x224; the Pola-PVT-T recipe with the released
# pola_pvt_s.yaml's batch (8 GPUs x 64 = 512 images per iteration) and lr.
_base_ = './pola-pvt-tiny_8xb128_in1k.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.1))  # PF cfg

train_dataloader = dict(batch_size=64)  # x 8 GPUs = 512 (PF)
# PF: 5e-4 per 512 images; no gradient clipping for PVT-S (as T)
optim_wrapper = dict(optimizer=dict(lr=5e-4))
auto_scale_lr = dict(enable=False, base_batch_size=512)
