"""CDAN / CDAN+E and MCC against NumPy references written from the papers' formulas."""
import math

import engine  # noqa: F401  (runtime settings before MindSpore loads)
import losses.cdan  # noqa: F401  (registers cdan, cdan_e)
import losses.mcc  # noqa: F401  (registers mcc method + regularizer)
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from engine.config import load_config
from engine.registry import METHODS, REGULARIZERS
from losses.cdan import (CdanEParams, CdanParams, MultiLinearMap, RandomizedMultiLinearMap,
                         build_conditional_adversary, entropy_weights, multilinear_map, randomized_multilinear_map)
from losses.mcc import MccRegularizerParams, MinimumClassConfusionLoss, minimum_class_confusion

N, M, F, C = 6, 5, 4, 3


def call(mode, fn, *args):
    """Run a plain function compiled (graph) or eagerly (pynative)."""
    fn = ms.jit(fn) if mode == "graph" else fn
    out = fn(*[Tensor(np.asarray(a, np.float32)) for a in args])
    return out.asnumpy()


def data(seed=0):
    rng = np.random.default_rng(seed)
    g_s = rng.normal(0, 3, (N, C))          # confident source predictions ...
    g_t = rng.normal(0, 0.3, (M, C))        # ... flat target ones: per-domain normalisation matters
    return g_s, rng.normal(size=(N, F)), g_t, rng.normal(size=(M, F))


# --------------------------------------------------------------------------- NumPy references
def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_multilinear(f, g):
    out = np.zeros((f.shape[0], g.shape[1] * f.shape[1]))
    for n in range(f.shape[0]):
        for c in range(g.shape[1]):
            for j in range(f.shape[1]):
                out[n, c * f.shape[1] + j] = g[n, c] * f[n, j]
    return out


def np_randomized(f, g, r_f, r_g):
    return (f @ r_f) * (g @ r_g) / np.sqrt(r_f.shape[1])


def np_entropy_weights(p):
    h = np.array([-sum(q * math.log(q) for q in row if q > 0) for row in p])
    w = 1.0 + np.exp(-h)
    return w / w.sum() * len(w)


def np_bce(z, y):
    prob = 1.0 / (1.0 + np.exp(-z))
    return -(y * np.log(prob) + (1 - y) * np.log(1 - prob))


def np_mlp(h, layers):
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h[:, 0]


def np_cdan(g_s, f_s, g_t, f_t, layers, entropy, maps):
    p_s, p_t = np_softmax(g_s), np_softmax(g_t)
    h = np.concatenate([maps(f_s, p_s), maps(f_t, p_t)])
    d = np_mlp(h, layers)
    y = np.concatenate([np.ones(len(f_s)), np.zeros(len(f_t))])
    w = np.concatenate([np_entropy_weights(p_s), np_entropy_weights(p_t)]) if entropy else np.ones(len(y))
    return float(np.mean(w * np_bce(d, y)))


def np_mcc(logits, temperature):
    p = np_softmax(logits / temperature)
    w = np_entropy_weights(p)
    k = p.shape[1]
    conf = np.array([[sum(w[i] * p[i, a] * p[i, b] for i in range(len(p))) for b in range(k)] for a in range(k)])
    conf = np.array([[conf[a, b] / conf[a].sum() for b in range(k)] for a in range(k)])
    return (conf.sum() - np.trace(conf)) / k


# --------------------------------------------------------------------------- functions
def test_multilinear_map(mode):
    g_s, f, _, _ = data(1)
    g = np_softmax(g_s)
    np.testing.assert_allclose(call(mode, multilinear_map, f, g), np_multilinear(f, g), rtol=1e-5, atol=1e-6)


def test_randomized_multilinear_map(mode):
    rng = np.random.default_rng(2)
    f, g = rng.normal(size=(N, F)), np_softmax(rng.normal(size=(N, C)))
    r_f, r_g = rng.normal(size=(F, 7)), rng.normal(size=(C, 7))
    out = call(mode, randomized_multilinear_map, f, g, r_f, r_g)
    np.testing.assert_allclose(out, np_randomized(f, g, r_f, r_g), rtol=1e-5, atol=1e-5)


def test_entropy_weights(mode):
    g_s, _, g_t, _ = data(3)
    for p in (np_softmax(g_s), np_softmax(g_t), np.eye(C)[[0, 1, 2, 0]]):  # one-hot rows: H = 0
        out = call(mode, entropy_weights, p)
        np.testing.assert_allclose(out, np_entropy_weights(p), rtol=1e-5)
        assert out.sum() == pytest.approx(len(p), rel=1e-5)


def mcc_at(temperature):
    def fn(logits):
        return minimum_class_confusion(logits, temperature)
    return fn


