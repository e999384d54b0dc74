#!/usr/bin/env bash
# PACS domain generalisation (issue #17), leave-one-domain-out with the official OCR recipe (configs/dg/*_pacs_*):
# ImageNet ResNet-18, three source domains (their train lists, drawn at random from the union), 50 epochs of SGD
# with a per-epoch cosine schedule and the per-target lr / batch of the official dg_demix.sh, the whole held-out
# domain as the test set. Prints the table of the last epoch and the table of the epoch chosen on the sources'
# crossval lists (train.select_by: source_acc), 4 targets + the average.
#   bash scripts/run_pacs.sh                                  # erm erm_ocr erm_cnsn, 4 targets, SEEDS="0 1 2"
#   METHODS="erm_ocr" TASKS="pacs_sketch" SEEDS="1 2 3 4 5 6 7 8 9 10" bash scripts/run_pacs.sh  # the official 10 seeds
#   SMOKE=1 DATA_ROOT=/tmp/tiny bash scripts/run_pacs.sh      # 3-iteration random-init ResNet-18 runs on a tiny tree
# Needs DATA_ROOT/pacs/{images,splits} (DATA_ROOT defaults to data; Dassl's layout, README "Domain generalisation")
# and data/pretrained/resnet18_imagenet.ckpt (not with SMOKE=1).
SUITE=pacs
CONFIG_DIR=configs/dg
SUITE_WEIGHTS=data/pretrained/resnet18_imagenet.ckpt
SUITE_CONVERT_HINT="python tools/convert_torchvision.py resnet18-f37072fd.pth $SUITE_WEIGHTS --arch resnet18"
source "$(dirname "$0")/suite_lib.sh"
METHODS=${METHODS:-"erm erm_ocr erm_cnsn"}
TASKS=${TASKS:-"pacs_art_painting pacs_cartoon pacs_photo pacs_sketch"}
DATA_ROOT=${DATA_ROOT:-data}
image_suite "PACS" "pacs/images/<domain>/<class>/* and pacs/splits/*_kfold.txt" "Domain generalisation" pacs
if [ "$SMOKE" = 1 ]; then  # iterations instead of 50 epochs, the smoke's batch of 4 for every target
    EXTRA_OPTS+=(train.epochs=0 optim.lr_step_every=1)
fi
run_suite
