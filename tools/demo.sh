#!/usr/bin/env bash
# End-to-end demo on a CPU machine (what `make demo` runs), about 10 minutes:
#   1. a small COCO-format dataset of coloured shapes (tools/misc/make_demo_data.py),
#   2. a Pola-PVT-T checkpoint in the released layout, random values
#      (mmpola.testing.make_official_checkpoint), loaded through the real path,
#   3. Mask R-CNN + Pola-PVT-T trained from the real config with 2 processes
#      (tools/dist_train.sh, gloo without CUDA),
#   4. COCO evaluation of the final checkpoint (tools/dist_test.sh).
# Settings (environment): WORK_DIR, NPROC, NUM_TRAIN, NUM_VAL, EPOCHS, LR, PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export PYTHON
CONFIG=configs/mmdet/pola_pvt/mask-rcnn_pola-pvt-t_fpn_1x_coco.py
WORK_DIR=${WORK_DIR:-work_dirs/demo}
NPROC=${NPROC:-2}
NUM_TRAIN=${NUM_TRAIN:-48}
NUM_VAL=${NUM_VAL:-16}
EPOCHS=${EPOCHS:-4}
LR=${LR:-0.0004}
DATA=$WORK_DIR/data/
CKPT=$WORK_DIR/pola_pvt_tiny_random.pth
START=$(date +%s)

"$PYTHON" tools/misc/make_demo_data.py coco "$DATA" --img-size 256 320 \
    --num-train "$NUM_TRAIN" --num-val "$NUM_VAL"
"$PYTHON" -c "from mmpola.testing import make_official_checkpoint as m; \
m('pola_pvt_tiny', '$CKPT')"

# Everything the demo changes in the config, in one place.
OPTIONS=(
    # data: the generated set, 3 classes, images kept at 320x256
    train_dataloader.dataset.data_root="$DATA"
    val_dataloader.dataset.data_root="$DATA"
    test_dataloader.dataset.data_root="$DATA"
    val_evaluator.ann_file="${DATA}annotations/instances_val2017.json"
    test_evaluator.ann_file="${DATA}annotations/instances_val2017.json"
    train_dataloader.dataset.metainfo.classes="(rectangle,ellipse,triangle)"
    val_dataloader.dataset.metainfo.classes="(rectangle,ellipse,triangle)"
    test_dataloader.dataset.metainfo.classes="(rectangle,ellipse,triangle)"
    model.roi_head.bbox_head.num_classes=3
    model.roi_head.mask_head.num_classes=3
    train_dataloader.dataset.pipeline.2.scale="(320,256)"
    val_dataloader.dataset.pipeline.1.scale="(320,256)"
    test_dataloader.dataset.pipeline.1.scale="(320,256)"
    # schedule: a few epochs, short warm-up, higher lr; no validation while
    # training (dist_test.sh evaluates the final checkpoint)
    train_cfg.max_epochs="$EPOCHS"
    train_cfg.val_begin=$((EPOCHS + 1))
    param_scheduler.0.end=10
    param_scheduler.1.end="$EPOCHS"
    param_scheduler.1.milestones="[$((EPOCHS - 1))]"
    optim_wrapper.optimizer.lr="$LR"
    default_hooks.logger.interval=10
    # fewer sampled RoIs per image in training (512 -> 128): on a CPU the RoI
    # heads, not the backbone, take most of the time
    model.train_cfg.rcnn.sampler.num=128
    default_hooks.checkpoint.interval="$EPOCHS"
    # backbone: the released-layout checkpoint written above
    model.backbone.init_cfg.checkpoint="$CKPT"
)

tools/dist_train.sh "$CONFIG" "$NPROC" --work-dir "$WORK_DIR/train" \
    --cfg-options "${OPTIONS[@]}"
tools/dist_test.sh "$CONFIG" "$WORK_DIR/train/epoch_$EPOCHS.pth" "$NPROC" \
    --work-dir "$WORK_DIR/test" --cfg-options "${OPTIONS[@]}" \
    test_evaluator.classwise=True

# the final numbers, from the metrics file dist_test.sh saved
"$PYTHON" - "$WORK_DIR/test" <<'EOF'
import glob, json, os, sys
metrics = json.load(open(max(glob.glob(os.path.join(sys.argv[1], '*', '*.json')))))
print('Mask R-CNN + Pola-PVT-T on the demo data, COCO-style AP:')
for task in ('bbox', 'segm'):
    print(f'  {task}: ' + '  '.join(f"{k} {metrics[f'coco/{task}_{k}']:.3f}"
                                   for k in ('mAP', 'mAP_50', 'mAP_75')))
EOF
echo "demo finished in $(( $(date +%s) - START )) s; work dir: $WORK_DIR"
