"""The segmentation suite end to end: run_gta2cityscapes.sh in smoke mode on tiny GTA5/Cityscapes trees of real PNGs,
its DigitScenes fallback, eval.py's IoU table and colourised predictions, and data errors as one line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from datasets.cityscapes import CITYSCAPES_CLASSES
from tests.conftest import ROOT, quick_opts, run_script
from tests.test_datasets_segmentation import write_label_ids, write_rgb
from tools.make_table import collect, render_per_class

GTA_NAMES = ["00001.png", "00002.png", "00003.png", "00004.png"]
CITY_TRAIN = ["aachen/aachen_000000_000019", "bochum/bochum_000000_000313"]
CITY_VAL = ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"]


@pytest.fixture(scope="module")
def tiny_trees(tmp_path_factory):
    """GTA5 (images/, labels/ with label ids) and Cityscapes (leftImg8bit/, gtFine/ labelIds) with 64x32 images."""
    gta, city = tmp_path_factory.mktemp("gta5"), tmp_path_factory.mktemp("cityscapes")
    for k, name in enumerate(GTA_NAMES):
        write_rgb(gta / "images" / name, k, (64, 32))
        write_label_ids(gta / "labels" / name, 100 + k, (64, 32), palette_mode=True)
    for split, names in (("train", CITY_TRAIN), ("val", CITY_VAL)):
        for k, name in enumerate(names):
            write_rgb(city / "leftImg8bit" / split / f"{name}_leftImg8bit.png", 200 + k, (64, 32))
            write_label_ids(city / "gtFine" / split / f"{name}_gtFine_labelIds.png", 300 + k, (64, 32))
    return gta, city


def run_suite(env_extra, timeout=900):
    env = dict(os.environ, PYTHON=sys.executable, **env_extra)
    return subprocess.run(["bash", "scripts/run_gta2cityscapes.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow  # the default run keeps a sibling test of the same path; the GTA5/Cityscapes loaders have their own tests
def test_smoke_suite_on_tiny_trees_then_eval_writes_iou_table_and_pngs(tiny_trees, tmp_path):
    gta, city = tiny_trees
    runs = tmp_path / "runs"
    proc = run_suite({"SMOKE": "1", "SEEDS": "0", "METHODS": "source_only adaptsegnet", "RUNS": str(runs),
                      "GTA5_ROOT": str(gta), "CITYSCAPES_ROOT": str(city)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "| method | road | sidewalk |" in proc.stdout and "AdaptSegNet multi-level (paper)" in proc.stdout
    res = json.loads((runs / "adaptsegnet_gta2cityscapes" / "seed0" / "results.json").read_text())
    assert res["metric"] == "miou" and len(res["target_per_class"]) == 19 and res["class_names"][0] == "road"
    metrics = [json.loads(line) for line in (runs / "adaptsegnet_gta2cityscapes" / "seed0" / "metrics.jsonl").open()]
    assert {"seg", "seg_aux", "adv", "adv_aux", "d_loss", "d_loss_aux", "target_miou"} <= set(metrics[-1])

    run_dir = runs / "adaptsegnet_gta2cityscapes" / "seed0"
    preds = tmp_path / "preds"
    out = run_script("eval.py", "--config", f"{run_dir}/config.yaml", "--ckpt", f"{run_dir}/last.ckpt",
                     "--save-predictions", str(preds), "--json")
    report = json.loads(out.stdout)
    assert report["metric"] == "miou" and abs(report["target_miou"] - res["target_miou"]) < 1e-9
    table = (run_dir / "eval_target.md").read_text()
    assert "| road |" in table and "| **mean** |" in table
    written = sorted(os.listdir(preds))
    assert written == sorted(os.path.basename(n) + "_leftImg8bit.png" for n in CITY_VAL)
    image = np.asarray(Image.open(preds / written[0]))
    assert image.shape == (32, 64, 3)  # predictions at the label resolution, in Cityscapes colours


def test_suite_falls_back_to_digitscenes_without_data(tmp_path):
    runs = tmp_path / "runs"
    proc = run_suite({"SEEDS": "0", "METHODS": "source_only adaptsegnet", "RUNS": str(runs),
                      "GTA5_ROOT": str(tmp_path / "none"), "CITYSCAPES_ROOT": str(tmp_path / "none"),
                      "OPTS": "train.iters=4 train.log_every=2 train.eval_every=2 train.ckpt_every=2"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Running the embedded DigitScenes" in proc.stdout
    assert "| method | 0 | 1 |" in proc.stdout and "AdaptSegNet (PyTorch reference)" in proc.stdout
    again = run_suite({"SEEDS": "0", "METHODS": "source_only adaptsegnet", "RUNS": str(runs),
                       "GTA5_ROOT": str(tmp_path / "none"), "CITYSCAPES_ROOT": str(tmp_path / "none")})
    assert again.returncode == 0 and again.stdout.count("[skip]") == 2 and "[run]" not in again.stdout


def test_per_class_table_means_over_seeds(tmp_path):
    for seed, (miou, first) in enumerate([(0.30, 0.5), (0.40, 0.7)]):
        run = tmp_path / "adaptsegnet_digitscenes" / f"seed{seed}"
        run.mkdir(parents=True)
        run.joinpath("results.json").write_text(json.dumps({
            "metric": "miou", "target_miou": miou, "target_per_class": [first, float("nan")],
            "class_names": ["a", "b"]}))
    text = render_per_class(collect(str(tmp_path), per_class=True),
                            {"adaptsegnet": {"digitscenes": {"label": "reference", "miou": 31.7}}})
    lines = text.splitlines()
    assert lines[2] == "| method | a | b | mIoU |"
    assert lines[4] == "| adaptsegnet | 60.0 | nan | **35.0 ± 5.0 (n=2)** |"
    assert lines[5] == "| reference | — | — | 31.7 |"


def test_missing_gta5_is_one_line_from_the_cli(tmp_path):
    proc = run_script("train.py", "--config", "configs/gta2cityscapes/source_only_gta2cityscapes.yaml", "--opt",
                      f"data.source.root={tmp_path}/gta5", f"data.target.root={tmp_path}/cityscapes",
                      "model.pretrained=null", *quick_opts(tmp_path / "run"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "gta5" in lines[0].lower(), proc.stderr[-2000:]


def test_suite_refuses_without_deeplab_weights(tiny_trees, tmp_path):
    gta, city = tiny_trees
    proc = run_suite({"SEEDS": "0", "RUNS": str(tmp_path / "runs"), "GTA5_ROOT": str(gta),
                      "CITYSCAPES_ROOT": str(city)}, timeout=60)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: DeepLab init weights not found at data/pretrained/deeplabv2_resnet101_init.ckpt")
    assert "--arch deeplabv2_resnet101" in lines[0] and not (tmp_path / "runs").exists()
