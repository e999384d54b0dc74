"""Scaling out: msrun data parallel, gradient accumulation, mixed precision, the launch script.

The equalities tested are exact up to float rounding: a global batch of 32 per domain reads the
same 32 images whether it is one batch, two msrun ranks of 16 (BatchStream shards one epoch
permutation: shard 0 gets images [32k, 32k+16), shard 1 [32k+16, 32k+32)) or two accumulated
micro-batches of 16 (virtual shards, the same slices), and DANN's loss is a batch mean with no
BatchNorm in LeNet or the discriminator, so the mean of the half-batch gradients is the
full-batch gradient.
"""
import json
import os
import socket
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from engine import checkpoint
from engine.config import load_config
from engine.distributed import DistributedError, init_distributed
from engine.runtime import resolve_amp_level, seed_everything
from engine.trainer import Trainer, TrainingDiverged, build_method
from tests.conftest import ROOT, quick_opts, run_script

DANN = "configs/digits/dann_optdigits.yaml"
SCRIPT = os.path.join(ROOT, "scripts", "run_distributed.sh")
ITERS = 6
RUN_FILES = {"config.yaml", "last.ckpt", "metrics.jsonl", "results.json", "train.log", "validation"}


def opts(run_dir, *extra, iters=ITERS, every=3):
    return quick_opts(run_dir, iters=iters, every=every) + list(extra)


def fit(run_dir, *extra, iters=ITERS, every=3, resume=False):
    """One in-process run, seeded as train.py seeds it (same initial weights in every run)."""
    cfg = load_config(os.path.join(ROOT, DANN), opts(run_dir, *extra, iters=iters, every=every))
    seed_everything(cfg.train.seed)
    return Trainer(cfg, run_dir, resume=resume, show_progress=False).fit()


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def weights(run_dir):
    data = ms.load_checkpoint(os.path.join(run_dir, "last.ckpt"))
    return {k: v.asnumpy() for k, v in data.items() if k.startswith(("model.", "adversary."))}


def assert_same_training(run_a, run_b, atol=1e-5, keys=("loss", "cls", "transfer", "d_acc", "acc_s")):
    """Same logged losses (to 1e-4) and the same final weights (to ``atol``)."""
    rec_a, rec_b = metrics(run_a), metrics(run_b)
    assert [r["iter"] for r in rec_a] == [r["iter"] for r in rec_b]
    for a, b in zip(rec_a, rec_b):
        for key in keys:
            assert abs(a[key] - b[key]) < 1e-4, (key, a, b)
    w_a, w_b = weights(run_a), weights(run_b)
    assert w_a.keys() == w_b.keys()
    for key in w_a:
        np.testing.assert_allclose(w_b[key], w_a[key], rtol=0, atol=atol, err_msg=key)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(*args, env=None, timeout=60):
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, env=full_env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def global_batch_32(tmp_path_factory):
    """1 process, data.batch_size=32: the reference for the 2-card and the accumulated runs."""
    run_dir = str(tmp_path_factory.mktemp("b32") / "run")
    fit(run_dir, "data.batch_size=32")
    return run_dir


# --------------------------------------------------------------------------- data parallel
def test_msrun_two_ranks_equal_one_process_with_the_global_batch(global_batch_32, tmp_path):
    run_dir, log_dir = str(tmp_path / "run"), str(tmp_path / "msrun_logs")
    proc = launch("2", DANN, "--device", "CPU", "--no-progress", "--opt", *opts(run_dir, "data.batch_size=16"),
                  env={"MASTER_PORT": str(free_port()), "LOG_DIR": log_dir}, timeout=420)
    logs = {name: open(os.path.join(log_dir, name)).read()[-3000:] for name in os.listdir(log_dir)} \
        if os.path.isdir(log_dir) else {}
    assert proc.returncode == 0, (proc.stderr[-2000:], logs)
    # only rank 0 wrote the run dir; the workers' own output went to the msrun log dir
    assert set(os.listdir(run_dir)) == RUN_FILES
    assert {"worker_0.log", "worker_1.log"} <= set(os.listdir(log_dir))
    assert "target accuracy" in logs["worker_0.log"] and "target accuracy" not in logs["worker_1.log"]
    # 2 ranks x 16 with a mean all-reduce == 1 process x 32 (logged numbers are global-batch means too)
    assert_same_training(global_batch_32, run_dir)
    with open(os.path.join(run_dir, "results.json")) as a, open(os.path.join(global_batch_32, "results.json")) as b:
        assert json.load(a)["target_acc"] == json.load(b)["target_acc"]


