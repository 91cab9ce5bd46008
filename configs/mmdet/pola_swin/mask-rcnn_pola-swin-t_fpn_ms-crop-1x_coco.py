# Mask R-CNN + Pola-Swin-T, 1x (12 epochs, steps at 8 and 11), COCO.
# Multi-scale crop training as the 3x config: the paper's Swin-T baseline
# (43.7 box AP) is the Swin authors' 1x result, trained with this multi-scale
# crop pipeline (mmdet's single-scale Swin-T 1x gives 42.7).
_base_ = './mask-rcnn_pola-swin-t_fpn_ms-crop-3x_coco.py'

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=1000),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[8, 11],
        gamma=0.1)
]
