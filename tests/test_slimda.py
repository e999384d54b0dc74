"""SlimDA (issue #13): SEED and UPEM against NumPy, the method's per-width terms, OSTC gradient routing, host-drawn
width sampling, select_width's rules and CLI errors, and the suite end to end in smoke mode (which trains the
slimda optdigits config for a few iterations and runs tools/select_width.py on it)."""
import json
import os
import subprocess
import sys

import engine  # noqa: F401  (runtime settings before MindSpore loads)
import mindspore as ms
import numpy as np
import pytest
from mindspore import ParameterTuple, Tensor, nn, ops
from scipy.special import log_softmax as np_log_softmax, softmax as np_softmax

from engine.config import build_config
from engine.trainer import build_method
from losses.slimda import SlimDAHead, WidthView, sample_width_indices, seed_teacher, soft_cross_entropy
from losses.symnets import classifier_loss, feature_loss
from tests.conftest import ROOT, run_script
from tools.select_width import correlations, select_under_budget, upem

K, N = 3, 4
WIDTHS = (1.0, 0.75, 0.5, 0.35, 0.25, 0.125)


# --------------------------------------------------------------------------- NumPy references (loops, per sample)
def np_seed_teacher(probs, temperature):
    """probs (M, N, K): per sample, models weighted by their max-probability share, then sharpened."""
    m, n, k = probs.shape
    out = np.zeros((n, k))
    for i in range(n):
        conf = [max(probs[j, i]) for j in range(m)]
        mix = sum(conf[j] / sum(conf) * probs[j, i] for j in range(m))
        powered = [mix[c] ** (1.0 / temperature) for c in range(k)]
        out[i] = np.array(powered) / sum(powered)
    return out


def np_soft_ce(logits, target):
    return float(np.mean([-(t * np_log_softmax(z)).sum() for z, t in zip(logits, target)]))


class SeedCell(nn.Cell):
    def construct(self, probs, logits):
        teacher = seed_teacher(probs, 0.5)
        return teacher, soft_cross_entropy(logits, teacher)


def test_seed_teacher_and_distillation_loss_match_numpy(mode):
    rng = np.random.default_rng(0)
    probs = np_softmax(rng.normal(0, 2, (4, N, K)), axis=2)
    logits = rng.normal(0, 1, (N, K))
    teacher, loss = SeedCell()(Tensor(probs, ms.float32), Tensor(logits, ms.float32))
    expected = np_seed_teacher(probs, 0.5)
    np.testing.assert_allclose(teacher.asnumpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss.asnumpy()), np_soft_ce(logits, expected), rtol=1e-5)
    # a constructed case: two one-hot models outvote a flat one, and sharpening squares then renormalises
    flat = np.full(K, 1.0 / K)
    case = np.stack([np.eye(K)[[0]], np.eye(K)[[0]], flat[None]])
    teacher, _ = SeedCell()(Tensor(case, ms.float32), Tensor(np.zeros((1, K)), ms.float32))
    mix = (np.eye(K)[0] * 2 + flat / K) / (2 + 1.0 / K)
    np.testing.assert_allclose(teacher.asnumpy()[0], mix ** 2 / (mix ** 2).sum(), rtol=1e-5)


# --------------------------------------------------------------------------- the method
def make_config(deploy="ca", random_widths=2):
    return build_config({
        "data": {"image_size": 16, "batch_size": N},
        "model": {"backbone": "slim_lenet", "head": "slimda", "num_classes": K, "backbone_kwargs": {"feature_dim": 16}},
        "method": {"name": "slimda", "random_widths": random_widths, "deploy": deploy, "seed_weight": 1.0},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9}, "train": {"iters": 10, "seed": 0}})


def make_batch(indices, seed=0):
    rng = np.random.default_rng(seed)
    return ms.mutable({"x_s": Tensor(rng.normal(size=(N, 3, 16, 16)).astype(np.float32)),
                       "y_s": Tensor(rng.integers(0, K, N).astype(np.int32)),
                       "x_t": Tensor((rng.normal(size=(N, 3, 16, 16)) * 1.5 + 0.5).astype(np.float32)),
                       "width_indices": Tensor(np.asarray(indices, np.int32))})


@pytest.fixture(scope="module")
def method():
    method = build_method(make_config())
    method.set_train(True)
    return method


INDICES = (0, 5, 2, 4)  # widths 1.0, 0.125, 0.5, 0.25


