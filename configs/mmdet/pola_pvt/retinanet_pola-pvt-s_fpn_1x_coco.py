# RetinaNet + Pola-PVT-S, 1x; recipe as Pola-PVT-T (drop path 0.1 in the PVT
# and Agent-Attention RetinaNet configs for S as for T).
_base_ = './retinanet_pola-pvt-t_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(checkpoint='checkpoints/pola_pvt_small.pth')))