def test_init_distributed_needs_a_launcher(monkeypatch):
    for key in ("MS_ROLE", "RANK_TABLE_FILE", "OMPI_COMM_WORLD_SIZE", "MS_WORKER_NUM"):
        monkeypatch.delenv(key, raising=False)
    assert init_distributed(False) == (0, 1)
    with pytest.raises(DistributedError, match="scripts/run_distributed.sh"):
        init_distributed(True)
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    monkeypatch.setenv("MS_WORKER_NUM", "2")
    with pytest.raises(DistributedError, match="add --distribute"):
        init_distributed(False)


def test_train_py_distribute_without_launcher_is_one_line(tmp_path):
    env_keys = ("MS_ROLE", "RANK_TABLE_FILE", "OMPI_COMM_WORLD_SIZE")
    if any(os.environ.get(k) for k in env_keys):
        pytest.skip("running under a launcher")
    proc = run_script("train.py", "--config", DANN, "--device", "CPU", "--distribute", "--opt",
                      f"train.output_dir={tmp_path}/r", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-2000:]
    assert "needs a launcher" in lines[0] and "run_distributed.sh" in lines[0]
    assert not os.path.exists(tmp_path / "r")


# --------------------------------------------------------------------------- gradient accumulation
def test_grad_accum_equals_the_big_batch(global_batch_32, tmp_path):
    run_dir = str(tmp_path / "accum")
    fit(run_dir, "data.batch_size=16", "train.grad_accum=2")
    assert_same_training(global_batch_32, run_dir)


def test_grad_accum_and_amp_resume_exactly(tmp_path, monkeypatch):
    """A run stopped after its iteration-3 checkpoint and resumed equals the uninterrupted run."""
    extra = ("data.batch_size=16", "train.grad_accum=2", "train.amp_level=O2")
    full, stopped = str(tmp_path / "full"), str(tmp_path / "stopped")
    fit(full, *extra)

    class Stop(Exception):
        pass

    save = checkpoint.save

    def save_then_stop(path, *args, **meta):
        save(path, *args, **meta)
        if meta.get("iter") == 3 and not meta.get("finished"):
            raise Stop

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    with pytest.raises(Stop):
        fit(stopped, *extra)
    monkeypatch.setattr(checkpoint, "save", save)
    saved = ms.load_checkpoint(os.path.join(stopped, "last.ckpt"))
    assert float(saved["optim.gen.loss_scale.scale_value"].asnumpy()) == 1024.0
    fit(stopped, *extra, resume=True)
    assert_same_training(full, stopped, atol=1e-6)


# --------------------------------------------------------------------------- mixed precision
def test_amp_levels_resolve():
    assert resolve_amp_level("auto", "Ascend") == "O2"
    assert resolve_amp_level("auto", "GPU") == resolve_amp_level("auto", "CPU") == "O0"
    assert resolve_amp_level("O1", "CPU") == "O1"
    with pytest.raises(ValueError, match="train.amp_level must be one of auto, O0, O1, O2, O3; got 'O4'"):
        resolve_amp_level("O4", "CPU")


def test_o0_has_no_loss_scaler(global_batch_32):
    assert not any("overflow_steps" in r or "loss_scale" in r for r in metrics(global_batch_32))
    assert not any("loss_scale" in k for k in ms.load_checkpoint(os.path.join(global_batch_32, "last.ckpt")))