def test_terms_are_sums_over_the_sampled_widths_and_seed_distils_ct_into_ca(method):
    """The method's totals against a width-by-width recomputation (slim_lenet has no BatchNorm: passes commute)."""
    batch, t = make_batch(INDICES), Tensor(0.3, ms.float32)
    aux = dict(zip(method.log_keys, method(batch, t)[1]))
    model, head = method.model, method.model.head
    w_ct = head.fc.weight.asnumpy().astype(np.float64), head.fc.bias.asnumpy().astype(np.float64)
    w_a = head.fc_a.weight.asnumpy().astype(np.float64), head.fc_a.bias.asnumpy().astype(np.float64)
    lam = 2.0 / (1.0 + np.exp(-10 * 0.3)) - 1.0
    cls, feat, probs, ca_logits = 0.0, 0.0, [], []
    for index in INDICES:
        f_s, f_t = (model.backbone(batch[key], Tensor(index, ms.int32)).asnumpy().astype(np.float64)
                    for key in ("x_s", "x_t"))
        z_s, z_t = f_s @ w_ct[0].T + w_ct[1], f_t @ w_ct[0].T + w_ct[1]
        cls += float(classifier_loss(Tensor(z_s, ms.float32), Tensor(z_t, ms.float32), batch["y_s"], K)[0].asnumpy())
        feat += float(feature_loss(Tensor(z_s, ms.float32), Tensor(z_t, ms.float32), batch["y_s"], lam, K)[0]
                      .asnumpy())
        probs.append(np_softmax(z_t[:, K:], axis=1))
        ca_logits.append(f_t @ w_a[0].T + w_a[1])
    teacher = np_seed_teacher(np.stack(probs), 0.5)
    seed = sum(np_soft_ce(z, teacher) for z in ca_logits)
    np.testing.assert_allclose([float(aux[k].asnumpy()) for k in ("cls_loss", "feat_loss", "seed_loss")],
                               [cls, feat, seed], rtol=2e-4)
    np.testing.assert_allclose(float(aux["teacher_conf"].asnumpy()), teacher.max(1).mean(), rtol=1e-4)


