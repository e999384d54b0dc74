"""Suite scripts and the table tool."""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT
from tools.make_table import collect, render


def fake_run(root, name, seed, acc):
    run = root / name / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"target_acc": acc}))


def test_table_mean_std_paper_and_average(tmp_path):
    for seed, acc in enumerate([0.70, 0.80, 0.90]):
        fake_run(tmp_path, "cdan_e_a2w", seed, acc)
    fake_run(tmp_path, "cdan_e_d2w", 0, 0.5)
    fake_run(tmp_path, "source_only_a2w", 0, 0.6)
    table = collect(str(tmp_path))
    assert sorted(table) == [("cdan_e", "a2w"), ("cdan_e", "d2w"), ("source_only", "a2w")]
    text = render(table, {"cdan_e": {"a2w": 94.1, "avg": 87.7}}, ["a2w", "d2w"], ["source_only", "cdan_e"])
    lines = text.splitlines()
    assert lines[0] == "| method | a2w | d2w | avg |"
    assert lines[2] == "| source_only | 60.0 | — | — |"
    # std is the population std over seeds, as numpy computes it: 8.2 for 70/80/90
    assert lines[3] == "| cdan_e | 80.0 ± 8.2 (n=3) [94.1] | 50.0 | 65.0 [87.7] |"


def test_run_digits_falls_back_to_optdigits_and_skips_finished(tmp_path):
    env = dict(os.environ, SEEDS="0 1", METHODS="source_only adda", RUNS=str(tmp_path / "runs"),
               PYTHON=sys.executable,
               OPTS="train.iters=4 train.log_every=2 train.eval_every=2 train.ckpt_every=2")
    first = subprocess.run(["bash", "scripts/run_digits.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Running the embedded optdigits" in first.stdout
    assert "| source_only | " in first.stdout and "| adda | " in first.stdout and "(n=2)" in first.stdout
    assert os.path.isfile(tmp_path / "runs" / "table.md")
    again = subprocess.run(["bash", "scripts/run_digits.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and again.stdout.count("[skip]") == 4 and "[run]" not in again.stdout