@pytest.mark.parametrize("level", [pytest.param("O1", marks=pytest.mark.slow), "O2"])  # O1: slow run
def test_amp_trains_close_to_fp32(level, global_batch_32, tmp_path):
    """fp16 Conv/Dense run on this CPU build, so O1/O2 are tested for real (fp16 rounding only)."""
    run_dir = str(tmp_path / level)
    fit(run_dir, "data.batch_size=32", f"train.amp_level={level}")
    recs = metrics(run_dir)
    assert all(r["overflow_steps"] == 0 and r["loss_scale"] == 1024.0 for r in recs)
    assert_same_training(global_batch_32, run_dir, atol=5e-3, keys=("loss", "cls", "transfer"))
    names = [name for name, _ in build_method(load_config(os.path.join(ROOT, DANN))).parameters_and_names()]
    assert set(weights(run_dir)) == {n for n in names if n.startswith(("model.", "adversary."))}


def test_overflowing_steps_are_skipped_not_diverged(tmp_path):
    """A loss scale of 1e30 overflows the fp16 gradients: every update is skipped, the scale halves."""
    run_dir = str(tmp_path / "overflow")
    cfg = load_config(os.path.join(ROOT, DANN), ["data.batch_size=32"])
    seed_everything(cfg.train.seed)
    initial = {n: p.asnumpy().copy() for n, p in build_method(cfg).parameters_and_names()}
    fit(run_dir, "data.batch_size=32", "train.amp_level=O2", "train.loss_scale=1e30", iters=3, every=3)
    (rec,) = metrics(run_dir)
    assert rec["overflow_steps"] == 3 and rec["loss_scale"] == pytest.approx(1e30 / 8, rel=1e-6)
    assert "loss" not in rec  # overflowed steps are not averaged into the logged losses
    for name, value in weights(run_dir).items():
        np.testing.assert_array_equal(value, initial[name], err_msg=name)


def test_overflow_every_step_is_a_divergence(tmp_path):
    with pytest.raises(TrainingDiverged, match="overflowed 22 updates in a row"):
        fit(str(tmp_path / "r"), "data.batch_size=16", "train.amp_level=O2", "train.loss_scale=2.0",
            "optim.lr=1e30", iters=40, every=40)


def test_bad_amp_and_accum_values(tmp_path):
    with pytest.raises(ValueError, match="train.grad_accum must be >= 1"):
        fit(str(tmp_path / "a"), "train.grad_accum=0")
    with pytest.raises(ValueError, match="train.amp_level must be one of"):
        fit(str(tmp_path / "b"), "train.amp_level=fp16")
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


# --------------------------------------------------------------------------- launch script
@pytest.fixture
def fake_msrun(tmp_path):
    """An msrun that only records that it was started."""
    marker = tmp_path / "launched"
    fake = tmp_path / "msrun"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    return str(fake), marker


@pytest.mark.parametrize("args, expected", [
    ([], "error: no card count given; usage: bash scripts/run_distributed.sh NUM_CARDS"),
    (["x", DANN], "error: NUM_CARDS must be a positive integer, got 'x'"),
    (["0", DANN], "error: NUM_CARDS must be a positive integer, got '0'"),
    (["-2", DANN], "error: NUM_CARDS must be a positive integer, got '-2'"),
    (["1.5", DANN], "error: NUM_CARDS must be a positive integer, got '1.5'"),
    (["2"], "error: no config given"),
    (["2", "configs/nope.yaml", "--opt", "train.seed=1"], "error: config file not found: configs/nope.yaml"),
    (["2", "--config", "nope.yaml", "--resume", "auto"], "error: config file not found: nope.yaml"),
    (["2", "--opt", "train.seed=1"], "error: no --config among the train.py arguments"),
])
def test_launch_argument_errors(args, expected, fake_msrun):
    msrun, marker = fake_msrun
    proc = launch(*args, env={"MSRUN": msrun})
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr  # one line
    assert proc.stderr.startswith(expected), proc.stderr
    assert not marker.exists(), "msrun was launched"


