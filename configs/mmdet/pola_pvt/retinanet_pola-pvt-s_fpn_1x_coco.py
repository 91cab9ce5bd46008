# RetinaNet + Pola-PVT-S, 1x; recipe as Pola-PVT-T.
_base_ = './retinanet_pola-pvt-t_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        arch='small',
        init_cfg=dict(checkpoint='checkpoints/pola_pvt_small.pth')))
