"""Label-free checkpoint selection in the trainer (issue #14): validator scores at eval points,
``best_<validator>.ckpt``, ``results.json``'s selection table, resume history, one-line errors."""
import glob
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from engine import validators as V
from engine.selection import read_history, resolve_validators
from tests.conftest import run_script, quick_opts
from tests.test_cli_errors import train as train_must_fail

CONFIG = "configs/digits/dann_optdigits.yaml"


def train_run(out_dir, select_by):
    run_script("train.py", "--config", CONFIG, "--no-progress", "--opt", *quick_opts(out_dir, iters=30, every=10),
               "data.source_val_fraction=0.1", "train.validator_samples=300", f"train.select_by={select_by}")
    with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        evals = [r for r in map(json.loads, handle) if "target_acc" in r]
    return results, evals


@pytest.fixture(scope="module")
def entropy_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("select") / "run")
    return (out,) + train_run(out, "entropy")


def test_every_validator_is_scored_and_listed(entropy_run):
    out, results, evals = entropy_run
    assert [r["iter"] for r in evals] == [10, 20, 30]
    for rec in evals:
        assert sorted(rec["validators"]) == sorted(V.ONLINE)
        probs = np.load(os.path.join(out, "validation", f"target_probs_train_{rec['iter']:06d}.npy"))
        assert probs.shape == (300, 10)
        # the saved probabilities are the ones the record was scored on
        assert V.entropy(probs) == pytest.approx(rec["validators"]["entropy"], abs=1e-5)
        assert V.bnm(probs) == pytest.approx(rec["validators"]["bnm"], abs=1e-5)
    assert sorted(results["selection"]) == sorted(V.ALL)
    for name in V.ONLINE:  # each pick is the argmax of the logged scores, with that point's target accuracy
        best = max(evals, key=lambda r: r["validators"][name])
        assert results["selection"][name]["iter"] == best["iter"]
        assert results["selection"][name]["target_acc"] == best["target_acc"]
    assert results["oracle_target_acc"] == max(r["target_acc"] for r in evals)


def test_best_checkpoint_holds_the_selected_weights(entropy_run):
    """Reload ``best_entropy.ckpt`` and score it again: the recorded best entropy and target accuracy come back."""
    out, results, evals = entropy_run
    from engine import checkpoint
    from engine.config import load_config
    from engine.data import build_data
    from engine.evaluators import evaluate, predict
    from engine.selection import evenly_spaced
    from engine.trainer import build_method

    best = max(evals, key=lambda r: r["validators"]["entropy"])
    assert results["select_by"] == "entropy" and results["selected_iter"] == best["iter"]
    assert results["selected_ckpt"] == "best_entropy.ckpt"
    cfg = load_config(os.path.join(out, "config.yaml"))
    method = build_method(cfg)
    assert checkpoint.load(os.path.join(out, "best_entropy.ckpt"), method)["iter"] == best["iter"]
    data = build_data(cfg, cfg.train.seed)
    target = data.target.domain
    probs = predict(method.model, target, data.eval_transform, 64, data.loader, evenly_spaced(len(target), 300))["probs"]
    assert V.entropy(probs) == pytest.approx(best["validators"]["entropy"], abs=1e-5)
    acc = evaluate(method.model, data.target_test, data.eval_transform, 64, data.loader)["score"]
    assert acc == pytest.approx(results["target_acc_selected"], abs=1e-9)


def test_ens_agreement_selects_after_training(tmp_path):
    out = str(tmp_path / "run")
    results, evals = train_run(out, "ens_agreement")
    probs = [np.load(os.path.join(out, "validation", f"target_probs_train_{r['iter']:06d}.npy")) for r in evals]
    vote = np.mean(probs, axis=0).argmax(1)
    agreement = [float((p.argmax(1) == vote).mean()) for p in probs]
    assert results["selected_iter"] == evals[int(np.argmax(agreement))]["iter"]
    assert os.path.isfile(os.path.join(out, "best_ens_agreement.ckpt"))
    assert not glob.glob(os.path.join(out, "validation", "candidate_*"))  # the other candidates are removed


def test_resume_history_keeps_only_records_up_to_the_checkpoint(tmp_path):
    rows = [{"phase": "pretrain", "iter": 10, "target_acc": 0.1},
            {"phase": "pretrain", "iter": 10, "loss": 1.0},  # a log record: not a candidate
            {"phase": "adapt", "iter": 10, "target_acc": 0.2},
            {"phase": "adapt", "iter": 20, "target_acc": 0.3},  # logged, then killed before its checkpoint
            {"phase": "adapt", "iter": 10, "target_acc": 0.25}]  # redone after an earlier resume: last wins
    with open(tmp_path / "metrics.jsonl", "w", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows) + '{"phase": "adapt", "it')  # cut by the kill
    history = read_history(str(tmp_path), "metrics.jsonl", ["pretrain", "adapt"], (1, 10))
    assert [(r["phase"], r["iter"], r["target_acc"]) for r in history] == [("pretrain", 10, 0.1), ("adapt", 10, 0.25)]


def test_validator_settings_that_cannot_work():
    cfg = SimpleNamespace(select_by="last", validators=None)
    assert resolve_validators(cfg, False, "classification") == (["entropy", "info_max", "bnm", "snd", "ens_agreement"],
                                                                 "last")
    assert resolve_validators(cfg, False, "segmentation") == ([], "last")
    assert resolve_validators(SimpleNamespace(select_by="source_val", validators=["bnm"]), True,
                              "classification") == (["bnm", "source_acc"], "source_acc")
    with pytest.raises(ValueError, match="segmentation run keeps"):
        resolve_validators(SimpleNamespace(select_by="entropy", validators=None), False, "segmentation")


@pytest.mark.parametrize("opts,expected", [
    (["train.select_by=entorpy"], "unknown validator 'entorpy' (did you mean 'entropy'?)"),
    (["train.select_by=dev"], "set data.source_val_fraction"),
])
def test_selection_errors_are_one_line(tmp_path, opts, expected):
    line = train_must_fail(tmp_path, CONFIG, *opts)
    assert expected in line, line


def test_best_checkpoint_is_rewritten_only_on_improvement(tmp_path, monkeypatch):
    from engine import selection

    saved = []
    monkeypatch.setattr(selection.checkpoint, "save", lambda path, net, **meta: saved.append((path, meta["iter"])))
    chooser = selection.Selection(["bnm"], "bnm", str(tmp_path), True, 100)
    chooser._probs = np.full((4, 2), 0.5, np.float32)
    for it, score in [(10, 0.3), (20, 0.5), (30, float("nan")), (40, 0.4), (50, 0.5)]:
        chooser.consider({"phase": "train", "iter": it, "validators": {"bnm": score}}, method=None)
    assert saved == [(str(tmp_path / "best_bnm.ckpt"), 10), (str(tmp_path / "best_bnm.ckpt"), 20)]
    chooser.restore([{"phase": "train", "iter": 30, "validators": {"bnm": 0.7}},
                     {"phase": "train", "iter": 40, "validators": {"bnm": float("nan")}}])
    assert chooser.best == (0.7, "train", 30)
