"""tools/validator_study.py on synthetic run directories whose rankings, gaps and EnsV scores are known by hand."""
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import ROOT
from tools import validator_study as vs

# target accuracy per eval point (iters 100, 200, 300) of each (method, seed)
ACCS = {("source_only", 0): [0.50, 0.60, 0.55], ("source_only", 1): [0.52, 0.58, 0.57],
        ("dann", 0): [0.62, 0.70, 0.66], ("dann", 1): [0.61, 0.74, 0.69]}


def write_run(run_dir, method, seed, records, source=("optdigits", None), target=("optdigits_m", None),
              regularizers=(), finished=True, probs=None):
    """A run dir as train.py writes it; ``records`` = [(phase, iter, target_acc, {validator: score})]."""
    run_dir.mkdir(parents=True)
    cfg = {"data": {"source": {"name": source[0], "domain": source[1]}, "target": {"name": target[0], "domain": target[1]}},
           "method": {"name": method}, "regularizers": [{"name": r, "weight": 1.0} for r in regularizers],
           "train": {"seed": seed}, "name": f"{method}_x"}
    (run_dir / "config.yaml").write_text("# config_hash: 0123abcd\n" + yaml.safe_dump(cfg))
    lines = [json.dumps({"phase": records[0][0], "iter": 50, "loss": 1.0})]   # a log record, not a candidate
    lines += [json.dumps({"phase": ph, "iter": it, "loss": 0.5, "target_acc": acc, "validators": scores})
              for ph, it, acc, scores in records]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if finished:
        (run_dir / "results.json").write_text(json.dumps({"metric": "acc", "target_acc": records[-1][2]}))
    for (ph, it, _, _), p in zip(records, probs or []):
        (run_dir / "validation").mkdir(exist_ok=True)
        np.save(run_dir / "validation" / f"target_probs_{ph}_{it:06d}.npy", np.asarray(p, np.float32))


def scores_for(method, acc):
    return {"entropy": float(np.log(acc)) - 3.0,          # monotone in accuracy
            "bnm": -acc,                                  # anti-correlated
            "info_max": acc - (1.0 if method == "dann" else 0.0)}   # right within a run, wrong across methods


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    for (method, seed), accs in ACCS.items():
        write_run(root / f"{method}_optdigits" / f"seed{seed}", method, seed,
                  [("train", 100 * (i + 1), acc, scores_for(method, acc)) for i, acc in enumerate(accs)])
    write_run(root / "dann_optdigits" / "seed2", "dann", 2, [("train", 100, 0.99, scores_for("dann", 0.99))],
              finished=False)   # unfinished: ignored
    return root


def test_known_rankings_and_gaps(runs_root):
    notes = []
    runs = vs.find_runs(str(runs_root), notes)
    assert len(runs) == 4 and any("seed2: skipped, unfinished" in n for n in notes)
    rows = vs.study(runs)["optdigits->optdigits_m"]
    mono, anti, mixed, last = rows["entropy"], rows["bnm"], rows["info_max"], rows[vs.LAST]
    assert mono["spearman"] == pytest.approx(1.0) and mono["kendall"] == pytest.approx(1.0)
    assert mono["gap_checkpoints"] == pytest.approx(0.0) and mono["gap_methods"] == pytest.approx(0.0)
    assert anti["spearman"] == pytest.approx(-1.0) and anti["kendall"] == pytest.approx(-1.0)
    # per run best - worst: 0.10, 0.06, 0.08, 0.13; per seed over both methods: 0.70-0.50, 0.74-0.52
    assert anti["gap_checkpoints"] == pytest.approx(0.0925)
    assert anti["gap_methods"] == pytest.approx(0.21)
    # picks the best checkpoint of each run but prefers source-only: seed 0 0.70-0.60, seed 1 0.74-0.58
    assert mixed["gap_checkpoints"] == pytest.approx(0.0) and mixed["gap_methods"] == pytest.approx(0.13)
    # final checkpoint: 0.60-0.55, 0.58-0.57, 0.70-0.66, 0.74-0.69
    assert last["gap_checkpoints"] == pytest.approx(0.0375) and mono["n"] == 12 and last["n"] == 4


def test_spearman_and_kendall_by_hand(tmp_path):
    # score ranks 2 1 4 3 against accuracy ranks 1 2 3 4: sum d^2 = 4 -> rho = 1 - 6*4/(4*15) = 0.6;
    # 4 concordant and 2 discordant pairs -> tau = 2/6
    write_run(tmp_path / "r", "dann", 0, [("train", i, acc, {"snd": s}) for i, (acc, s) in
                                          enumerate(zip([0.1, 0.2, 0.3, 0.4], [2.0, 1.0, 4.0, 3.0]))])
    write_run(tmp_path / "unscored", "mcc", 0, [("train", 1, 0.9, {})])   # no snd score: not in snd's pool
    row = vs.study(vs.find_runs(str(tmp_path), []))["optdigits->optdigits_m"]["snd"]
    assert row["spearman"] == pytest.approx(0.6) and row["kendall"] == pytest.approx(1 / 3)
    assert row["gap_checkpoints"] == pytest.approx(0.1) and row["gap_methods"] == pytest.approx(0.1)
    assert row["n"] == 4