@pytest.mark.parametrize("env, expected", [
    ({"NODES": "3"}, "error: NUM_CARDS=8 is not a multiple of NODES=3; set LOCAL_CARDS"),
    ({"NODES": "2", "NODE_RANK": "2"}, "error: NODE_RANK must be 0..1, got '2'"),
    ({"MASTER_PORT": "http"}, "error: MASTER_PORT must be a port number"),
    ({"RANK_TABLE_FILE": "/nonexistent/hccl_8p.json"}, "error: RANK_TABLE_FILE not found"),
])
def test_launch_environment_errors(env, expected, fake_msrun):
    msrun, marker = fake_msrun
    proc = launch("8", DANN, env={"MSRUN": msrun, **env})
    assert proc.returncode != 0 and proc.stderr.startswith(expected), proc.stderr
    assert not marker.exists()


def test_launch_commands(tmp_path):
    """DRY_RUN=1 prints what would run: msrun on one node, on node 1 of 2, and the rank-table loop."""
    single = launch("2", "--config", DANN, "--resume", "auto", "--opt", "train.seed=1",
                    env={"DRY_RUN": "1", "MSRUN": "msrun"}).stdout.split()
    assert single[:9] == ["msrun", "--worker_num=2", "--local_worker_num=2", "--node_rank=0",
                          "--master_addr=127.0.0.1", "--master_port=8118", "--log_dir=runs/msrun_logs",
                          "--join=True", "--cluster_time_out=600"]
    assert single[10].endswith("train.py")
    assert single[11:] == ["--config", DANN, "--resume", "auto", "--opt", "train.seed=1", "--distribute"]

    node = launch("16", DANN, env={"DRY_RUN": "1", "MSRUN": "msrun", "NODES": "2", "NODE_RANK": "1",
                                   "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "9000"}).stdout.split()
    assert {"--worker_num=16", "--local_worker_num=8", "--node_rank=1", "--master_addr=10.0.0.1",
            "--master_port=9000"} <= set(node)
    assert node[-3:] == ["--config", DANN, "--distribute"]

    table = tmp_path / "hccl_4p.json"
    table.write_text("{}")
    lines = launch("4", DANN, "--distribute", env={"DRY_RUN": "1", "RANK_TABLE_FILE": str(table), "NODES": "2",
                                                   "NODE_RANK": "1"}).stdout.strip().splitlines()
    assert len(lines) == 2
    for i, line in enumerate(lines):
        assert f"RANK_ID={2 + i} DEVICE_ID={i} RANK_SIZE=4" in line and "msrun" not in line
        assert line.count("--distribute") == 1


@pytest.mark.slow  # 46 s here; the plain msrun equality test above covers the distributed step in the default run
def test_msrun_joint_phase_equals_one_process(tmp_path):
    """AdaptSegNet's joint phase (G's SGD and D's Adam from one gradient, each all-reduced by its own reducer)
    under msrun: 2 ranks x 8 scenes == 1 process x 16 (DigitScenes has no ignored pixels and the net no
    BatchNorm, so every loss is a mean over equally many terms per rank)."""
    seg = "configs/segmentation/adaptsegnet_digitscenes.yaml"
    one, two, log_dir = str(tmp_path / "one"), str(tmp_path / "two"), str(tmp_path / "logs")
    cfg = load_config(os.path.join(ROOT, seg), opts(one, "data.batch_size=16"))
    seed_everything(cfg.train.seed)
    Trainer(cfg, one, show_progress=False).fit()
    proc = launch("2", seg, "--device", "CPU", "--no-progress", "--opt", *opts(two, "data.batch_size=8"),
                  env={"MASTER_PORT": str(free_port()), "LOG_DIR": log_dir}, timeout=420)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for a, b in zip(metrics(one), metrics(two), strict=True):
        for key in ("loss", "seg", "adv", "d_loss", "d_acc", "pix_acc_s"):
            assert abs(a[key] - b[key]) < 1e-4, (key, a, b)
    w_one, w_two = (ms.load_checkpoint(os.path.join(d, "last.ckpt")) for d in (one, two))
    nets = [k for k in w_one if k.startswith(("model.", "discriminators."))]
    assert any(k.startswith("discriminators.") for k in nets) and nets == [k for k in w_two if k in nets]
    for key in nets:
        np.testing.assert_allclose(w_two[key].asnumpy(), w_one[key].asnumpy(), rtol=0, atol=1e-5, err_msg=key)
