"""Office-31 / ImageCLEF-DA suite scripts in SMOKE mode on tiny real JPEG trees, their refusals without
data or weights, and train.py's one-line error when the ImageNet weights are missing.

Each smoke run compiles a ResNet-18 at 32 x 32 (~20-40 s on CPU), so the suites run 4 in all:
Office-31 cdan_e on two tasks (the avg column), then source_only on one task beside the finished
cdan_e run (skipped), and ImageCLEF-DA source_only on one task (in the slow run).
"""
import os
import subprocess
import sys

import pytest

from engine.config import load_config
from tests.conftest import ROOT, run_script
from tests.test_datasets_office import make_imageclef_tree, make_office31_tree

WEIGHTS = "data/pretrained/resnet50_imagenet.ckpt"


def suite(script, tmp_path, data_root, timeout=600, **env):
    env = {**os.environ, "PYTHON": sys.executable, "SMOKE": "1", "DATA_ROOT": str(data_root),
           "RUNS": str(tmp_path / "runs"), "SEEDS": "0", **env}
    return subprocess.run(["bash", f"scripts/{script}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def check(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_office31_smoke_suite_table_and_skip(tmp_path):
    tree = make_office31_tree(tmp_path / "office31")
    out = check(suite("run_office31.sh", tmp_path, tree, METHODS="cdan_e", TASKS="a2w d2a"))
    assert out.count("[run]") == 2
    assert "| method | a2w | d2a | avg |" in out
    row = next(line for line in out.splitlines() if line.startswith("| cdan_e | "))
    assert "[94.1]" in row and "[71.0]" in row and row.endswith("[87.7] |")  # published CDAN+E, Table 1
    saved = load_config(str(tmp_path / "runs" / "cdan_e_a2w" / "seed0" / "config.yaml"))
    assert saved.model.backbone == "resnet18" and saved.model.pretrained is None and saved.train.iters == 3
    assert saved.data.source.root == str(tree) and saved.data.source.domain == "amazon"

    out = check(suite("run_office31.sh", tmp_path, tree, METHODS="source_only cdan_e", TASKS="a2w"))
    assert "[skip] cdan_e a2w seed 0" in out and out.count("[run]") == 1
    assert "| source_only | " in out and "| cdan_e | " in out
    table = (tmp_path / "runs" / "table.md").read_text()
    assert "| method | a2w |" in table and "[68.4]" in table  # ResNet-50 A->W


@pytest.mark.slow  # the default run keeps a sibling test of the same path; the Office-31 smoke suite runs the same script library
def test_imageclef_smoke_suite(tmp_path):
    tree = make_imageclef_tree(tmp_path / "image_CLEF", {d: f"list/{d}List.txt" for d in "cp"})
    out = check(suite("run_imageclef.sh", tmp_path, tree, METHODS="source_only", TASKS="c2p"))
    assert "| method | c2p |" in out
    assert any(line.startswith("| source_only | ") and "[65.5]" in line for line in out.splitlines())
    assert os.path.isfile(tmp_path / "runs" / "table.md")


def test_suites_refuse_without_data_or_weights(tmp_path):
    for script in ("run_office31.sh", "run_imageclef.sh"):
        proc = suite(script, tmp_path, tmp_path / "nowhere", SMOKE="0", timeout=60)
        assert proc.returncode == 1 and "[run]" not in proc.stdout
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert str(tmp_path / "nowhere") in lines[0] and "DATA_ROOT" in lines[0]
        assert f"python tools/convert_torchvision.py resnet50-0676ba61.pth {WEIGHTS}" in lines[0]
    if not os.path.isfile(os.path.join(ROOT, WEIGHTS)):
        tree = tmp_path / "office31"
        (tree / "amazon").mkdir(parents=True)
        proc = suite("run_office31.sh", tmp_path, tree, SMOKE="0", timeout=60)
        assert proc.returncode == 1 and "[run]" not in proc.stdout
        assert proc.stderr.startswith("error: ImageNet weights not found") and "convert_torchvision.py" in proc.stderr


def test_train_without_pretrained_weights_is_one_line_error(tmp_path):
    config = "configs/office31/dann_a2w.yaml"
    assert load_config(os.path.join(ROOT, config)).model.pretrained == WEIGHTS  # the path the README names
    missing = tmp_path / WEIGHTS  # the same name, where it surely does not exist
    proc = run_script("train.py", "--config", config, "--opt", f"model.pretrained={missing}",
                      f"train.output_dir={tmp_path / 'run'}", check=False, timeout=300)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: pretrained weights not found: {missing}")
    assert "tools/convert_torchvision.py" in last
