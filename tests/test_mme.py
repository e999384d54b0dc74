"""MME (Saito et al., ICCV 2019): the entropy term against NumPy, the gradient-reversal placement, and a
step-for-step comparison with PyTorch written from VisionLearningGroup/SSDA_MME ``main.py`` (CE update of
``optimizer_g`` and ``optimizer_f``, ``zero_grad_all()``, then ``adentropy`` through ``grad_reverse`` at the
classifier input and a second update of both, the LR set once per iteration by ``inv_lr_scheduler``).
"""
import engine  # noqa: F401  (runtime settings before MindSpore loads)
import losses  # noqa: F401  (registers the methods)
import mindspore as ms
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from mindspore import Tensor

from engine.config import build_config
from engine.trainer import build_method, build_phase_optimizers, make_step
from losses.mme import adversarial_entropy
from tools import torch_reference as ref

CLASSES, BATCH, LABELLED, STEPS, LR, GAMMA, POWER, WD, LAMBDA, T = 5, 6, 5, 3, 0.05, 0.5, 0.75, 5e-4, 0.1, 0.05


def mme_config():
    return build_config({
        "data": {"image_size": 28, "channels": 3, "batch_size": BATCH, "target_labeled_per_class": 1},
        "model": {"backbone": "lenet", "num_classes": CLASSES, "head": "cosine", "head_kwargs": {"temperature": T}},
        "method": {"name": "mme", "weight": LAMBDA},
        "optim": {"lr": LR, "momentum": 0.9, "nesterov": True, "weight_decay": WD, "lr_schedule": "inv",
                  "lr_gamma": GAMMA, "lr_power": POWER},
        "train": {"iters": STEPS}})


def np_negative_entropy(logits):
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return float(np.mean(np.sum(p * np.log(p + 1e-5), 1)))


def test_adversarial_entropy_matches_numpy(mode):
    logits = np.random.default_rng(0).normal(0, 3, (7, CLASSES)).astype(np.float32)
    got = float(adversarial_entropy(Tensor(logits)).asnumpy())
    assert got == pytest.approx(np_negative_entropy(logits), rel=1e-5)


def test_classifier_gets_the_entropy_gradient_and_the_features_its_negation():
    """Descending lambda * sum p log p: the head follows the plain gradient (maximises entropy); the feature
    extractor, behind the reversal layer, the negated one (minimises it)."""
    method = build_method(mme_config())
    method.set_train(True)
    x_t = Tensor(np.random.default_rng(1).normal(size=(BATCH, 3, 28, 28)).astype(np.float32))
    head = method.model.head.trainable_params()
    backbone = method.model.backbone.trainable_params()
    params = head + backbone
    entropy_step = method.loss_cells(method.phases()[0])["entropy"]

    def reversed_loss(x):
        return entropy_step({"x_t": x}, Tensor(0.0, ms.float32))[0]

    def plain_loss(x):
        _, f = method.model(x)
        return LAMBDA * adversarial_entropy(method.model.head(f))

    got = ms.grad(reversed_loss, None, params)(x_t)
    want = ms.grad(plain_loss, None, params)(x_t)
    for i, p in enumerate(params):
        sign = 1.0 if i < len(head) else -1.0
        np.testing.assert_allclose(got[i].asnumpy(), sign * want[i].asnumpy(), rtol=1e-5,
                                   atol=1e-7 * float(np.abs(want[i].asnumpy()).max()) + 1e-12, err_msg=p.name)
    assert max(float(np.abs(g.asnumpy()).max()) for g in want[len(head):]) > 0  # the check is not vacuous


# --------------------------------------------------------------------------- PyTorch from main.py
class Predictor(torch.nn.Module):
    """SSDA_MME ``model/basenet.py`` Predictor: ``fc(normalize(grad_reverse(x, eta))) / temp``, no bias."""

    def __init__(self, inc, num_class, temp):
        super().__init__()
        self.fc = torch.nn.Linear(inc, num_class, bias=False)
        self.temp = temp

    def forward(self, x, reverse=False, eta=0.1):
        if reverse:
            x = ref.GradientReverse.apply(x, eta)
        return self.fc(TF.normalize(x)) / self.temp


