"""OCR, IIMT, CrossNorm/SelfNorm against NumPy references of the papers' formulas and official code;
OCR's gradient against finite differences; BatchNorm running statistics of the extra passes; OCR's
strong view; the ResNet-50 recipes against TLlib's scripts. Training parity: test_parity_regularizers.py."""
import engine  # noqa: F401  (CPU runtime settings before MindSpore loads)

import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

import losses.iimt  # noqa: F401  (registers "iimt")
import losses.ocr  # noqa: F401  (registers "ocr")
import models.cnsn  # noqa: F401
from engine.config import load_config
from engine.trainer import build_method
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
    """OCR's official entropy: -sum p log(p + 1e-5)."""
    p = np_softmax(g)
    return np.mean(-(p * np.log(p + 1e-5)).sum(-1))


def np_sharpen(p, T):  # noqa: N803
    return p ** (1 / T) / (p ** (1 / T)).sum(-1, keepdims=True)


def np_stats(x, eps=1e-5):
    """Official calc_ins_mean_std: unbiased variance (torch.var) + eps."""
    return x.mean((2, 3), keepdims=True), np.sqrt(x.var((2, 3), ddof=1, keepdims=True) + eps)


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
    # the official clamp of 1 - lam: 1e-3 away from 0 and 1 (lam = 0 divides by 0.999, lam = 1 by 1e-3)
    for lam, denominator in ((0.0, 0.999), (1.0, 1e-3), (0.9995, 0.0005 + 1e-3)):
        got = ocr_residual(Tensor(z), Tensor(z_aug), Tensor(np.float32(lam))).asnumpy()
        np.testing.assert_allclose(got, (z_aug - lam * z) / denominator, rtol=1e-3)


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


def test_iimt_regularizer_matches_the_paper():
    """Yan et al. 2020: L = w_s L_s + w_f L_f + w_ss L_ss + r(p) w_t (L_t + L_tt), no adversary of its own."""
    params = IimtParams(weight=0.5, alpha=0.4, K=3, T=0.5, w_inter_src=1.0, w_consistency=3.0, w_intra_src=0.5,
                        w_t=1.5, ramp=0.1)
    reg = MixupTraining(params, num_classes=3, features_dim=5)
    assert reg.strong_views == 2 and not reg.trainable_params()  # the adversarial term is the method's (DANN)
    batch = tiny_batch(views=2)
    draws = reg.host_random(np.random.default_rng(3), 4)
    assert draws["iimt_lam"].dtype == np.float32 and draws["iimt_perm_s"].dtype == np.int32
    assert (draws["iimt_lam"] >= 0.5).all() and sorted(draws["iimt_perm_t"]) == [0, 1, 2, 3]
    batch.update(draws)
    lam, ps, pt = draws["iimt_lam"].astype(np.float64), draws["iimt_perm_s"], draws["iimt_perm_t"]
    x_s, x_t, x_v = batch["x_s"], batch["x_t"], batch["x_t_strong"]
    y = np.eye(3)[batch["y_s"]]
    for t, ramp in ((0.03, 0.3), (0.5, 1.0)):  # w_t ramps linearly over the first 10 % of training, then stays
        model, loss, aux = run_reg(reg, batch, t)
        g_t, f_t = model.numpy(x_t)
        _, f_s = model.numpy(x_s)
        p = (np_softmax(g_t) + np_softmax(model.numpy(x_v[:4])[0]) + np_softmax(model.numpy(x_v[4:])[0])) / 3
        q = np_sharpen(p, 0.5)  # virtual labels: K = 3 views, sharpened
        g_st, f_st = model.numpy(lam[0] * x_s + (1 - lam[0]) * x_t)  # source-dominant (lam' >= 0.5 on the source)
        g_ts, f_ts = model.numpy(lam[1] * x_t + (1 - lam[1]) * x_s)  # target-dominant
        g_ss, _ = model.numpy(lam[2] * x_s + (1 - lam[2]) * x_s[ps])
        g_tt, _ = model.numpy(lam[3] * x_t + (1 - lam[3]) * x_t[pt])
        ref = [np_soft_ce(g_st, lam[0] * y + (1 - lam[0]) * q),
               np.mean((np_softmax(g_ts) - (lam[1] * q + (1 - lam[1]) * y)) ** 2),
               np.mean((np.concatenate([f_st, f_ts]) - np.concatenate([lam[0] * f_s + (1 - lam[0]) * f_t,
                                                                       lam[1] * f_t + (1 - lam[1]) * f_s])) ** 2),
               np_soft_ce(g_ss, lam[2] * y + (1 - lam[2]) * y[ps]),
               np.mean((np_softmax(g_tt) - (lam[3] * q + (1 - lam[3]) * q[pt])) ** 2)]
        np.testing.assert_allclose(aux, ref + [ramp], rtol=1e-4, atol=1e-7)
        total = 1.0 * ref[0] + 3.0 * ref[2] + 0.5 * ref[3] + ramp * 1.5 * (ref[1] + ref[4])
        np.testing.assert_allclose(loss, 0.5 * total, rtol=1e-4)


