"""End-to-end: a short graph-mode run learns, eval.py reproduces it, a SIGKILLed run resumes exactly."""
import json
import os
import signal
import subprocess
import sys
import time

import mindspore as ms
import numpy as np

from engine.config import load_config
from engine.trainer import Trainer
from tests.conftest import ROOT, quick_opts, run_script

DANN = "configs/digits/dann_optdigits.yaml"


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def test_short_run_learns_and_eval_reproduces(tmp_path):
    run_dir = str(tmp_path / "run")
    cfg = load_config(os.path.join(ROOT, DANN), quick_opts(run_dir, iters=60, every=20) + ["optim.lr=0.05"])
    results = Trainer(cfg, run_dir, show_progress=False).fit()
    recs = metrics(run_dir)
    assert [r["iter"] for r in recs] == [20, 40, 60]
    assert recs[-1]["cls"] < recs[0]["cls"] - 0.2, recs
    assert {"transfer", "d_acc", "grl", "target_acc"} <= set(recs[-1])
    assert 0.0 <= results["target_acc"] <= 1.0 and len(results["target_per_class"]) == 10
    out = run_script("eval.py", "--config", f"{run_dir}/config.yaml", "--ckpt", f"{run_dir}/last.ckpt", "--json")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(report["target_acc"] - results["target_acc"]) < 1e-9
    assert report["n"] == 225 and report["iter"] == 60


def train_cmd(run_dir, *extra):
    return [sys.executable, "train.py", "--config", DANN, "--no-progress", "--opt",
            *quick_opts(run_dir, iters=120, every=20), *extra]


def final_params(run_dir):
    data = ms.load_checkpoint(os.path.join(run_dir, "last.ckpt"))
    return {k: v.asnumpy() for k, v in data.items() if k.startswith("model.") or k.startswith("adversary.")}


def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    subprocess.run(train_cmd(full), cwd=ROOT, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(train_cmd(killed), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        path = os.path.join(killed, "metrics.jsonl")
        if os.path.exists(path) and any(r["iter"] >= 40 for r in metrics(killed)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be killed; raise train.iters"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(killed, "results.json"))

    refused = run_script(*train_cmd(killed)[1:], check=False)
    assert refused.returncode != 0 and "--resume auto" in refused.stderr

    run_script(*train_cmd(killed, "--resume", "auto")[1:])
    with open(os.path.join(full, "results.json")) as a, open(os.path.join(killed, "results.json")) as b:
        res_full, res_killed = json.load(a), json.load(b)
    assert res_full["target_acc"] == res_killed["target_acc"]
    p_full, p_killed = final_params(full), final_params(killed)
    assert p_full.keys() == p_killed.keys()
    for key in p_full:
        np.testing.assert_allclose(p_killed[key], p_full[key], rtol=1e-5, atol=1e-6, err_msg=key)
