"""OCR, IIMT, CrossNorm/SelfNorm against NumPy references of the papers' formulas; finite-difference
gradients; a short graph-mode training run of each combined with DANN."""
import engine  # noqa: F401  (CPU runtime settings before MindSpore loads)

import json
import math
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

import losses.iimt  # noqa: F401  (registers "iimt")
import losses.ocr  # noqa: F401  (registers "ocr")
import models.cnsn  # noqa: F401
from engine import checkpoint
from engine.config import load_config
from engine.trainer import Trainer, build_method
from losses.iimt import IimtParams, MixupTraining, mean_squared_error, mix, sharpen, soft_cross_entropy
from losses.ocr import OcrParams, OrderPreservingConsistency, ocr_residual, residual_entropy
from models.cnsn import CrossNorm, SelfNorm, build_plugin, crossnorm
from models.lenet import LeNet
from tests.conftest import ROOT

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- NumPy references
def np_softmax(g):
    e = np.exp(g - g.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_entropy(g):
    p = np_softmax(g)
    return np.mean(-(p * np.log(p)).sum(-1))


def np_sharpen(p, T):  # noqa: N803
    return p ** (1 / T) / (p ** (1 / T)).sum(-1, keepdims=True)


def np_stats(x, eps=1e-5):
    return x.mean((2, 3), keepdims=True), np.sqrt(x.var((2, 3), keepdims=True) + eps)


def np_crossnorm(x, y, eps=1e-5):
    (mx, sx), (my, sy) = np_stats(x, eps), np_stats(y, eps)
    return (x - mx) / sx * sy + my


def np_soft_ce(g, y):
    return np.mean(-(y * np.log(np_softmax(g))).sum(-1))


def np_bce(z, y):
    return np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))


def central_diff(fn, x, h=1e-5):
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (fn(up) - fn(down)) / (2 * h)
    return grad


def f32(*shape):
    return RNG.normal(size=shape).astype(np.float32)


@pytest.fixture(params=["graph", "pynative"])
def run(request):
    """Runs a function jitted (GRAPH) or op by op (PYNATIVE)."""
    if request.param == "pynative":
        request.getfixturevalue("pynative")
        return lambda fn, *args: fn(*args)
    return lambda fn, *args: ms.jit(fn)(*args)


# --------------------------------------------------------------------------- plain functions
def test_plain_functions_match_numpy(run):
    z, z_aug, g, a, b = f32(4, 6), f32(4, 6), 3 * f32(4, 5), f32(4, 5), f32(4, 5)
    p = np_softmax(g).astype(np.float32)
    x, x2 = f32(3, 2, 5, 4) * 2 + 1, f32(3, 2, 3, 3) * 0.5 - 2
    lam = np.float32(0.3)

    def fns(z, z_aug, lam, g, p, a, b, x, x2):
        return (ocr_residual(z, z_aug, lam), residual_entropy(g), sharpen(p, 0.5), mix(a, b, lam),
                crossnorm(x, x2), soft_cross_entropy(g, p), mean_squared_error(a, b))

    got = [o.asnumpy() for o in run(fns, *map(Tensor, (z, z_aug, lam, g, p, a, b, x, x2)))]
    want = [(z_aug - 0.3 * z) / 0.7, np_entropy(g), np_sharpen(p, 0.5), 0.3 * a + 0.7 * b,
            np_crossnorm(x, x2), np_soft_ce(g, p), np.mean((a - b) ** 2)]
    for name, o, w in zip(("ocr_residual", "residual_entropy", "sharpen", "mix", "crossnorm", "soft_ce", "mse"),
                          got, want):
        np.testing.assert_allclose(o, w, rtol=2e-5, atol=2e-5, err_msg=name)
    # crossnorm output carries x2's statistics and x's normalised content
    mean, std = np_stats(got[4].astype(np.float64))
    np.testing.assert_allclose(mean, np_stats(x2)[0], atol=1e-5)
    np.testing.assert_allclose(std, np_stats(x2)[1], rtol=1e-4)