def test_iimt_defaults_follow_the_paper():
    assert IimtParams().alpha == 1.0
    cfg = load_config(os.path.join(ROOT, "configs/digits/dann_iimt_optdigits.yaml"))
    assert cfg.regularizers[0].alpha == 1.0
    method = build_method(cfg)
    adversaries = [name for name, cell in method.cells_and_names() if type(cell).__name__ == "DomainAdversarialLoss"]
    assert adversaries == ["adversary"]  # DANN's, and no second one
    with pytest.raises(ValueError, match="alpha > 0"):
        MixupTraining(IimtParams(alpha=0.0), 3, 5)


def test_iimt_virtual_labels_carry_no_gradient(pynative):
    reg = MixupTraining(IimtParams(K=3), num_classes=3, features_dim=5)
    batch = {**tiny_batch(views=2), **reg.host_random(np.random.default_rng(0), 4)}
    model = TinyModel(f32(4, 5), f32(3, 5), f32(3))
    tensors = {k: Tensor(v) for k, v in batch.items()}

    def loss_of(x_v):  # the K-1 strong target views only feed the stop-gradient virtual labels
        return WithForward(reg, model)({**tensors, "x_t_strong": x_v}, Tensor(np.float32(0.5)))[0]

    assert not ms.grad(loss_of)(tensors["x_t_strong"]).asnumpy().any()
    assert ms.grad(loss_of)(tensors["x_t_strong"]).shape == (8, 1, 2, 2)


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