def inv_lr_scheduler(param_lr, optimizer, iter_num, gamma, power, init_lr):
    lr = init_lr * (1 + gamma * iter_num) ** (-power)
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr * param_lr[i]


def main_py_iteration(G, F1, opt_g, opt_f, step, x_s, y_s, x_t, y_t, x_tu):
    for opt in (opt_g, opt_f):
        inv_lr_scheduler([1.0] * len(opt.param_groups), opt, step, GAMMA, POWER, LR)
    opt_g.zero_grad()
    opt_f.zero_grad()
    out = F1(G(torch.cat((x_s, x_t), 0)))
    loss = TF.cross_entropy(out, torch.cat((y_s, y_t), 0))
    loss.backward(retain_graph=True)
    opt_g.step()
    opt_f.step()
    opt_g.zero_grad()
    opt_f.zero_grad()
    out_t = TF.softmax(F1(G(x_tu), reverse=True, eta=1.0), dim=1)  # adentropy
    loss_t = LAMBDA * torch.mean(torch.sum(out_t * torch.log(out_t + 1e-5), 1))
    loss_t.backward()
    opt_f.step()
    opt_g.step()
    return loss.item(), loss_t.item()


def test_mme_steps_match_pytorch_main_py():
    torch.manual_seed(0)
    G, F1 = ref.LeNet(3, 28), Predictor(100, CLASSES, T)
    opt_g = torch.optim.SGD(G.parameters(), lr=1.0, momentum=0.9, weight_decay=WD, nesterov=True)
    opt_f = torch.optim.SGD(F1.parameters(), lr=1.0, momentum=0.9, weight_decay=WD, nesterov=True)
    method = build_method(mme_config())
    params = dict(method.parameters_and_names())
    state = {f"model.backbone.{k}": v for k, v in G.state_dict().items()}
    state["model.head.fc.weight"] = F1.fc.weight
    start = {name: value.detach().numpy().copy() for name, value in state.items()}
    for name, value in start.items():
        params[name].set_data(Tensor(value))
    method.set_train(True)
    phase = method.phases()[0]
    step = make_step(phase, method.loss_cells(phase), build_phase_optimizers(mme_config().optim, method, phase))
    rng = np.random.default_rng(3)
    for it in range(STEPS):
        x_s, x_t, x_tu = (rng.normal(size=(n, 3, 28, 28)).astype(np.float32) for n in (BATCH, LABELLED, 2 * BATCH))
        x_tu = x_tu * 1.5 + 0.5
        y_s, y_t = rng.integers(0, CLASSES, BATCH).astype(np.int32), rng.integers(0, CLASSES, LABELLED).astype(np.int32)
        outs = step(ms.mutable({"x_s": Tensor(x_s), "y_s": Tensor(y_s), "x_t": Tensor(x_tu), "x_tl": Tensor(x_t),
                                "y_tl": Tensor(y_t)}), Tensor(it / STEPS, ms.float32))
        ce, ent = main_py_iteration(G, F1, opt_g, opt_f, it, torch.from_numpy(x_s), torch.from_numpy(y_s).long(),
                                    torch.from_numpy(x_t), torch.from_numpy(y_t).long(), torch.from_numpy(x_tu))
        logged = dict(zip(method.step_log_keys(phase), (float(v.asnumpy()) for v in outs)))
        assert logged["cls"] == pytest.approx(ce, rel=1e-4), it
        assert logged["loss_ent"] == pytest.approx(ent, rel=1e-4), it
    want = {f"model.backbone.{k}": v.detach().numpy() for k, v in G.state_dict().items()}
    want["model.head.fc.weight"] = F1.fc.weight.detach().numpy()
    for name, value in want.items():  # the change of every parameter within 0.5 % of its largest entry
        got = params[name].asnumpy()
        moved = np.abs(value - start[name]).max()
        assert moved > 0, name
        np.testing.assert_allclose(got - start[name], value - start[name], rtol=0, atol=5e-3 * moved + 1e-7,
                                   err_msg=f"update of {name}")
