#!/usr/bin/env bash
# Office-31 suite: ImageNet-pretrained ResNet-50 with TLlib's recipe (configs/office31/), METHODS x TASKS x SEEDS,
# then a Markdown table against the published numbers (tools/paper_results.yaml, key office31).
#   bash scripts/run_office31.sh                                     # source_only dann cdan_e mcc, 6 tasks, 3 seeds
#   METHODS="cdan dann_ocr cdan_e_ocr" TASKS="a2w w2a" SEEDS=0 bash scripts/run_office31.sh
#   DEVICE=Ascend DISTRIBUTE=8 bash scripts/run_office31.sh         # each run data-parallel on 8 cards (msrun)
#   SMOKE=1 DATA_ROOT=/tmp/tiny_office31 bash scripts/run_office31.sh  # 3-iteration ResNet-18 runs on a tiny tree
# Needs the data at DATA_ROOT (data/office31) and data/pretrained/resnet50_imagenet.ckpt (not with SMOKE=1);
# see README "Office-31 and ImageCLEF-DA". Other knobs (RUNS, OPTS, PYTHON): scripts/suite_lib.sh.
SUITE=office31
CONFIG_DIR=configs/office31
source "$(dirname "$0")/suite_lib.sh"
METHODS=${METHODS:-"source_only dann cdan_e mcc"}
TASKS=${TASKS:-"a2w d2w w2d a2d d2a w2a"}
DATA_ROOT=${DATA_ROOT:-data/office31}
image_suite "Office-31" "amazon/ dslr/ webcam/ as <domain>/images/<class>/*.jpg"
run_suite
