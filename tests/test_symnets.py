"""SymNets (issue #13): the two losses against NumPy, their gradient routing, step-for-step parity with the
official training loop (``tools/torch_reference.py``, written from Gorilla-Lab-SCUT/SymNets ``trainer.py``)
and a short ``train.py`` run of the optdigits config."""
import json
import math
import os

import engine  # noqa: F401  (runtime settings before MindSpore loads)
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops

from engine.config import build_config
from engine.trainer import build_method, build_phase_optimizers, make_step
from losses.symnets import SymNetsHead, classifier_loss, feature_loss  # registers the method and the head
from tests.conftest import quick_opts, run_script

K, N, M = 3, 6, 5


# --------------------------------------------------------------------------- NumPy references (per sample)
def np_softmax(row):
    e = np.exp(row - row.max())
    return e / e.sum()


def np_classifier_loss(z_s, z_t, y, k):
    task_s = np.mean([-math.log(np_softmax(z[:k])[label]) for z, label in zip(z_s, y)])
    task_t = np.mean([-math.log(np_softmax(z[k:])[label]) for z, label in zip(z_s, y)])
    disc = (np.mean([-math.log(np_softmax(z)[:k].sum()) for z in z_s])
            + np.mean([-math.log(np_softmax(z)[k:].sum()) for z in z_t]))
    return task_s + task_t + disc, (task_s, task_t, disc)


def np_feature_loss(z_s, z_t, y, lam, k, entropy_weight):
    category = np.mean([-0.5 * math.log(np_softmax(z)[label]) - 0.5 * math.log(np_softmax(z)[label + k])
                        for z, label in zip(z_s, y)])
    conf, ent = [], []
    for z in z_t:
        p = np_softmax(z)
        conf.append(-0.5 * (math.log(p[k:].sum()) + math.log(p[:k].sum())))
        ent.append(-sum((p[j] + p[j + k]) * math.log(p[j] + p[j + k]) for j in range(k)))
    conf, ent = np.mean(conf), np.mean(ent)
    return category + lam * (conf + entropy_weight * ent), (category, conf, ent)


def logits(seed=0):
    rng = np.random.default_rng(seed)
    z_s = rng.normal(0, 3, (N, 2 * K))
    z_t = rng.normal(0, 1, (M, 2 * K))
    return z_s, z_t, rng.integers(0, K, N)


@pytest.mark.parametrize("entropy_weight", [1.0, 0.0])
def test_losses_match_numpy(mode, entropy_weight):
    z_s, z_t, y = logits()
    lam = 0.7

    def both(zs, zt, labels, lam_t):
        return classifier_loss(zs, zt, labels, K), feature_loss(zs, zt, labels, lam_t, K, entropy_weight)

    fn = ms.jit(both) if mode == "graph" else both
    (cls, cls_terms), (feat, feat_terms) = fn(Tensor(z_s, ms.float32), Tensor(z_t, ms.float32),
                                              Tensor(y, ms.int32), Tensor(lam, ms.float32))
    want_cls, want_cls_terms = np_classifier_loss(z_s, z_t, y, K)
    want_feat, want_feat_terms = np_feature_loss(z_s, z_t, y, lam, K, entropy_weight)
    got = [float(v.asnumpy()) for v in (cls, *cls_terms, feat, *feat_terms)]
    np.testing.assert_allclose(got, [want_cls, *want_cls_terms, want_feat, *want_feat_terms], rtol=1e-5)


def test_log_masses_are_exact_where_the_probabilities_underflow():
    """A source sample whose 2K softmax puts e^-120 on its first K entries: -log P_s = 120 exactly (to 1e-52).
    Summing float32 probabilities gives log(0) (the official code then adds 1e-6: 13.8)."""
    z_far = np.array([[-60.0, -60.0, -60.0, 60.0, 60.0, 60.0]])
    z_flat = np.zeros((1, 6))

    @ms.jit
    def discrimination(z_s, z_t, y):
        return classifier_loss(z_s, z_t, y, K)[1][2]

    disc = discrimination(Tensor(z_far, ms.float32), Tensor(z_flat, ms.float32), Tensor([0], ms.int32))
    assert float(disc.asnumpy()) == pytest.approx(120.0 + math.log(2.0), rel=1e-6)  # + -log P_t of the flat target


# --------------------------------------------------------------------------- the method
def make_config(bottleneck_dim=0, backbone_lr_mult=0.1, steps=3, **method):
    return build_config({
        "data": {"image_size": 28, "channels": 3, "batch_size": 8},
        "model": {"backbone": "lenet", "head": "symnets", "num_classes": K, "bottleneck_dim": bottleneck_dim,
                  "backbone_lr_mult": backbone_lr_mult},
        "method": {"name": "symnets", **method},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4,
                  "lr_schedule": "inv", "lr_gamma": 10.0 / steps, "lr_power": 0.75},
        "train": {"iters": steps, "seed": 0}})


def batches(steps, seed=0):
    rng = np.random.default_rng(seed)
    shape = (8, 3, 28, 28)
    return [(rng.normal(size=shape).astype(np.float32), rng.integers(0, K, 8).astype(np.int32),
             (rng.normal(size=shape) * 1.5 + 0.5).astype(np.float32)) for _ in range(steps)]


def ms_batch(x_s, y_s, x_t):
    return ms.mutable({"x_s": Tensor(x_s), "y_s": Tensor(y_s), "x_t": Tensor(x_t)})


