"""scripts/run_openset.sh in smoke mode and the open-set tables of tools/make_table.py (issue #15)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tools.make_table import main as make_table


def fake_run(root, name, seed, **results):
    run = root / name / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(results))


def test_table_shows_hscore_known_unknown_and_partial_accuracy(tmp_path):
    for seed, (h, known, unknown) in enumerate([(0.6, 0.75, 0.5), (0.8, 0.8, 0.8)]):
        fake_run(tmp_path, "dance_a2w-oda", seed, metric="hscore", target_hscore=h, target_known_acc=known,
                 target_unknown_acc=unknown)
    fake_run(tmp_path, "dann_a2w-oda", 0, metric="hscore", target_hscore=0.2, target_known_acc=0.9,
             target_unknown_acc=0.1125)
    fake_run(tmp_path, "dance_a2w-pda", 0, metric="acc", target_acc=0.9)
    text = make_table([str(tmp_path), "--tasks", "a2w-oda", "a2w-pda", "--methods", "dann", "dance"])
    lines = text.splitlines()
    assert lines[0].startswith("Target H-score (%) of the final checkpoint for open-set")
    # no avg column: H-score and accuracy do not average
    assert "| dance | 70.0 ± 10.0 (n=2) | 90.0 |" in lines and "| dann | 20.0 | — |" in lines
    # the second table: known / unknown of the open-set task only
    assert "| method | a2w-oda |" in lines
    assert "| dance | 77.5 / 65.0 |" in lines and "| dann | 90.0 / 11.2 |" in lines


def run_suite(tmp_path, **env):
    inherited = {k: v for k, v in os.environ.items() if k != "TASKS"}
    env = {**inherited, "SMOKE": "1", "SEEDS": "0", "METHODS": "dance", "RUNS": str(tmp_path / "runs"),
           "DATA_ROOT": str(tmp_path / "no_office31"), "PYTHON": sys.executable, **env}
    proc = subprocess.run(["bash", "scripts/run_openset.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def results(tmp_path, run):
    with open(tmp_path / "runs" / run / "seed0" / "results.json") as handle:
        return json.load(handle)


def test_run_openset_smoke_open_set_task(tmp_path):
    proc = run_suite(tmp_path, TASKS="optdigits-oda")
    assert "| method | optdigits-oda |" in proc.stdout and "known / unknown accuracy" in proc.stdout
    oda = results(tmp_path, "dance_optdigits-oda")
    assert oda["metric"] == "hscore" and {"target_known_acc", "target_unknown_acc", "target_closed_acc"} <= set(oda)
    assert oda["class_names"] == ["0", "1", "2", "3", "4", "5", "unknown"]
    with open(tmp_path / "runs" / "dance_optdigits-oda" / "seed0" / "metrics.jsonl") as handle:
        assert [json.loads(line)["iter"] for line in handle] == [3]  # SMOKE: 3 iterations


@pytest.mark.slow
def test_run_openset_falls_back_to_the_embedded_splits(tmp_path):
    proc = run_suite(tmp_path)
    assert "Running the embedded optdigits -> optdigits-M splits" in proc.stdout
    assert "| method | optdigits-oda | optdigits-pda |" in proc.stdout
    pda = results(tmp_path, "dance_optdigits-pda")
    assert pda["metric"] == "acc" and {"target_shared_class_acc", "target_acc_with_rejection"} <= set(pda)
    assert pda["class_names"] == [str(c) for c in range(10)]


@pytest.mark.slow
def test_run_openset_office31_smoke_open_partial_dance(tmp_path):
    """DANCE on Office-31 A -> W open-partial (3-iteration ResNet-18, tiny JPEG tree): file domains split by class."""
    from tests.test_datasets_office import make_office31_tree

    tree = make_office31_tree(tmp_path / "office31")
    proc = run_suite(tmp_path, TASKS="a2w-opda", DATA_ROOT=str(tree))
    assert "| method | a2w-opda |" in proc.stdout
    opda = results(tmp_path, "dance_a2w-opda")
    assert opda["metric"] == "hscore" and len(opda["class_names"]) == 21 and opda["class_names"][-1] == "unknown"
    # the 10 source-private classes are absent from the target: NaN in the per-class list
    assert sum(v != v for v in opda["target_per_class"]) == 10


def test_eval_report_names_the_h_score():
    from eval import format_report

    report = {"metric": "hscore", "score": 0.5541, "config": "dance_optdigits-oda", "iter": 1000, "target": "optdigits_m",
              "n": 225, "per_class": {"0": 0.75, "unknown": 0.5222}}
    text = format_report(report)
    assert "H-score 55.41%" in text.splitlines()[0] and "| **H-score** | **55.41** |" in text