def official_box(h, w, u, bbx_thres):
    """amazon-research/crossnorm-selfnorm ``models/cnsn.py`` ``cn_rand_bbox(size, beta=1, bbx_thres)`` as a mask,
    its random draws read from ``u`` (area ratio ~ Beta(1, 1) = U(0, 1), then ``randint`` of the two sides), one
    triple per pass of its ``while True`` loop."""
    for ratio, ry, rx in u.reshape(-1, 3).astype(np.float64):
        cut_rat = np.sqrt(ratio)
        cut_w, cut_h = int(h * cut_rat), int(w * cut_rat)  # the official W = size[2] (rows), H = size[3]
        cx, cy = int(ry * h), int(rx * w)
        bbx1, bby1 = np.clip(cx - cut_w // 2, 0, h), np.clip(cy - cut_h // 2, 0, w)
        bbx2, bby2 = np.clip(cx + cut_w // 2, 0, h), np.clip(cy + cut_h // 2, 0, w)
        if float(bbx2 - bbx1) * (bby2 - bby1) / (w * h) > bbx_thres:
            mask = np.zeros((h, w), np.float32)
            mask[bbx1:bbx2, bby1:bby2] = 1.0
            return mask
    raise AssertionError("no try was accepted")


@pytest.mark.parametrize("crop", ["content", "style", "both"])
def test_crossnorm_crops(crop):
    x = f32(8, 3, 8, 8)  # 8 instances: an identity permutation (a no-op with a full box) is rare
    cn = CrossNorm(p=1.0, crop=crop, crop_ratio_min=0.2)
    cn.set_train(True)
    draws = RNG.random((20, 3 * CrossNorm.BOX_TRIES), np.float32)
    boxes = [cn.random_box(7, 9, Tensor(u)).asnumpy()[0, 0] for u in draws]
    for box, u in zip(boxes, draws):  # the official box for the same draws, covering more than bbx_thres
        assert np.array_equal(box, official_box(7, 9, u, 0.2)) and box.mean() > 0.2
    corners = {(np.flatnonzero(box.any(1))[0], np.flatnonzero(box.any(0))[0]) for box in boxes}
    assert len({box.tobytes() for box in boxes}) > 1 and len(corners) > 1  # random sizes and places
    partial = []
    for _ in range(4):
        out = cn(Tensor(x)).asnumpy()
        assert out.shape == x.shape and np.isfinite(out).all() and not np.allclose(out, x)
        if crop != "style":  # only a box (> 20 % of the map) is restyled
            changed = np.abs(out - x).max((0, 1)) > 1e-6
            rows, cols = changed.any(1), changed.any(0)
            assert np.array_equal(changed, rows[:, None] & cols[None]) and changed.mean() >= 0.2
            assert np.all(np.diff(np.flatnonzero(rows)) == 1) and np.all(np.diff(np.flatnonzero(cols)) == 1)
            partial.append(not changed.all())
    assert crop == "style" or any(partial)  # a box smaller than the map (P(4 full boxes) < 1e-4)


def test_selfnorm_matches_numpy_and_is_deterministic_in_eval():
    x = f32(5, 6, 4, 4) + 1.0
    assert not SelfNorm(6).two  # official default: is_two=False, the single gate
    for two in (True, False):
        sn = SelfNorm(6, two=two)
        sn.set_train(True)
        out = sn(Tensor(x)).asnumpy()
        assert out.shape == x.shape and np.isfinite(out).all()
        sn.set_train(False)
        out, again = sn(Tensor(x)).asnumpy(), sn(Tensor(x)).asnumpy()
        assert np.array_equal(out, again)
        mean, std = np_stats(x.astype(np.float64), eps=1e-12)  # official SelfNorm: calc_ins_mean_std(eps=1e-12)

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


# --------------------------------------------------------------------------- extra passes and BatchNorm
class TinyBnModel(TinyModel):
    """TinyModel with a training-mode BatchNorm1d on the features (momentum 0.9, MindSpore convention)."""

    def __init__(self, v, w, b):
        super().__init__(v, w, b)
        self.bn = nn.BatchNorm1d(v.shape[1], momentum=0.9)

    def construct(self, x):
        f = self.bn(ops.matmul(x.reshape(x.shape[0], -1), self.v))
        return self.head(f), f


@pytest.mark.parametrize("name", ["ocr", "iimt"])
def test_extra_pass_running_statistics(name):
    """OCR's official code runs model(x_aug) as a plain training forward: BatchNorm running statistics are
    updated by both passes; IIMT (MixMatch's convention) leaves them to the method's forward pass."""
    reg = (OrderPreservingConsistency(OcrParams(), 3, 5) if name == "ocr"
           else MixupTraining(IimtParams(K=2), 3, 5))
    model = TinyBnModel(f32(4, 5), f32(3, 5), f32(3))
    reg.bind_model(model)
    model.set_train(True)
    batch = {**tiny_batch(views=1), **reg.host_random(np.random.default_rng(0), 4)}
    WithForward(reg, model)(ms.mutable({k: Tensor(v) for k, v in batch.items()}), Tensor(np.float32(0.5)))

    def update(stats, x):
        h = x.reshape(len(x), -1).astype(np.float64) @ model.v.asnumpy()
        return 0.9 * stats[0] + 0.1 * h.mean(0), 0.9 * stats[1] + 0.1 * h.var(0, ddof=1)

    stats = update((np.zeros(5), np.ones(5)), np.concatenate([batch["x_s"], batch["x_t"]]))
    if name == "ocr":
        stats = update(stats, batch["x_s_strong"])
    np.testing.assert_allclose(model.bn.moving_mean.asnumpy(), stats[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.bn.moving_variance.asnumpy(), stats[1], rtol=1e-4, atol=1e-6)


def test_ocr_lam_max_validated():
    with pytest.raises(ValueError, match=r"lam_max must be in \[0, 1\)"):
        OrderPreservingConsistency(OcrParams(lam_max=1.0), 3, 5)
    with pytest.raises(ValueError, match="lam_max"):
        build_method(load_config(os.path.join(ROOT, "configs/digits/dann_ocr_optdigits.yaml"),
                                 ["regularizers=[{name: ocr, lam_max: 1.5}]"]))


# --------------------------------------------------------------------------- OCR's strong view
def test_ocr_strong_view_preserves_content():
    """Official OCR (Dassl transforms): flip, translation by <= 1/8, colour jitter, grayscale, blur; no crop."""
    from datasets.transforms import TRANSFORMS
    strong = TRANSFORMS.get("ocr_strong")
    size, big = 32, 36
    images = np.zeros((64, 40, 40, 3), np.float32)
    images[:, 12:28, 12:28] = [0.9, 0.2, 0.1]  # a red square in the middle, 16/40 of the side
    out = strong(images, np.random.default_rng(0), size)
    assert out.shape == (64, size, size, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    assert np.array_equal(strong(images, None, size), strong(images, None, size))  # eval: the plain resize
    # the object stays whole and about the same size: its extent (pixels far from the background) lies
    # within 16 * 32/40 * 1.125 = 14.4 px (+ blur) and is never enlarged like a resized crop would
    bright = np.abs(out - out[:, :1, :1]).max(-1) > 0.15
    extents = [(np.flatnonzero(b.any(1)).ptp() + 1) if b.any() else 0 for b in bright]
    assert max(extents) <= 20 and np.median(extents) >= 10
    gray = np.ptp(out, -1).max((1, 2)) < 1e-5  # grayscale with p 0.2
    assert 3 <= gray.sum() <= 25
    assert len({o.tobytes() for o in out}) == 64  # colour jitter draws per image
    assert big == round(size * 1.125)


# --------------------------------------------------------------------------- the ResNet-50 recipes
NO_WEIGHTS = ["model.pretrained=null", "model.backbone=lenet", "data.image_size=28"]  # the heads are what counts


def discriminator_of(method):
    return next(c for _, c in method.cells_and_names() if type(c).__name__ == "DomainDiscriminator")


def test_office_recipes_follow_tllib():
    """disc_batch_norm (TLlib DomainDiscriminator), CDAN's full map (cdan.sh), MCC's mcc.sh recipe, OCR's view."""
    for task in ("office31/dann_a2w", "office31/cdan_e_ocr_w2d", "imageclef/cdan_p2c", "imageclef/dann_c2i"):
        cfg = load_config(os.path.join(ROOT, f"configs/{task}.yaml"), NO_WEIGHTS)
        assert cfg.method.disc_batch_norm, task
        disc = discriminator_of(build_method(cfg))
        assert any(isinstance(c, nn.BatchNorm1d) for c in disc.net.cells()), task
    for name in ("cdan", "cdan_e"):
        method = build_method(load_config(os.path.join(ROOT, f"configs/office31/{name}_a2w.yaml"), NO_WEIGHTS))
        assert not any(type(c).__name__ == "RandomizedMultiLinearMap" for _, c in method.cells_and_names())
        first = [c for c in discriminator_of(method).net.cells() if isinstance(c, nn.Dense)][0]
        assert first.in_channels == 256 * 31  # the full multilinear map f (x) g
    mcc = load_config(os.path.join(ROOT, "configs/office31/mcc_d2w.yaml"))
    assert (mcc.model.bottleneck_dim, mcc.optim.lr, mcc.train.iters, mcc.data.batch_size) == (1024, 0.005, 10000, 36)
    assert load_config(os.path.join(ROOT, "configs/digits/dann_optdigits.yaml")).method.disc_batch_norm is False
    for suite in ("office31/dann_ocr_a2w", "imageclef/dann_c2i"):
        assert load_config(os.path.join(ROOT, f"configs/{suite}.yaml")).data.strong_transform == "ocr_strong"
