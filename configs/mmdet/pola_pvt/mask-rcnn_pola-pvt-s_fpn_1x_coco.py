# Mask R-CNN + Pola-PVT-S, 1x; recipe as Pola-PVT-T but the drop path.
_base_ = './mask-rcnn_pola-pvt-t_fpn_1x_coco.py'

model = dict(
    backbone=dict(
        arch='small',
        # 0.2: the same lab's Agent-Attention PVT-S Mask R-CNN config (the
        # code family behind the Pola runs). Alternative: 0.1, the PVT code.
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='checkpoints/pola_pvt_small.pth')))
