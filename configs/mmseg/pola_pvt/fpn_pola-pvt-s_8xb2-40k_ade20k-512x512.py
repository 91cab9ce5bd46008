# Semantic FPN + Pola-PVT-S, 40k iterations; recipe as Pola-PVT-T.
_base_ = './fpn_pola-pvt-t_8xb2-40k_ade20k-512x512.py'

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(checkpoint='checkpoints/pola_pvt_small.pth')))
