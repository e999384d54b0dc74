"""Bad input gets one clear line on stderr and a non-zero exit; nothing already written is lost."""
import os

import pytest

from tests.conftest import quick_opts, run_script

DANN = "configs/digits/dann_optdigits.yaml"


def error_line(proc):
    assert proc.returncode != 0, proc.stdout
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("opts, expected", [
    (["optim.lrr=0.1"], "unknown key 'optim.lrr'; did you mean 'optim.lr'"),
    (["model.backbone=lenett"], "unknown backbone 'lenett' (did you mean 'lenet'?); valid:"),
    (["data.target.name=mnistt"], "unknown dataset 'mnistt'"),
    (["method.name=dan"], "unknown method 'dan'"),
])
def test_config_errors(opts, expected, tmp_path):
    proc = run_script("train.py", "--config", DANN, "--opt", *opts, f"train.output_dir={tmp_path}/r", check=False)
    assert expected in error_line(proc)


def test_missing_config_and_base(tmp_path):
    assert "config file not found" in error_line(run_script("train.py", "--config", "nope.yaml", check=False))
    bad = tmp_path / "x.yaml"
    bad.write_text("_base_: ../_base_/missing.yaml\n")
    assert "_base_ file not found" in error_line(run_script("train.py", "--config", str(bad), check=False))


def test_checkpoint_errors_and_finished_run(tmp_path):
    run_dir = str(tmp_path / "run")
    run_script("train.py", "--config", DANN, "--no-progress", "--opt", *quick_opts(run_dir, iters=4, every=2))
    line = error_line(run_script("eval.py", "--config", f"{run_dir}/config.yaml", "--ckpt", f"{run_dir}/no.ckpt",
                                 check=False))
    assert "checkpoint not found" in line
    line = error_line(run_script("eval.py", "--config", f"{run_dir}/config.yaml", "--ckpt", f"{run_dir}/last.ckpt",
                                 "--opt", "method.disc_hidden=64", check=False))
    assert "does not fit this model" in line and "adversary.discriminator" in line and "(64, 100)" in line
    line = error_line(run_script("train.py", "--config", DANN, "--opt", *quick_opts(run_dir, iters=4, every=2),
                                 check=False))
    assert "already holds a finished run" in line


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    run_dir = str(tmp_path / "run")
    proc = run_script("train.py", "--config", DANN, "--no-progress", "--opt", *quick_opts(run_dir, iters=40, every=2),
                      "optim.lr=1e12", "optim.lr_schedule=constant", check=False)
    line = error_line(proc)
    assert "became NaN/Inf at train iteration" in line and "Lower optim.lr" in line
    if "last good checkpoint" in line:
        from engine import checkpoint
        import numpy as np

        data, meta = checkpoint.read(os.path.join(run_dir, "last.ckpt"))
        assert all(np.isfinite(v.asnumpy()).all() for v in data.values())
    assert not os.path.exists(os.path.join(run_dir, "results.json"))