def test_model_scores_the_target_classifier_and_groups_split_the_fc_off():
    method = build_method(make_config(bottleneck_dim=16))
    model = method.model
    assert isinstance(model.head, SymNetsHead)
    x = Tensor(batches(1)[0][0])
    model.set_train(False)
    scores, f = model(x)
    z = model.head.logits(f).asnumpy()
    assert scores.shape == (8, K) and z.shape == (8, 2 * K)
    np.testing.assert_allclose(scores.asnumpy(), z[:, K:], rtol=1e-6, atol=1e-6)

    groups = method.param_groups(method.phases()[0])
    names = {g: [(sorted(p.name for p in params), mult) for params, mult in v] for g, v in groups.items()}
    backbone = sorted(p.name for p in model.backbone.trainable_params())
    bottleneck = sorted(p.name for p in model.bottleneck.trainable_params())
    assert names == {"feature": [(backbone, 0.1), (bottleneck, 1.0)],
                     "classifier": [(["model.head.fc.bias", "model.head.fc.weight"], 1.0)]}


def test_classifier_loss_moves_only_the_fc_and_feature_loss_only_the_features():
    method = build_method(make_config(bottleneck_dim=16))
    method.set_train(True)
    x_s, y_s, x_t = batches(1)[0]
    batch, t = ms_batch(x_s, y_s, x_t), Tensor(0.5, ms.float32)
    params = method.model.trainable_params()
    fc = {p.name for p in method.model.head.trainable_params()}
    keys = method.log_keys

    def term(name):
        return lambda b, progress: method(b, progress)[1][keys.index(name)]

    for name, reaches_fc in (("cls_loss", True), ("feat_loss", False)):
        grads = ms.grad(term(name), grad_position=None, weights=params)(batch, t)
        for param, grad in zip(params, grads):
            size = np.abs(grad.asnumpy())
            if (param.name in fc) == reaches_fc:
                assert size.sum() > 0, (name, param.name)
            else:
                assert size.max() == 0.0, (name, param.name)


def test_setups_without_a_route_are_refused():
    cfg = make_config()
    cfg.model.head = "linear"
    with pytest.raises(ValueError, match="needs model.head: symnets"):
        build_method(cfg)
    cfg = build_config({"model": {"head": "symnets"}, "method": {"name": "symnets"},
                        "regularizers": [{"name": "mcc", "weight": 1.0}]})
    with pytest.raises(ValueError, match="symnets takes no regularizers"):
        build_method(cfg)


# --------------------------------------------------------------------------- parity with the official loop
STEPS, LR = 3, 0.01


def leaky_logits(self, f, fixed=False):
    """A routing bug: the fc is never held fixed, so the feature loss reaches it too."""
    return ops.dense(f, self.fc.weight, self.fc.bias)


def run_parity():
    """3 joint steps of the repository's method beside the official loop from the same weights on the same batches."""
    torch = pytest.importorskip("torch")
    from tests.test_parity_torch import assert_logged, classifier_state, compare_state, compare_updates, load_into
    from tools import torch_reference as ref

    cfg = make_config(steps=STEPS)
    method = build_method(cfg)
    torch.manual_seed(0)
    net = ref.ImageClassifier(ref.LeNet(3, 28), 2 * K, bottleneck_dim=0)  # the official fc: 2K outputs
    load_into(method, classifier_state(net, "lenet"))
    optimizer = torch.optim.SGD([{"params": net.backbone.parameters(), "name": "pre-trained"},
                                 {"params": net.head.parameters(), "name": "new-added"}],
                                lr=LR, momentum=0.9, weight_decay=1e-4, nesterov=True)
    net.train()
    method.set_train(True)
    phase = method.phases()[0]
    step = make_step(phase, method.loss_cells(phase), build_phase_optimizers(cfg.optim, method, phase))
    keys = method.step_log_keys(phase)
    for it, (x_s, y_s, x_t) in enumerate(batches(STEPS, seed=1)):
        before = classifier_state(net, "lenet")
        ref.symnets_adjust_learning_rate(optimizer, LR, it / STEPS)
        expected = ref.symnets_iteration(lambda x: net(x)[0], optimizer, list(net.head.parameters()),
                                         torch.from_numpy(x_s), torch.from_numpy(y_s.astype(np.int64)),
                                         torch.from_numpy(x_t), K, it / STEPS)
        got = dict(zip(keys, (float(v.asnumpy()) for v in step(ms_batch(x_s, y_s, x_t),
                                                                 Tensor(it / STEPS, ms.float32)))))
        assert set(assert_logged(got, expected, it)) == set(keys)
        after = classifier_state(net, "lenet")
        compare_state(method, after)
        compare_updates(method, before, after)


def test_joint_step_matches_the_official_loop_step_for_step():
    run_parity()


def test_parity_fails_when_the_feature_loss_reaches_the_fc(monkeypatch):
    monkeypatch.setattr(SymNetsHead, "logits", leaky_logits)
    with pytest.raises(AssertionError, match="model.head.fc"):
        run_parity()


# --------------------------------------------------------------------------- train.py
def test_train_py_runs_the_optdigits_config(tmp_path):
    run_dir = str(tmp_path / "run")
    run_script("train.py", "--config", "configs/digits/symnets_optdigits.yaml", "--no-progress",
               "--opt", *quick_opts(run_dir, iters=2, every=1))
    with open(os.path.join(run_dir, "results.json")) as handle:
        results = json.load(handle)
    assert 0.0 <= results["target_acc"] <= 1.0 and len(results["target_per_class"]) == 10
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    assert {"cls_loss", "feat_loss", "acc_ct", "lam", "target_acc"} <= set(records[-1])
