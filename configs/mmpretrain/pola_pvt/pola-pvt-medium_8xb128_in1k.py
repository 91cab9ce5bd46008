# Pola-PVT-M, ImageNet-1k 224x224; recipe as Pola-PVT-T.
_base_ = './pola-pvt-tiny_8xb128_in1k.py'

model = dict(backbone=dict(arch='medium', drop_path_rate=0.3))
