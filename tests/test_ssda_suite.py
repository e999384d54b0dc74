"""scripts/run_ssda.sh in smoke mode on the embedded task (PAC: both phases shortened), and the SSDA tables
of tools/make_table.py (task names with underscores, the checkpoint chosen on the target val split, the
published MME numbers)."""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT
from tools import make_table


def smoke_suite(tmp_path, method):
    env = {**os.environ, "PYTHON": sys.executable, "SMOKE": "1", "RUNS": str(tmp_path / "runs"), "SEEDS": "0",
           "METHODS": method, "TASKS": "optdigits_3shot"}
    proc = subprocess.run(["bash", "scripts/run_ssda.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "| method | optdigits_3shot |" in proc.stdout and f"| {method} | " in proc.stdout
    assert "labelled target validation split" in proc.stdout
    run = tmp_path / "runs" / f"{method}_optdigits_3shot" / "seed0"
    split = json.loads((run / "few_shot_split.json").read_text())
    assert split["labeled_per_class"] == 3 and len(split["labeled"]) == 30 and len(split["val"]) == 30
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("target_val_acc" in r for r in records)
    results = json.loads((run / "results.json").read_text())
    chosen = results["selected_by_target_val"]
    assert chosen["target_val_acc"] == max(r["target_val_acc"] for r in records)
    return records


def test_ssda_smoke_suite_runs_both_pac_phases_with_split_and_val_selection(tmp_path):
    records = smoke_suite(tmp_path, "pac")
    assert [r["phase"] for r in records] == ["rot_pretrain", "train"]  # 3 iterations each in smoke mode


def test_table_splits_shot_tasks_and_shows_val_selection(tmp_path):
    for method, acc, val_acc in (("source_only", 0.5, 0.6), ("mme", 0.7, 0.65)):
        run = tmp_path / f"{method}_w2a_3shot" / "seed0"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({
            "metric": "acc", "target_acc": acc, "selected_by_target_val": {"phase": "train", "iter": 5,
                                                                          "target_val_acc": 0.9,
                                                                          "target_acc": val_acc}}))
    text = make_table.main([str(tmp_path), "--suite", "ssda", "--tasks", "w2a_3shot", "--methods", "source_only",
                            "mme"])
    final, selected = text.split("labelled target validation split")
    assert "| mme | 70.0 |" in final and "| source_only | 50.0 |" in final
    assert "| mme | 65.0 |" in selected and "| source_only | 60.0 |" in selected