def test_resumed_duplicates_multi_phase_and_method_labels(tmp_path):
    root = tmp_path / "runs"
    records = [("pretrain", 100, 0.40, {"bnm": 3.0}), ("pretrain", 200, 0.45, {"bnm": 2.0}),
               ("adapt", 100, 0.60, {"bnm": 1.0}), ("adapt", 100, 0.65, {"bnm": 0.5}),   # resumed: the last wins
               ("adapt", 200, 0.70, {"bnm": 0.0})]
    write_run(root / "adda", "adda", 0, records, regularizers=("ocr",))
    (run,) = vs.find_runs(str(root), [])
    assert run["method"] == "adda+ocr"
    assert [(c["phase"], c["iter"], c["target_acc"]) for c in run["candidates"]] == [
        ("pretrain", 100, 0.40), ("pretrain", 200, 0.45), ("adapt", 100, 0.65), ("adapt", 200, 0.70)]
    row = vs.study([run])["optdigits->optdigits_m"]["bnm"]
    assert row["spearman"] == pytest.approx(-1.0) and row["gap_checkpoints"] == pytest.approx(0.30)


def test_ens_agreement_from_probs_files(tmp_path):
    a = np.eye(2)[[0, 0, 1, 1]] * 0.9 + 0.05
    b = np.eye(2)[[0, 1, 1, 1]] * 0.9 + 0.05
    c = np.array([[0.6, 0.4], [0.6, 0.4], [0.4, 0.6], [0.6, 0.4]])   # ensemble argmax: 0 0 1 1
    root = tmp_path / "runs"
    write_run(root / "r0", "dann", 0, [("train", 1, 0.9, {}), ("train", 2, 0.7, {})], probs=[a, b])
    write_run(root / "r1", "mcc", 0, [("train", 1, 0.6, {})], probs=[c])
    write_run(root / "other", "dann", 0, [("train", 1, 0.5, {})], target=("office31", "webcam"))   # no probs
    notes = []
    runs = vs.find_runs(str(root), notes)
    vs.add_ens_agreement(runs, notes)
    scores = {r["dir"][-2:]: [c["validators"].get("ens_agreement") for c in r["candidates"]] for r in runs}
    assert scores == {"r0": [1.0, 0.75], "r1": [0.75], "er": [None]}
    assert any(n.startswith("optdigits->webcam: no ens_agreement, 1 of 1 target_probs files missing") for n in notes)
    per_task = vs.study(runs)
    assert per_task["optdigits->optdigits_m"]["ens_agreement"]["gap_methods"] == pytest.approx(0.0)


def run_cli(*args):
    return subprocess.run([sys.executable, "tools/validator_study.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_table_and_plots(runs_root, tmp_path):
    write_run(runs_root / "dann_amazon" / "seed0", "dann", 0, [("train", 100, 0.3, scores_for("dann", 0.3)),
                                                               ("train", 200, 0.4, scores_for("dann", 0.4))],
              source=("office31", "amazon"), target=("office31", "webcam"))
    out = tmp_path / "study"
    proc = run_cli(runs_root, "--out", out)
    assert proc.returncode == 0, proc.stderr
    text = (out / "validator_study.md").read_text()
    assert text.strip() == proc.stdout.strip()
    assert "## optdigits->optdigits_m" in text and "## amazon->webcam" in text and "## Mean over tasks" in text
    assert "| entropy | 1.000 | 1.000 | 0.00 | 0.00 | 14 |" in text   # both tasks perfectly ranked
    assert "| bnm | -1.000 | -1.000 | 0.00 | 0.00 | 2 |" not in text   # per-task gaps are real numbers:
    assert "| bnm | -1.000 | -1.000 | 10.00 | 10.00 | 2 |" in text      # amazon->webcam: 0.4 - 0.3
    assert "unfinished (no results.json)" in text
    for name in ("entropy", "bnm", "info_max"):
        with Image.open(out / f"scatter_{name}.png") as img:
            rgb = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(int)
            assert img.size[0] >= 600 and img.size[1] >= 300
        # coloured pixels of both methods (tab10 blue: dann, orange: source_only), more than the legend's two dots
        colour = rgb[rgb.max(axis=1) - rgb.min(axis=1) > 60]
        assert (colour[:, 2] > colour[:, 0] + 40).sum() > 150 and (colour[:, 0] > colour[:, 2] + 40).sum() > 150, name
    assert not (out / "scatter_ens_agreement.png").exists()   # no probs files: no EnsV scores
    assert run_cli(runs_root, "--out", tmp_path / "np", "--no-plots").returncode == 0
    assert not list((tmp_path / "np").glob("*.png"))


@pytest.mark.parametrize("case", ["missing", "empty", "unfinished_only"])
def test_cli_errors_are_one_line(tmp_path, case):
    root = tmp_path / "runs"
    if case != "missing":
        root.mkdir()
    if case == "unfinished_only":
        write_run(root / "r", "dann", 0, [("train", 1, 0.5, {})], finished=False)
    proc = run_cli(root)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert {"missing": "is not a directory", "empty": "no finished runs",
            "unfinished_only": "skipped, unfinished"}[case] in lines[0]