def test_minimum_class_confusion(mode):
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 3, (8, 5))
    for temperature in (1.0, 2.5):
        out = call(mode, mcc_at(temperature), logits)
        assert out == pytest.approx(np_mcc(logits, temperature), rel=1e-5)
    # limits: confident distinct classes -> no confusion; uniform -> (C - 1) / C
    assert call(mode, mcc_at(1.0), 60 * np.eye(5)) == pytest.approx(0, abs=1e-5)
    assert call(mode, mcc_at(2.5), np.zeros((4, 5))) == pytest.approx(0.8, rel=1e-6)


# --------------------------------------------------------------------------- CDAN loss
def adversary(entropy, randomized, seed=0):
    params = CdanParams(disc_hidden=16, entropy=entropy, randomized=randomized, randomized_dim=8)
    return build_conditional_adversary(params, F, C, seed)


def np_layers(cell):
    p = [x.asnumpy().astype(np.float64) for x in cell.adversary.discriminator.trainable_params()]
    return list(zip(p[0::2], p[1::2]))


@pytest.mark.parametrize("entropy,randomized", [(False, False), (True, False), (True, True)])
def test_cdan_loss(mode, entropy, randomized):
    cell = adversary(entropy, randomized)
    batch = data(5)
    loss, d_acc = cell(*[Tensor(x, ms.float32) for x in batch], Tensor(0.7, ms.float32))
    if randomized:
        r_f, r_g = cell.map.R_f.asnumpy(), cell.map.R_g.asnumpy()
        maps = lambda f, g: np_randomized(f, g, r_f, r_g)  # noqa: E731
    else:
        maps = np_multilinear
    assert float(loss.asnumpy()) == pytest.approx(np_cdan(*batch, np_layers(cell), entropy, maps), rel=1e-5)
    assert 0.0 <= float(d_acc.asnumpy()) <= 1.0


def test_dann_adversary_unit_weights_match_unweighted(mode):
    cell = adversary(False, False).adversary   # losses.dann.DomainAdversarialLoss on T(f, g)
    h_s, h_t = (Tensor(np.random.default_rng(8).normal(size=(k, F * C)), ms.float32) for k in (N, M))
    coeff = Tensor(0.5, ms.float32)
    plain = cell(h_s, h_t, coeff)[0].asnumpy()
    ones = cell(h_s, h_t, coeff, Tensor(np.ones(N + M), ms.float32))[0].asnumpy()
    np.testing.assert_allclose(ones, plain, rtol=1e-6)


def test_randomized_map_choice_and_fixed_matrices():
    small = build_conditional_adversary(CdanParams(), 100, 10)          # 1000 <= 4096: multilinear
    assert isinstance(small.map, MultiLinearMap)
    assert small.adversary.discriminator.trainable_params()[0].shape == (1024, 1000)
    big = build_conditional_adversary(CdanParams(randomized_dim=64), 512, 10, seed=3)  # 5120 > 4096
    assert isinstance(big.map, RandomizedMultiLinearMap)
    assert big.adversary.discriminator.trainable_params()[0].shape == (1024, 64)
    assert not any(p.name.endswith(("R_f", "R_g")) for p in big.trainable_params())
    assert {p.name for p in big.get_parameters()} >= {"map.R_f", "map.R_g"}
    again = build_conditional_adversary(CdanParams(randomized_dim=64), 512, 10, seed=3)
    np.testing.assert_array_equal(big.map.R_f.asnumpy(), again.map.R_f.asnumpy())
    r_g = big.map.R_g.asnumpy()
    assert abs(r_g.mean()) < 0.1 and abs(r_g.std() - 1) < 0.1


class _NoReverse(nn.Cell):
    def construct(self, x, coeff):
        return x


class _Loss(nn.Cell):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def construct(self, g_s, f_s, g_t, f_t, coeff):
        return self.cell(g_s, f_s, g_t, f_t, coeff)[0]


