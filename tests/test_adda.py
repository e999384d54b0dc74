"""ADDA (Tzeng et al., CVPR 2017): its losses against the paper's formulas, and the frozen source encoder.

pytorch-adda (corenel/pytorch-adda ``core/adapt.py``) trains the critic on source = 1 / target = 0
and then the target encoder on the *inverted* label (target = 1), with the source encoder frozen in
the eval mode ``eval_src`` left it in. The step-for-step comparison with PyTorch is
``tests/test_parity_torch.py::test_adda_adapt_phase_matches_pytorch_adda``.
"""
import engine  # noqa: F401  (runtime settings before MindSpore loads)
import losses  # noqa: F401  (registers the methods)
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from engine.config import build_config
from engine.trainer import build_method, build_phase_optimizers, make_step

BATCH = 8


def adda(backbone, image_size):
    cfg = build_config({"data": {"image_size": image_size, "channels": 3, "batch_size": BATCH},
                        "model": {"backbone": backbone, "num_classes": 4},
                        "method": {"name": "adda", "disc_hidden": 16}, "train": {"iters": 5}})
    return cfg, build_method(cfg)


def batch(image_size, seed=0):
    rng = np.random.default_rng(seed)
    shape = (BATCH, 3, image_size, image_size)
    return ms.mutable({"x_s": Tensor(rng.normal(size=shape).astype(np.float32)),
                       "y_s": Tensor(rng.integers(0, 4, BATCH).astype(np.int32)),
                       "x_t": Tensor((rng.normal(size=shape) + 1.0).astype(np.float32))})


def np_bce(logits, label):
    prob = 1.0 / (1.0 + np.exp(-logits))
    return float(np.mean(-(label * np.log(prob) + (1 - label) * np.log(1 - prob))))


def np_discriminator(method, f):
    dense = [c for _, c in method.discriminator.cells_and_names() if isinstance(c, nn.Dense)]
    for i, layer in enumerate(dense):
        f = f @ layer.weight.asnumpy().T + layer.bias.asnumpy()
        if i < len(dense) - 1:
            f = np.maximum(f, 0)
    return f[:, 0]


def test_losses_follow_the_paper_with_the_inverted_label():
    """L_D = BCE(D(E_s(x_s)), 1) + BCE(D(E_t(x_t)), 0) over the batch; L_adv = BCE(D(E_t(x_t)), 1)."""
    _, method = adda("lenet", 28)
    method.set_train(True)
    method.start_phase(method.phases()[1])
    data = batch(28)
    f_s = method.source_model(data["x_s"])[1].asnumpy()
    f_t = method.model(data["x_t"])[1].asnumpy()
    d_s, d_t = np_discriminator(method, f_s), np_discriminator(method, f_t)
    assert abs(np.mean(d_s) - np.mean(d_t)) > 1e-3  # the shifted target makes the two label conventions differ

    d_loss, (d_acc,) = method.discriminator_loss(data, Tensor(0.0, ms.float32))
    want = np_bce(np.concatenate([d_s, d_t]), np.concatenate([np.ones(BATCH), np.zeros(BATCH)]))
    assert float(d_loss.asnumpy()) == np.float32(want) or abs(float(d_loss.asnumpy()) - want) < 1e-5 * want
    want_acc = np.mean(np.concatenate([d_s > 0, d_t <= 0]))
    assert float(d_acc.asnumpy()) == want_acc

    adv_loss, _ = method.target_encoder_loss(data, Tensor(0.0, ms.float32))
    inverted, flipped = np_bce(d_t, np.ones(BATCH)), np_bce(d_t, np.zeros(BATCH))
    assert abs(float(adv_loss.asnumpy()) - inverted) < 1e-5 * inverted
    assert abs(inverted - flipped) > 1e-3


def test_source_encoder_runs_in_inference_mode_and_never_changes():
    """DTN has dropout and BatchNorm: E_s must be deterministic, use running statistics and keep them."""
    cfg, method = adda("dtn", 32)
    method.set_train(True)
    adapt = method.phases()[1]
    method.start_phase(adapt)
    assert not method.source_model.training
    assert all(not cell.training for _, cell in method.source_model.cells_and_names())
    assert method.model.training and method.discriminator.training

    data = batch(32)
    first, second = (method.source_model(data["x_s"])[1].asnumpy() for _ in range(2))
    np.testing.assert_array_equal(first, second)  # no dropout masks

    before = {n: p.asnumpy().copy() for n, p in method.source_model.parameters_and_names()}
    target_before = {n: p.asnumpy().copy() for n, p in method.model.parameters_and_names()}
    step = make_step(adapt, method.loss_cells(adapt), build_phase_optimizers(cfg.optim, method, adapt))
    for it in range(3):
        step(batch(32, seed=it + 1), Tensor(it / adapt.iters, ms.float32))
    for name, param in method.source_model.parameters_and_names():  # weights and running statistics alike
        np.testing.assert_array_equal(param.asnumpy(), before[name], err_msg=name)
    moved = [n for n, p in method.model.parameters_and_names() if "moving_" in n
             and not np.array_equal(p.asnumpy(), target_before[n])]
    assert moved  # E_t trains in train mode: its running statistics do move
    np.testing.assert_array_equal(method.source_model(data["x_s"])[1].asnumpy(), first)