# --------------------------------------------------------------------------- gradients
def dense(w, b):
    cell = nn.Dense(w.shape[1], w.shape[0])
    cell.weight.set_data(Tensor(w))
    cell.bias.set_data(Tensor(b))
    return cell


def test_ocr_term_gradient_matches_finite_differences():
    z, z_aug, w, b = f32(4, 6), f32(4, 6), f32(5, 6), f32(5)
    lam = 0.35
    head = dense(w, b)

    def term(z, z_aug):
        return -residual_entropy(head(ocr_residual(z, z_aug, Tensor(np.float32(lam)))))

    gz, gz_aug = ms.grad(term, grad_position=(0, 1))(Tensor(z), Tensor(z_aug))
    z64, za64, w64, b64 = (v.astype(np.float64) for v in (z, z_aug, w, b))

    def np_term(z, za):
        return -np_entropy(((za - lam * z) / (1 - lam)) @ w64.T + b64)

    np.testing.assert_allclose(gz.asnumpy(), central_diff(lambda v: np_term(v, za64), z64), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(gz_aug.asnumpy(), central_diff(lambda v: np_term(z64, v), za64), rtol=1e-3, atol=1e-5)


def test_mixup_terms_gradient_matches_finite_differences():
    """soft CE on a source-dominant mix + MSE on a target-dominant mix + feature consistency."""
    x_s, x_t, v, w, b = f32(4, 6), f32(4, 6), f32(6, 5) * 0.5, f32(3, 5), f32(3)
    y_s = np.eye(3, dtype=np.float32)[[0, 2, 1, 2]]
    q_t = np_sharpen(np_softmax(f32(4, 3)), 0.5).astype(np.float32)
    l1, l2 = 0.8, 0.65
    head, v_t = dense(w, b), Tensor(v)

    def terms(x_s, x_t):
        def model(x):
            f = ops.tanh(ops.matmul(x, v_t))
            return head(f), f

        (g_st, f_st), (g_ts, _) = model(mix(x_s, x_t, l1)), model(mix(x_t, x_s, l2))
        _, f_s = model(x_s)
        _, f_t = model(x_t)
        return (soft_cross_entropy(g_st, mix(Tensor(y_s), Tensor(q_t), l1))
                + mean_squared_error(ops.softmax(g_ts, -1), mix(Tensor(q_t), Tensor(y_s), l2))
                + mean_squared_error(f_st, mix(f_s, f_t, l1)))

    gs, gt = ms.grad(terms, grad_position=(0, 1))(Tensor(x_s), Tensor(x_t))
    v64, w64, b64, y64, q64 = (a.astype(np.float64) for a in (v, w, b, y_s, q_t))

    def np_terms(xs, xt):
        def model(x):
            f = np.tanh(x @ v64)
            return f @ w64.T + b64, f

        (g_st, f_st), (g_ts, _) = model(l1 * xs + (1 - l1) * xt), model(l2 * xt + (1 - l2) * xs)
        return (np_soft_ce(g_st, l1 * y64 + (1 - l1) * q64)
                + np.mean((np_softmax(g_ts) - (l2 * q64 + (1 - l2) * y64)) ** 2)
                + np.mean((f_st - (l1 * model(xs)[1] + (1 - l1) * model(xt)[1])) ** 2))

    xs64, xt64 = x_s.astype(np.float64), x_t.astype(np.float64)
    np.testing.assert_allclose(gs.asnumpy(), central_diff(lambda a: np_terms(a, xt64), xs64), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(gt.asnumpy(), central_diff(lambda a: np_terms(xs64, a), xt64), rtol=1e-3, atol=1e-5)


# --------------------------------------------------------------------------- regularizers vs NumPy
class TinyModel(nn.Cell):
    """f = flatten(x) V, g = head(f): a linear stand-in for Classifier ``(logits, features)``."""

    def __init__(self, v, w, b):
        super().__init__()
        self.v = Parameter(Tensor(v), name="v")
        self.head = dense(w, b)

    def construct(self, x):
        f = ops.matmul(x.reshape(x.shape[0], -1), self.v)
        return self.head(f), f

    def numpy(self, x):
        f = x.reshape(len(x), -1).astype(np.float64) @ self.v.asnumpy()
        return f @ self.head.weight.asnumpy().T + self.head.bias.asnumpy(), f


class WithForward(nn.Cell):
    """The method's weak-view forward pass, then the regularizer, as in ``Method.construct``."""

    def __init__(self, reg, model):
        super().__init__()
        self.reg, self.model = reg, model

    def construct(self, batch, t):
        n = batch["x_s"].shape[0]
        g, f = self.model(ops.concat((batch["x_s"], batch["x_t"]), 0))
        return self.reg(self.model, batch, (g[:n], f[:n], g[n:], f[n:]), t)


def tiny_batch(n=4, views=2, classes=3):
    x = {k: f32(m * n, 1, 2, 2) for k, m in (("x_s", 1), ("x_t", 1), ("x_s_strong", views), ("x_t_strong", views))}
    x["y_s"] = RNG.integers(0, classes, n).astype(np.int32)
    return x


def run_reg(reg, batch, t):
    model = TinyModel(f32(4, 5), f32(3, 5), f32(3))
    loss, aux = WithForward(reg, model)(ms.mutable({k: Tensor(v) for k, v in batch.items()}), Tensor(np.float32(t)))
    return model, loss.asnumpy(), [a.asnumpy() for a in aux]


def test_ocr_regularizer_matches_numpy():
    reg = OrderPreservingConsistency(OcrParams(weight=0.3, on_target=True), num_classes=3, features_dim=5)
    assert reg.strong_views == 1 and reg.needs_target
    batch, t = tiny_batch(views=2), 0.4  # two views present (another regularizer asked): OCR uses the first
    model, loss, (ent, lam) = run_reg(reg, batch, t)
    lam_ref = 0.5 * (1 - (1 + 10 * t) ** -0.75)
    z = np.concatenate([model.numpy(batch["x_s"])[1], model.numpy(batch["x_t"])[1]])
    z_aug = np.concatenate([model.numpy(batch["x_s_strong"][:4])[1], model.numpy(batch["x_t_strong"][:4])[1]])
    w, b = model.head.weight.asnumpy(), model.head.bias.asnumpy()
    ent_ref = np_entropy(((z_aug - lam_ref * z) / (1 - lam_ref)) @ w.T + b)
    np.testing.assert_allclose([lam, ent, loss], [lam_ref, ent_ref, -0.3 * ent_ref], rtol=1e-4)
    assert not OrderPreservingConsistency(OcrParams(), 3, 5).needs_target


def test_iimt_regularizer_matches_numpy():
    params = IimtParams(weight=0.5, alpha=0.4, K=3, T=0.5, w_inter_src=1.0, w_inter_tgt=2.0, w_consistency=3.0,
                        w_intra_src=0.5, w_intra_tgt=1.5, w_adv=0.7, ramp=0.1, disc_hidden=8)
    reg = MixupTraining(params, num_classes=3, features_dim=5)
    assert reg.strong_views == 2
    batch = tiny_batch(views=2)
    draws = reg.host_random(np.random.default_rng(3), 4)
    assert draws["iimt_lam"].dtype == np.float32 and draws["iimt_perm_s"].dtype == np.int32
    assert (draws["iimt_lam"] >= 0.5).all() and sorted(draws["iimt_perm_t"]) == [0, 1, 2, 3]
    batch.update(draws)
    t = 0.03  # ramp = 0.3
    model, loss, aux = run_reg(reg, batch, t)

    lam, ps, pt = draws["iimt_lam"].astype(np.float64), draws["iimt_perm_s"], draws["iimt_perm_t"]
    x_s, x_t, x_v = batch["x_s"], batch["x_t"], batch["x_t_strong"]
    y = np.eye(3)[batch["y_s"]]
    g_t, f_t = model.numpy(x_t)
    _, f_s = model.numpy(x_s)
    p = (np_softmax(g_t) + np_softmax(model.numpy(x_v[:4])[0]) + np_softmax(model.numpy(x_v[4:])[0])) / 3
    q = np_sharpen(p, 0.5)
    g_st, f_st = model.numpy(lam[0] * x_s + (1 - lam[0]) * x_t)
    g_ts, f_ts = model.numpy(lam[1] * x_t + (1 - lam[1]) * x_s)
    g_ss, _ = model.numpy(lam[2] * x_s + (1 - lam[2]) * x_s[ps])
    g_tt, _ = model.numpy(lam[3] * x_t + (1 - lam[3]) * x_t[pt])
    f_mix = np.concatenate([f_st, f_ts])
    d = reg.adversary.discriminator(Tensor(f_mix.astype(np.float32))).asnumpy()
    ref = [np_soft_ce(g_st, lam[0] * y + (1 - lam[0]) * q),
           np.mean((np_softmax(g_ts) - (lam[1] * q + (1 - lam[1]) * y)) ** 2),
           np.mean((f_mix - np.concatenate([lam[0] * f_s + (1 - lam[0]) * f_t,
                                            lam[1] * f_t + (1 - lam[1]) * f_s])) ** 2),
           np_soft_ce(g_ss, lam[2] * y + (1 - lam[2]) * y[ps]),
           np.mean((np_softmax(g_tt) - (lam[3] * q + (1 - lam[3]) * q[pt])) ** 2),
           np_bce(d, np.concatenate([np.full(4, lam[0]), np.full(4, 1 - lam[1])]))]
    np.testing.assert_allclose(aux, ref, rtol=1e-4, atol=1e-7)
    w, r = (1.0, 2.0, 3.0, 0.5, 1.5, 0.7), 0.3
    total = w[0] * ref[0] + r * w[1] * ref[1] + w[2] * ref[2] + w[3] * ref[3] + r * w[4] * ref[4] + w[5] * ref[5]
    np.testing.assert_allclose(loss, 0.5 * total, rtol=1e-4)


def test_iimt_virtual_labels_carry_no_gradient(pynative):
    reg = MixupTraining(IimtParams(K=3, disc_hidden=8), num_classes=3, features_dim=5)
    batch = {**tiny_batch(views=2), **reg.host_random(np.random.default_rng(0), 4)}
    model = TinyModel(f32(4, 5), f32(3, 5), f32(3))
    tensors = {k: Tensor(v) for k, v in batch.items()}

    def loss_of(x_v):  # the K-1 strong target views only feed the stop-gradient virtual labels
        return WithForward(reg, model)({**tensors, "x_t_strong": x_v}, Tensor(np.float32(0.5)))[0]

    assert not ms.grad(loss_of)(tensors["x_t_strong"]).asnumpy().any()
    assert ms.grad(loss_of)(tensors["x_t_strong"]).shape == (8, 1, 2, 2)


def test_iimt_discriminator_is_trained_with_the_generator():
    cfg = load_config(os.path.join(ROOT, "configs/digits/dann_iimt_optdigits.yaml"))
    method = build_method(cfg)
    params = [p for ps, _ in method.param_groups(method.phases()[0])["gen"] for p in ps]
    ids = [id(p) for p in params]
    assert len(ids) == len(set(ids)) and len(params) == len(method.trainable_params())
    assert {id(p) for p in method.regularizers[0].adversary.trainable_params()} <= set(ids)


# --------------------------------------------------------------------------- CrossNorm / SelfNorm
def stats(y):
    return np.concatenate([y.mean((2, 3)), y.std((2, 3))], -1)  # (N, 2C)


class Twice(nn.Cell):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, x):
        return self.cell(x), self.cell(x)


def test_crossnorm_random_in_training_identity_in_eval():
    x = f32(6, 4, 5, 5) * RNG.uniform(0.5, 3, (6, 4, 1, 1)).astype(np.float32) + f32(6, 4, 1, 1)
    cn = CrossNorm(p=1.0, mode="2-instance")
    cn.set_train(True)
    first, second = cn(Tensor(x)).asnumpy(), cn(Tensor(x)).asnumpy()
    assert np.isfinite(first).all() and not np.allclose(first, second)
    for out in (first, second):  # every instance now has the (mean, std) of some instance of the batch
        dist = np.abs(stats(out)[:, None] - stats(x)[None]).max(-1)
        assert (dist.min(1) < 1e-3).all()
    twice = Twice(cn)  # a model called twice in one step (OCR, IIMT) draws anew each time
    first, second = (o.asnumpy() for o in twice(Tensor(x)))
    assert not np.allclose(first, second)
    one = CrossNorm(p=1.0, mode="1-instance")
    one.set_train(True)
    out = one(Tensor(x)).asnumpy()  # each instance's channel statistics are permuted among its channels
    key = lambda s: np.sort(s[:, :4] * 1e3 + s[:, 4:], -1)  # noqa: E731  (pairs (mean, std) per channel)
    np.testing.assert_allclose(key(stats(out)), key(stats(x)), atol=1e-2)
    cn.set_train(False)
    assert np.array_equal(cn(Tensor(x)).asnumpy(), x) and np.array_equal(cn(Tensor(x)).asnumpy(), x)
    half = CrossNorm(p=0.5)
    half.set_train(True)
    applied = sum(not np.array_equal(half(Tensor(x)).asnumpy(), x) for _ in range(40))
    assert 8 <= applied <= 32  # Binomial(40, 0.5): outside this range with probability < 1e-4
    never = CrossNorm(p=0.0)
    never.set_train(True)
    assert np.array_equal(never(Tensor(x)).asnumpy(), x)


@pytest.mark.parametrize("crop", ["content", "style", "both"])
def test_crossnorm_crops(crop):
    x = f32(8, 3, 8, 8)  # 8 instances: an identity permutation (a no-op with a full box) is rare
    cn = CrossNorm(p=1.0, crop=crop, crop_ratio_min=0.2)
    cn.set_train(True)
    boxes = [cn.random_box(7, 9, Tensor(u)).asnumpy()[0, 0] for u in RNG.random((20, 3), np.float32)]
    for box in boxes:  # an axis-aligned box covering at least crop_ratio_min of the map
        rows, cols = box.any(1), box.any(0)
        assert np.array_equal(box > 0, rows[:, None] & cols[None]) and box.mean() >= 0.2
    corners = {(np.flatnonzero(box.any(1))[0], np.flatnonzero(box.any(0))[0]) for box in boxes}
    assert len({box.tobytes() for box in boxes}) > 1 and len(corners) > 1  # random sizes and places
    partial = []
    for _ in range(4):
        out = cn(Tensor(x)).asnumpy()
        assert out.shape == x.shape and np.isfinite(out).all() and not np.allclose(out, x)
        if crop != "style":  # only a box (>= 20 % of the map) is restyled
            changed = np.abs(out - x).max((0, 1)) > 1e-6
            rows, cols = changed.any(1), changed.any(0)
            assert np.array_equal(changed, rows[:, None] & cols[None]) and changed.mean() >= 0.2
            assert np.all(np.diff(np.flatnonzero(rows)) == 1) and np.all(np.diff(np.flatnonzero(cols)) == 1)
            partial.append(not changed.all())
    assert crop == "style" or any(partial)  # a box smaller than the map (P(4 full boxes) < 1e-4)


def test_selfnorm_matches_numpy_and_is_deterministic_in_eval():
    x = f32(5, 6, 4, 4) + 1.0
    for two in (True, False):
        sn = SelfNorm(6, two=two)
        sn.set_train(True)
        out = sn(Tensor(x)).asnumpy()
        assert out.shape == x.shape and np.isfinite(out).all()
        sn.set_train(False)
        out, again = sn(Tensor(x)).asnumpy(), sn(Tensor(x)).asnumpy()
        assert np.array_equal(out, again)
        mean, std = np_stats(x.astype(np.float64))

        def gate(weight, bn):  # eval BatchNorm with the statistics it has tracked
            z = mean[:, :, 0, 0] * weight.asnumpy()[:, 0] + std[:, :, 0, 0] * weight.asnumpy()[:, 1]
            z = (z - bn.moving_mean.asnumpy()) / np.sqrt(bn.moving_variance.asnumpy() + bn.eps)
            return 1 / (1 + np.exp(-(z * bn.gamma.asnumpy() + bn.beta.asnumpy())))[:, :, None, None]

        g = gate(sn.g_weight, sn.g_bn)
        f = gate(sn.f_weight, sn.f_bn) if two else g
        np.testing.assert_allclose(out, (x - mean) * g + mean * f, rtol=1e-4, atol=1e-5)


def test_build_plugin_and_lenet_positions():
    assert build_plugin({}, 32, "after_stem") is None
    assert build_plugin({"selfnorm": True}, 48, "in_block") is None  # default positions: after_stem
    cells = build_plugin({"crossnorm": {"p": 0.3, "mode": "1-instance"}, "selfnorm": True}, 32, "after_stem")
    assert [type(c) for c in cells] == [CrossNorm, SelfNorm] and cells[0].p == 0.3
    with pytest.raises(ValueError, match="unknown key.*selfnrom"):
        build_plugin({"selfnrom": True}, 32, "after_stem")
    with pytest.raises(ValueError, match="position"):
        build_plugin({"selfnorm": True, "positions": ["stem"]}, 32, "after_stem")
    with pytest.raises(ValueError, match="crossnorm.*prob"):
        build_plugin({"crossnorm": {"prob": 0.5}}, 32, "after_stem")
    plain = [n for n, _ in LeNet().parameters_and_names()]
    assert plain[:2] == ["conv.0.weight", "conv.0.bias"] and "conv.3.weight" in plain  # names kept
    net = LeNet(norm_plugins={"crossnorm": True, "selfnorm": {"two": False}, "positions": ["after_stem", "in_block"]})
    kinds = [type(c).__name__ for c in net.conv.cells() if isinstance(c, nn.SequentialCell) for c in c.cells()]
    assert kinds == ["CrossNorm", "SelfNorm", "CrossNorm", "SelfNorm"]
    net.set_train(False)
    assert net(Tensor(f32(2, 3, 28, 28))).shape == (2, 100)


# --------------------------------------------------------------------------- training runs
@pytest.mark.parametrize("name, keys", [("dann_ocr_optdigits", ("ocr_ent", "ocr_lam")),
                                        ("dann_iimt_optdigits", MixupTraining.log_keys),
                                        ("dann_cnsn_optdigits", ())])
def test_graph_training_with_dann(name, keys, tmp_path):
    cfg = load_config(os.path.join(ROOT, "configs/digits", f"{name}.yaml"),
                      ["train.iters=4", "train.log_every=2", "train.eval_every=4", "train.ckpt_every=4",
                       f"train.output_dir={tmp_path}"])
    result = Trainer(cfg, str(tmp_path), show_progress=False).fit()
    assert math.isfinite(result["target_acc"])
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["iter"] for r in records] == [2, 4]
    for rec in records:
        assert all(k in rec and math.isfinite(rec[k]) for k in ("loss", "transfer") + keys), rec
    names = checkpoint.read(str(tmp_path / "last.ckpt"))[0]
    if name == "dann_cnsn_optdigits":
        assert any(n.endswith("g_weight") for n in names) and any("g_bn.moving_mean" in n for n in names)
    if name == "dann_iimt_optdigits":
        assert any(n.startswith("regularizers.0.adversary") for n in names)
