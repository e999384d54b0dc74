"""tools/robustness.py: FGSM / PGD against the analytic worst case of a linear model, the normalisation
adjustment of eps and of the valid range, the corruption-error average, and the CLI's error line."""
import os
import subprocess
import sys

import numpy as np
import pytest

import engine  # noqa: F401  (runtime settings before MindSpore loads)
from mindspore import Parameter, Tensor, nn, ops

from datasets.transforms import build_transform
from tools.robustness import LinfAttack, corruption_summary, input_box, parse_fraction

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BinaryLinear(nn.Cell):
    """logits = [0, w . x + b]: the CE of label 1 falls as w . x grows, so the worst case lowers w . x."""

    def __init__(self, w, b):
        super().__init__()
        self.w = Parameter(Tensor(w.reshape(-1, 1)), name="w")
        self.b = Parameter(Tensor(np.float32(b)), name="b")

    def construct(self, x):
        score = ops.matmul(x.reshape(x.shape[0], -1), self.w) + self.b
        return ops.concat((ops.zeros_like(score), score), -1), score


@pytest.mark.parametrize("normalize", [pytest.param("none", marks=pytest.mark.slow), "symmetric"])
def test_pgd_and_fgsm_reach_the_analytic_worst_case_of_a_linear_model(normalize):
    rng = np.random.default_rng(0)
    shape = (6, 3, 4, 4)
    w = rng.normal(0, 1, int(np.prod(shape[1:]))).astype(np.float32)
    x01 = rng.uniform(0, 1, shape).astype(np.float32)
    x01[:, :, 0, 0] = 0.01  # near the box edges: the clip to [0, 1] must bind
    x01[:, :, 0, 1] = 0.99
    mean, std = ((0.0,) * 3, (1.0,) * 3) if normalize == "none" else ((0.5,) * 3, (0.5,) * 3)
    transform = build_transform("none", 4, 3, mean, std)
    lower, scale = input_box(transform, 3)
    np.testing.assert_allclose(scale, 1 / np.asarray(std), rtol=1e-6)
    np.testing.assert_allclose(lower, -np.asarray(mean) / np.asarray(std), rtol=1e-6)
    # the model sees normalised inputs; in [0, 1] terms it is w . x01 (a rescaled w has the same sign pattern)
    model = BinaryLinear(w * np.repeat(std, 16).astype(np.float32), 0.3)
    x = np.transpose(transform(np.transpose(x01, (0, 2, 3, 1)), None), (0, 3, 1, 2))
    y = np.ones(shape[0], np.int32)
    eps = 8 / 255
    worst01 = np.clip(x01 - eps * np.sign(w).reshape(shape[1:]), 0.0, 1.0)  # analytic minimiser of w . x in the box
    noise = rng.uniform(-1, 1, shape).astype(np.float32)
    for attack, start in ((LinfAttack(model, eps, 2 / 255, 10, lower, scale), noise),
                          (LinfAttack(model, eps, eps, 1, lower, scale), np.zeros_like(noise))):
        _, x_adv = attack(Tensor(x), Tensor(y), Tensor(start))
        adv01 = x_adv.asnumpy() * np.asarray(std).reshape(1, 3, 1, 1) + np.asarray(mean).reshape(1, 3, 1, 1)
        np.testing.assert_allclose(adv01, worst01, atol=1e-5)
        assert np.abs(adv01 - x01).max() <= eps + 1e-5


def test_pgd_steps_are_bounded_by_the_step_size():
    """3 steps of 1/255 cannot reach the 8/255 corner: PGD (no random start) stops at x - 3/255 sign(w)."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, 12).astype(np.float32)
    x = rng.uniform(0.2, 0.8, (2, 3, 2, 2)).astype(np.float32)
    attack = LinfAttack(BinaryLinear(w, 0.0), 8 / 255, 1 / 255, 3, np.zeros(3), np.ones(3))
    _, x_adv = attack(Tensor(x), Tensor(np.ones(2, np.int32)), Tensor(np.zeros_like(x)))
    np.testing.assert_allclose(x_adv.asnumpy(), x - 3 / 255 * np.sign(w).reshape(1, 3, 2, 2), atol=1e-6)


def test_corruption_error_is_the_mean_over_corruptions_and_severities():
    errors = {"noise-1": 0.1, "noise-2": 0.3, "blur-1": 0.2, "blur-2": 0.6}
    mean, per = corruption_summary(errors)
    assert mean == pytest.approx(0.3)
    assert per == pytest.approx({"noise": 0.2, "blur": 0.4})
    assert parse_fraction("8/255") == pytest.approx(8 / 255)


def test_robustness_cli_missing_checkpoint_is_one_line(tmp_path):
    cfg = os.path.join(ROOT, "configs", "tta", "source_only_optdigits_c.yaml")
    proc = subprocess.run([sys.executable, "tools/robustness.py", "--config", cfg, "--ckpt",
                           str(tmp_path / "x.ckpt")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: checkpoint not found: {tmp_path / 'x.ckpt'}"]
