# Mask R-CNN + Pola-Swin-T, 1x (12 epochs, steps at 8 and 11), COCO.
# Multi-scale crop training as the 3x config: the paper's Swin-T 1x baseline
# (43.7 box AP) is the Swin authors' 1x result, trained with this pipeline,
# and Agent-Attention's 1x uses it too (mmdet's single-scale Swin-T 1x gives
# 42.7). Sources: README.md ("Provenance").
_base_ = './mask-rcnn_pola-swin-t_fpn_ms-crop-3x_coco.py'

# 0.1: the Swin authors' 1x config (behind the 43.7 baseline) and Agent-
# Attention's agree (mmdet's single-scale 1x config uses 0.2).
model = dict(backbone=dict(drop_path_rate=0.1))

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    # 500 iters: the Swin authors' and Agent-Attention configs (mmdet's 1000)
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[8, 11],
        gamma=0.1)
]
