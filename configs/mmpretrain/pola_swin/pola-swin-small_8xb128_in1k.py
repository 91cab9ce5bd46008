# Pola-Swin-S, ImageNet-1k 224x224; the Pola-Swin-T recipe (pola_swin_s.yaml
# differs only in drop path): 8 GPUs x 128 = 1024 images, lr 1e-3, clip 5.
_base_ = './pola-swin-tiny_8xb128_in1k.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.3))  # PF cfg