@pytest.mark.parametrize("entropy", [False, True])
def test_cdan_grl_reverses_feature_gradient(mode, entropy):
    cell = adversary(entropy, False)
    plain = adversary(entropy, False)
    plain.adversary.discriminator = cell.adversary.discriminator
    plain.adversary.grl = _NoReverse()
    batch = [Tensor(x, ms.float32) for x in data(6)]
    coeff = 0.6
    grad = ms.grad(_Loss(cell), grad_position=(0, 1, 3))
    grad_plain = ms.grad(_Loss(plain), grad_position=(0, 1, 3))
    dg_s, df_s, df_t = (x.asnumpy() for x in grad(*batch, Tensor(coeff, ms.float32)))
    _, pf_s, pf_t = (x.asnumpy() for x in grad_plain(*batch, Tensor(coeff, ms.float32)))
    assert np.abs(pf_s).max() > 1e-4 and np.abs(pf_t).max() > 1e-4
    np.testing.assert_allclose(df_s, -coeff * pf_s, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(df_t, -coeff * pf_t, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(dg_s, 0)  # predictions are detached (Long et al.; TLlib)
    # the un-reversed gradient is the loss's own: a small step against it lowers the loss
    f_s = batch[1].asnumpy() - 0.05 * pf_s / np.abs(pf_s).max()
    lower = _Loss(plain)(batch[0], Tensor(f_s, ms.float32), batch[2], batch[3], Tensor(coeff, ms.float32))
    assert float(lower.asnumpy()) < float(_Loss(plain)(*batch, Tensor(coeff, ms.float32)).asnumpy())


# --------------------------------------------------------------------------- MCC cells
def test_mcc_regularizer_and_cell(mode):
    logits = np.random.default_rng(7).normal(0, 2, (8, C))
    reg = REGULARIZERS.build("mcc", MccRegularizerParams(weight=0.3, temperature=2.0), num_classes=C)
    g_t = Tensor(logits, ms.float32)
    weighted, (raw,) = reg(None, {}, (g_t, g_t, g_t, g_t), Tensor(0.5, ms.float32))
    assert float(raw.asnumpy()) == pytest.approx(np_mcc(logits, 2.0), rel=1e-5)
    assert float(weighted.asnumpy()) == pytest.approx(0.3 * np_mcc(logits, 2.0), rel=1e-5)
    assert float(MinimumClassConfusionLoss(2.0)(g_t).asnumpy()) == pytest.approx(np_mcc(logits, 2.0), rel=1e-5)


def test_registration_and_configs():
    assert METHODS.get("cdan") is METHODS.get("cdan_e")
    assert CdanEParams().entropy and not CdanParams().entropy
    assert METHODS.get("mcc").uses_target and "mcc" in REGULARIZERS
    assert load_config("configs/digits/cdan_e_optdigits.yaml").method.entropy
    assert not load_config("configs/digits/cdan_optdigits.yaml").method.entropy
    cfg = load_config("configs/digits/dann_optdigits.yaml",
                      ["regularizers=[{name: mcc, weight: 1.0, temperature: 2.5}]"])
    assert cfg.regularizers == [MccRegularizerParams(weight=1.0, temperature=2.5)]


# --------------------------------------------------------------------------- the method in its graph
@pytest.mark.parametrize("name", ["cdan", "cdan_e", "mcc"])
def test_method_loss_in_graph_matches_numpy(name):
    """The whole method as the jitted step sees it (optdigits config, LeNet, GRAPH mode): its logged terms
    and total loss against NumPy on the model's own logits and features, so a wrong wiring (logits instead
    of probabilities in the map, per-batch instead of per-domain entropy weights, a wrong temperature, a
    wrong GRL schedule or trade-off) fails here."""
    from engine.trainer import build_method

    cfg = load_config(f"configs/digits/{name}_optdigits.yaml", ["method.weight=0.7"])
    method = build_method(cfg)
    method.set_train(True)
    rng = np.random.default_rng(4)
    x_s, x_t = rng.normal(size=(2, 8, 3, 28, 28)).astype(np.float32)
    y_s = rng.integers(0, 10, 8).astype(np.int32)
    batch = ms.mutable({"x_s": Tensor(x_s), "y_s": Tensor(y_s), "x_t": Tensor(x_t)})
    t = 0.3
    total, aux = ms.jit(method.construct)(batch, Tensor(np.float32(t)))
    logged = dict(zip(method.log_keys, (a.asnumpy() for a in aux)))
    g, f = (o.asnumpy().astype(np.float64) for o in method.model(Tensor(np.concatenate([x_s, x_t]))))
    g_s, g_t, f_s, f_t = g[:8], g[8:], f[:8], f[8:]
    cls = float(np.mean(-np.log(np_softmax(g_s)[np.arange(8), y_s])))
    if name == "mcc":
        transfer = np_mcc(g_t, 2.5)
    else:
        transfer = np_cdan(g_s, f_s, g_t, f_t, np_layers(method.adversary), name == "cdan_e", np_multilinear)
        assert float(logged["grl"]) == pytest.approx(2 / (1 + math.exp(-10 * t)) - 1, rel=1e-5)
    assert float(logged["cls"]) == pytest.approx(cls, rel=1e-4)
    assert float(logged["transfer"]) == pytest.approx(transfer, rel=1e-4)
    assert float(total.asnumpy()) == pytest.approx(cls + 0.7 * transfer, rel=1e-4)
