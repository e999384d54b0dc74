#!/usr/bin/env bash
# ImageCLEF-DA suite: ImageNet-pretrained ResNet-50 with TLlib's recipe (configs/imageclef/), METHODS x TASKS x SEEDS,
# then a Markdown table against the published numbers (tools/paper_results.yaml, key imageclef).
#   bash scripts/run_imageclef.sh                                    # source_only dann cdan_e mcc, 6 tasks, 3 seeds
#   METHODS="cdan" TASKS="i2p p2i" SEEDS=0 bash scripts/run_imageclef.sh
#   DEVICE=Ascend DISTRIBUTE=8 bash scripts/run_imageclef.sh        # each run data-parallel on 8 cards (msrun)
#   SMOKE=1 DATA_ROOT=/tmp/tiny_clef bash scripts/run_imageclef.sh  # 3-iteration ResNet-18 runs on a tiny tree
# Needs the data at DATA_ROOT (data/image_CLEF) and data/pretrained/resnet50_imagenet.ckpt (not with SMOKE=1);
# see README "Office-31 and ImageCLEF-DA". Other knobs (RUNS, OPTS, PYTHON): scripts/suite_lib.sh.
SUITE=imageclef
CONFIG_DIR=configs/imageclef
source "$(dirname "$0")/suite_lib.sh"
METHODS=${METHODS:-"source_only dann cdan_e mcc"}
TASKS=${TASKS:-"i2p p2i i2c c2i c2p p2c"}
DATA_ROOT=${DATA_ROOT:-data/image_CLEF}
image_suite "ImageCLEF-DA" "b/ c/ i/ p/ (images) and list/<domain>List.txt (labels)"
run_suite
