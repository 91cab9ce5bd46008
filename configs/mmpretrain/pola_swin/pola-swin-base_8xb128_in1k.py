# Pola-Swin-B, ImageNet-1k 224x224; recipe as Pola-Swin-T.
_base_ = './pola-swin-tiny_8xb128_in1k.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.5),
    head=dict(in_channels=1024))