def test_deployed_output_is_the_full_width_ca_or_ct():
    for deploy in ("ca", "ct"):
        model = build_method(make_config(deploy)).model
        model.set_train(False)
        x = Tensor(np.random.default_rng(1).normal(size=(N, 3, 16, 16)).astype(np.float32))
        scores, f = model(x)
        full = model.backbone(x, Tensor(0, ms.int32)).asnumpy()
        np.testing.assert_allclose(f.asnumpy(), full, rtol=1e-6)
        head = model.head
        expected = head.fc_a(f) if deploy == "ca" else head.logits(f)[:, K:]
        np.testing.assert_allclose(scores.asnumpy(), expected.asnumpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(head.deployed_linear()(f).asnumpy(), scores.asnumpy(), rtol=1e-6, atol=1e-6)
        view = WidthView(model, 5)  # the smallest width: only its first 2 of 16 features can be non-zero
        assert np.abs(view(x)[1].asnumpy()[:, 2:]).max() == 0.0
        view.set_width(0)
        np.testing.assert_allclose(view(x)[0].asnumpy(), scores.asnumpy(), rtol=1e-6, atol=1e-6)


class LossTerms(nn.Cell):
    """The method's three loss terms (before weighting) as separate outputs."""

    def __init__(self, method):
        super().__init__(auto_prefix=False)
        self.method = method
        self.index = [method.log_keys.index(k) for k in ("cls_loss", "feat_loss", "seed_loss")]

    def construct(self, batch, t):
        aux = self.method(batch, t)[1]
        return aux[self.index[0]], aux[self.index[1]], aux[self.index[2]]


def test_ostc_routing_each_loss_reaches_only_its_classifier(method):
    """Gradient of each term separately: C_a only from SEED, the 2K fc only from SymNets, the backbone from both."""
    batch, t = make_batch(INDICES, seed=2), Tensor(0.5, ms.float32)
    params = method.model.trainable_params()
    group = {p.name: ("ca" if ".fc_a." in p.name else "fc" if ".head.fc." in p.name else "backbone") for p in params}
    assert sorted(set(group.values())) == ["backbone", "ca", "fc"]
    # one compiled gradient, one-hot output sensitivities pick each term in turn
    grad_fn = ops.GradOperation(get_by_list=True, sens_param=True)(LossTerms(method), ParameterTuple(params))
    reaches = ({"fc"}, {"backbone"}, {"backbone", "ca"})  # cls_loss, feat_loss, seed_loss
    for term, groups in enumerate(reaches):
        sens = tuple(Tensor(float(term == j), ms.float32) for j in range(3))
        total = {g: 0.0 for g in ("backbone", "ca", "fc")}
        for param, grad in zip(params, grad_fn(batch, t, sens)):
            total[group[param.name]] += float(np.abs(grad.asnumpy()).sum())
        for g, size in total.items():
            assert (size > 0) == (g in groups), (term, g, size)
    # the classifier group holds the 2K fc and C_a, the feature group the backbone
    groups = method.param_groups(method.phases()[0])
    assert sorted(p.name for params, _ in groups["classifier"] for p in params) == [
        "model.head.fc.bias", "model.head.fc.weight", "model.head.fc_a.bias", "model.head.fc_a.weight"]


def test_host_drawn_widths_are_deterministic_sandwiches(method):
    draws = [method.host_random(np.random.default_rng([0, 7, it, 0]), N)["width_indices"] for it in range(200)]
    again = [method.host_random(np.random.default_rng([0, 7, it, 0]), N)["width_indices"] for it in range(200)]
    assert all(np.array_equal(a, b) for a, b in zip(draws, again))
    assert any(not np.array_equal(draws[0], d) for d in draws[1:])
    seen = set()
    for draw in draws:
        assert draw.dtype == np.int32 and draw.shape == (4,)
        assert (WIDTHS[draw[0]], WIDTHS[draw[1]]) == (1.0, 0.125)
        assert len(set(draw[2:])) == 2 and all(0.125 < WIDTHS[i] < 1.0 for i in draw[2:])
        seen.update(int(i) for i in draw[2:])
    assert seen == {1, 2, 3, 4}
    np.testing.assert_array_equal(sample_width_indices(np.random.default_rng(0), WIDTHS, 0), [0, 5])
    with pytest.raises(ValueError, match="random_widths=5 but the backbone has only 4 widths"):
        build_method(make_config(random_widths=5))


def test_slimda_refuses_a_plain_backbone_or_head():
    cfg = make_config()
    cfg.model.backbone, cfg.model.backbone_kwargs = "lenet", {}
    with pytest.raises(ValueError, match="needs a slimmable backbone"):
        build_method(cfg)
    cfg = make_config()
    cfg.model.head = "symnets"
    with pytest.raises(ValueError, match="needs model.head: slimda"):
        build_method(cfg)
    assert isinstance(build_method(make_config()).model.head, SlimDAHead)


# --------------------------------------------------------------------------- UPEM and width selection
def test_upem_is_mean_total_variation():
    rng = np.random.default_rng(3)
    p, q = np_softmax(rng.normal(size=(7, 5)), 1), np_softmax(rng.normal(size=(7, 5)), 1)
    # TV(p, q) = 1 - sum_k min(p_k, q_k) for distributions
    assert upem(p, q) == pytest.approx(float(np.mean([1.0 - np.minimum(a, b).sum() for a, b in zip(p, q)])))
    assert upem(p, p) == 0.0
    assert upem(np.eye(5)[[0, 1]], np.eye(5)[[2, 1]]) == pytest.approx(0.5)  # one of two samples disagrees fully


def test_budget_selection_and_correlations():
    rows = [{"width": 1.0, "mflops": 4.0, "upem": 0.0}, {"width": 0.5, "mflops": 1.3, "upem": 0.2},
            {"width": 0.35, "mflops": 0.8, "upem": 0.1}, {"width": 0.25, "mflops": 0.5, "upem": 0.1},
            {"width": 0.125, "mflops": 0.2, "upem": 0.4}]
    assert select_under_budget(rows, 5.0)["width"] == 1.0
    assert select_under_budget(rows, 2.0)["width"] == 0.25  # lowest UPEM fitting; tie at 0.1 -> fewer MFLOPs
    assert select_under_budget(rows, 0.3)["width"] == 0.125
    assert select_under_budget(rows, 0.1) is None
    upems, accs = [0.0, 0.1, 0.3, 0.6], [0.9, 0.85, 0.7, 0.2]
    pearson, spearman = correlations(upems, accs)
    assert spearman == pytest.approx(-1.0)
    assert pearson == pytest.approx(np.corrcoef(upems, accs)[0, 1])
    assert correlations([0.0, 0.1], [0.9, 0.8]) == (None, None)


def test_select_width_bad_input_is_one_line(tmp_path):
    for args, needle in (([str(tmp_path / "missing")], "not a run directory"),
                         ([str(tmp_path), "--budget-mflops", "-1"], "--budget-mflops takes positive numbers")):
        proc = run_script("tools/select_width.py", *args, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- suite, smoke mode (trains, selects)
def test_suite_smoke_end_to_end(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, SMOKE="1", TASKS="optdigits", SEEDS="0", WIDTHS="0.25", BASELINES="source_only",
               RUNS=str(tmp_path / "runs"),
               OPTS="train.iters=2 train.log_every=2 train.eval_every=2 train.ckpt_every=2", BUDGETS="0.6")
    proc = subprocess.run(["bash", "scripts/run_slimda.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = tmp_path / "runs"
    report = json.loads((runs / "slimda_optdigits/seed0/select_width.json").read_text())
    assert [r["width"] for r in report["widths"]] == sorted(WIDTHS, reverse=True)
    assert report["widths"][0]["upem"] == 0.0 and all(0.0 <= r["upem"] <= 1.0 for r in report["widths"])
    assert report["budgets"][0]["selected"]["mflops"] <= 0.6
    assert "width: 0.25" in (runs / "source_only_w0.25_optdigits/seed0/config.yaml").read_text()
    row = next(line for line in (runs / "table.md").read_text().splitlines() if line.startswith("| 0.25 |"))
    assert "—" not in row, row  # every column filled: cost, the baseline, SlimDA C_a / C_t, UPEM
    assert "UPEM selects width" in proc.stdout
