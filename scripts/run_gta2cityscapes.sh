#!/usr/bin/env bash
# GTA5 -> Cityscapes segmentation suite: DeepLab-v2 ResNet-101, source-only and AdaptSegNet (single- and multi-level),
# METHODS x SEEDS, then a Markdown table of per-class IoU and mIoU beside the paper's rows (AdaptSegNet, Table 1).
#   bash scripts/run_gta2cityscapes.sh                                  # source_only adaptsegnet_single adaptsegnet, 3 seeds
#   METHODS="adaptsegnet source_only_cnsn" SEEDS=0 bash scripts/run_gta2cityscapes.sh
#   DEVICE=Ascend DISTRIBUTE=8 bash scripts/run_gta2cityscapes.sh      # each run data-parallel on 8 cards (msrun)
#   SMOKE=1 GTA5_ROOT=/tmp/tiny_gta5 CITYSCAPES_ROOT=/tmp/tiny_cs bash scripts/run_gta2cityscapes.sh   # 3 iterations
# Needs GTA5 at GTA5_ROOT (data/gta5), Cityscapes at CITYSCAPES_ROOT (data/cityscapes) and the DeepLab init weights at
# data/pretrained/deeplabv2_resnet101_init.ckpt (not with SMOKE=1); see README "GTA5 -> Cityscapes". Without the
# datasets it says how to get them and runs the embedded DigitScenes -> DigitScenes-M benchmark instead
# (configs/segmentation: source_only adaptsegnet oracle), as run_digits.sh does. Other knobs: scripts/suite_lib.sh.
USER_RUNS=${RUNS:-}
SUITE=gta2cityscapes
CONFIG_DIR=configs/gta2cityscapes
source "$(dirname "$0")/suite_lib.sh"
TASKS=gta2cityscapes
GTA5_ROOT=${GTA5_ROOT:-data/gta5}
CITYSCAPES_ROOT=${CITYSCAPES_ROOT:-data/cityscapes}
SEG_PRETRAINED=data/pretrained/deeplabv2_resnet101_init.ckpt
# SMOKE=1: a random-init DeepLab-v2 with one block per stage on small images, 3 iterations; numbers meaningless
SEG_SMOKE_OPTS=(model.pretrained=null "model.backbone_kwargs.layers=[1,1,1,1]" "data.source.resize=[64,32]"
                "data.target.resize=[64,32]" data.source.verify_counts=false data.target.verify_counts=false
                data.num_workers=1 "${SMOKE_ITERS[@]}")

if [ -n "$(ls -A "$GTA5_ROOT" 2>/dev/null)" ] && [ -n "$(ls -A "$CITYSCAPES_ROOT" 2>/dev/null)" ]; then
    METHODS=${METHODS:-"source_only adaptsegnet_single adaptsegnet"}
    require_weights "DeepLab init weights" "$SEG_PRETRAINED" "python tools/convert_torchvision.py \
DeepLab_resnet_pretrained_init-f81d91e8.pth $SEG_PRETRAINED --arch deeplabv2_resnet101 (see README \"GTA5 -> Cityscapes\")"
    EXTRA_OPTS=("data.source.root=$GTA5_ROOT" "data.target.root=$CITYSCAPES_ROOT")
    if [ "$SMOKE" = 1 ]; then EXTRA_OPTS+=("${SEG_SMOKE_OPTS[@]}"); fi
else
    cat <<MSG
GTA5 or Cityscapes not found (GTA5_ROOT=$GTA5_ROOT, CITYSCAPES_ROOT=$CITYSCAPES_ROOT).
  Both are manual downloads: GTA5 ("Playing for Data": images/ and labels/) and Cityscapes (leftImg8bit_trainvaltest
  and gtFine_trainvaltest: leftImg8bit/ and gtFine/); see README "GTA5 -> Cityscapes" for the layout.
Running the embedded DigitScenes -> DigitScenes-M benchmark instead.
MSG
    CONFIG_DIR=configs/segmentation
    TASKS=digitscenes
    TABLE_SUITE=digitscenes
    METHODS=${METHODS:-"source_only adaptsegnet oracle"}
    if [ -z "$USER_RUNS" ]; then
        if [ "$SMOKE" = 1 ]; then RUNS=runs/digitscenes_smoke; else RUNS=runs/digitscenes; fi
    fi
    if [ "$SMOKE" = 1 ]; then EXTRA_OPTS=("${SMOKE_ITERS[@]}"); fi
fi
run_suite
