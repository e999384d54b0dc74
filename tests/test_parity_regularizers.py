"""Step-for-step parity of DANN + OCR / IIMT / CrossNorm-SelfNorm with PyTorch references.

The MindSpore side is the repository's jitted training step (``engine.trainer.make_step``) of the
optdigits configs (LeNet + a BatchNorm bottleneck, so running statistics are exercised). The PyTorch
side is written from the papers and the official code, not from this repository:

* DANN: GRL with ``2 / (1 + exp(-10 p)) - 1``, discriminator 16-32-32-1 on [f_s; f_t], mean BCE;
* OCR (Tongzhou-uestc/ocr-mindspore ``trainers/demix.py``): ``model(x)`` and ``model(x_aug)`` as two
  training forwards, ``(f_aug - lam f) / (1 - lam)`` with its 1e-3 clamp, ``-sum p log(p + 1e-5)``,
  ``lam = 0.5 - 0.5 (1 + 10 p)^-0.75``;
* IIMT (Yan et al. 2020, with MixMatch's label guessing and its rule that extra batches do not update
  BatchNorm running statistics: momentum 0 in that pass);
* CNSN (amazon-science/crossnorm-selfnorm ``models/cnsn.py``): ``instance_norm_mix`` with
  ``calc_ins_mean_std`` (unbiased variance), SelfNorm ``is_two=False`` (grouped Conv1d + BatchNorm1d).

Host-side draws (IIMT's lambdas and permutations) go to both sides; CrossNorm's in-graph permutation is
fixed with the test hook ``CrossNorm.force``. SGD with momentum and the inverse-decay schedule, no
weight decay (the optimizer recipes have their own parity tests in test_parity_torch.py). The PyTorch
side runs in float64. Five steps; every loss term per step and every parameter and running statistic
after them within 1e-4 (relative, 1e-6 absolute).
"""
import engine  # noqa: F401  (CPU runtime settings before MindSpore loads)

import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

torch = pytest.importorskip("torch")
import torch.nn.functional as tf  # noqa: E402

from engine.config import load_config  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from engine.trainer import build_method, make_step  # noqa: E402
from models.cnsn import CrossNorm  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tools.torch_reference import GradientReverse  # noqa: E402

N, STEPS, LR, GAMMA, POWER = 8, 5, 0.01, 0.01, 0.75
PROGRESS = [0.02 + 0.05 * k for k in range(STEPS)]  # crosses IIMT's ramp (10 %) and moves OCR's lambda
OVERRIDES = ["model.bottleneck_dim=16", "method.disc_hidden=32", "optim.weight_decay=0.0", "optim.nesterov=false",
             f"optim.lr={LR}", f"optim.lr_gamma={GAMMA}", f"optim.lr_power={POWER}"]
STYLE_PERMUTATION = [3, 0, 7, 5, 1, 6, 2, 4, 11, 8, 15, 13, 9, 14, 10, 12]  # over the 2N images of the main pass


# --------------------------------------------------------------------------- PyTorch side
def ins_mean_std(x, eps):
    """Official calc_ins_mean_std: per-instance channel mean, sqrt(unbiased var + eps)."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    return flat.mean(2).view(n, c, 1, 1), (flat.var(2) + eps).sqrt().view(n, c, 1, 1)


class TorchSelfNorm(torch.nn.Module):
    """Official SelfNorm, is_two=False: x * sigmoid(BN(Conv1d_groups([mean, std])))."""

    def __init__(self, channels):
        super().__init__()
        self.g_fc = torch.nn.Conv1d(channels, channels, 2, bias=False, groups=channels)
        self.g_bn = torch.nn.BatchNorm1d(channels)

    def forward(self, x):
        mean, std = ins_mean_std(x, 1e-12)
        stats = torch.cat((mean.squeeze(3), std.squeeze(3)), -1)
        return x * torch.sigmoid(self.g_bn(self.g_fc(stats))).view(x.shape[0], x.shape[1], 1, 1)


class TorchNet(torch.nn.Module):
    """LeNet (conv5-32, pool, [CrossNorm, SelfNorm], conv5-48, pool, fc100, fc100) + bottleneck 16 + head."""

    def __init__(self, cnsn):
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(3, 32, 5), torch.nn.Conv2d(32, 48, 5)
        self.fc1, self.fc2 = torch.nn.Linear(768, 100), torch.nn.Linear(100, 100)
        self.bottleneck, self.bn = torch.nn.Linear(100, 16), torch.nn.BatchNorm1d(16)
        self.head = torch.nn.Linear(16, 10)
        self.selfnorm = TorchSelfNorm(32) if cnsn else None
        self.style_perm = None  # CrossNorm's permutation for the next call (None: no CrossNorm)

    def forward(self, x):
        h = tf.max_pool2d(tf.relu(self.conv1(x)), 2)
        if self.style_perm is not None:  # official cn_op_2ins_space_chan, crop 'neither'
            mean, std = ins_mean_std(h, 1e-5)
            style_mean, style_std = ins_mean_std(h[self.style_perm], 1e-5)
            h = (h - mean) / std * style_std + style_mean
        if self.selfnorm is not None:
            h = self.selfnorm(h)
        h = tf.max_pool2d(tf.relu(self.conv2(h)), 2).flatten(1)
        f = tf.relu(self.bn(self.bottleneck(tf.relu(self.fc2(tf.relu(self.fc1(h)))))))
        return self.head(f), f


class TorchDann(torch.nn.Module):
    def __init__(self, cnsn):
        super().__init__()
        self.model = TorchNet(cnsn)
        self.disc = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                                        torch.nn.ReLU(), torch.nn.Linear(32, 1))

    def forward(self, x_s, y_s, x_t, t):
        g, f = self.model(torch.cat((x_s, x_t)))
        coeff = 2.0 / (1.0 + np.exp(-10.0 * t)) - 1.0
        d = self.disc(GradientReverse.apply(f, coeff)).squeeze(-1)
        domain = torch.cat((torch.ones(len(x_s), dtype=d.dtype), torch.zeros(len(x_t), dtype=d.dtype)))
        cls = tf.cross_entropy(g[:N], y_s)
        transfer = tf.binary_cross_entropy_with_logits(d, domain)
        return g, f, cls, transfer, coeff


def torch_ocr(net, batch, g, f, t, weight=0.2, lam_max=0.5):
    lam = lam_max - lam_max * (1 + 10 * t) ** -0.75
    _, f_aug = net.model(batch["x_s_strong"])  # the official second training forward
    denominator = 1 - lam
    if denominator < 1e-3:
        denominator += 1e-3
    if 1 - denominator < 1e-3:
        denominator -= 1e-3
    p = tf.softmax(net.model.head((f_aug - f[:N] * lam) / denominator), 1)
    entropy = torch.mean(torch.sum(-p * torch.log(p + 1e-5), 1))
    return -weight * entropy, [entropy, lam]


def torch_iimt(net, batch, g, f, t, T=0.5, ramp=0.1):
    """Yan et al. 2020 (module docstring of losses/iimt.py has the same formulas, written independently here)."""
    lam, ps, pt = batch["iimt_lam"], batch["iimt_perm_s"].long(), batch["iimt_perm_t"].long()
    x_s, x_t, x_v = batch["x_s"], batch["x_t"], batch["x_t_strong"]
    y = tf.one_hot(batch["y_s"].long(), 10).to(x_s.dtype)
    bns = [m for m in net.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:  # MixMatch: the extra batches leave running statistics alone
        bn.momentum = 0.0
    mixed = [lam[0] * x_s + (1 - lam[0]) * x_t, lam[1] * x_t + (1 - lam[1]) * x_s,
             lam[2] * x_s + (1 - lam[2]) * x_s[ps], lam[3] * x_t + (1 - lam[3]) * x_t[pt]]
    g_x, f_x = net.model(torch.cat([x_v] + mixed))
    for bn in bns:
        bn.momentum = 0.1
    with torch.no_grad():
        guess = (tf.softmax(g[N:], 1) + tf.softmax(g_x[:N], 1)) / 2
        q = guess ** (1 / T) / (guess ** (1 / T)).sum(1, keepdim=True)
    g_st, g_ts, g_ss, g_tt = g_x[N:].split(N)
    f_st, f_ts = f_x[N:2 * N], f_x[2 * N:3 * N]
    f_s, f_t = f[:N], f[N:]

    def soft_ce(logits, target):
        return torch.mean(torch.sum(-target * tf.log_softmax(logits, 1), 1))

    inter_s = soft_ce(g_st, lam[0] * y + (1 - lam[0]) * q)
    inter_t = torch.mean((tf.softmax(g_ts, 1) - (lam[1] * q + (1 - lam[1]) * y)) ** 2)
    cons = torch.mean((torch.cat((f_st, f_ts)) - torch.cat((lam[0] * f_s + (1 - lam[0]) * f_t,
                                                            lam[1] * f_t + (1 - lam[1]) * f_s))) ** 2)
    intra_s = soft_ce(g_ss, lam[2] * y + (1 - lam[2]) * y[ps])
    intra_t = torch.mean((tf.softmax(g_tt, 1) - (lam[3] * q + (1 - lam[3]) * q[pt])) ** 2)
    r = min(t / ramp, 1.0)
    total = inter_s + cons + intra_s + r * (inter_t + intra_t)
    return total, [inter_s, inter_t, cons, intra_s, intra_t, r]


# --------------------------------------------------------------------------- weights across
def copy_weights(method, net):
    """MindSpore -> PyTorch by name: every tensor of the MindSpore model and DANN's discriminator."""
    ms_params = {name: p.asnumpy() for name, p in method.parameters_and_names()}
    return {name: ms_params[key] for name, key in torch_names(net).items()}


def torch_names(net):
    """PyTorch tensor name -> MindSpore parameter name."""
    names = {"model.conv1.weight": "model.backbone.conv.0.weight", "model.conv1.bias": "model.backbone.conv.0.bias"}
    conv2 = 4 if net.model.selfnorm is not None else 3
    names.update({"model.conv2.weight": f"model.backbone.conv.{conv2}.weight",
                  "model.conv2.bias": f"model.backbone.conv.{conv2}.bias"})
    for i, layer in ((1, 0), (2, 2)):
        names.update({f"model.fc{i}.{k}": f"model.backbone.fc.{layer}.{k}" for k in ("weight", "bias")})
    names.update({f"model.bottleneck.{k}": f"model.bottleneck.net.0.{k}" for k in ("weight", "bias")})
    bn = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
    names.update({f"model.bn.{k}": f"model.bottleneck.net.1.{v}" for k, v in bn.items()})
    names.update({f"model.head.{k}": f"model.head.fc.{k}" for k in ("weight", "bias")})
    names.update({f"disc.{i}.{k}": f"adversary.discriminator.net.{i}.{k}"
                  for i in (0, 2, 4) for k in ("weight", "bias")})
    if net.model.selfnorm is not None:
        names["model.selfnorm.g_fc.weight"] = "model.backbone.conv.3.1.g_weight"
        names.update({f"model.selfnorm.g_bn.{k}": f"model.backbone.conv.3.1.g_bn.{v}" for k, v in bn.items()})
    return names


def load_torch(net, arrays):
    state = net.state_dict()
    for name, value in arrays.items():
        state[name] = torch.tensor(value).reshape(state[name].shape).to(state[name].dtype)
    net.load_state_dict(state)


# --------------------------------------------------------------------------- the run
def batches(method, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(STEPS):
        views = method.strong_views
        batch = {"x_s": rng.normal(size=(N, 3, 28, 28)), "x_t": rng.normal(0.3, 1.2, (N, 3, 28, 28)),
                 "y_s": rng.integers(0, 10, N).astype(np.int32)}
        if views:
            batch["x_s_strong"] = batch["x_s"] + rng.normal(0, 0.3, (views * N, 3, 28, 28))
            batch["x_t_strong"] = batch["x_t"] + rng.normal(0, 0.3, (views * N, 3, 28, 28))
        batch.update(method.host_random(np.random.default_rng([seed, k]), N))
        out.append({k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in batch.items()})
    return out


@pytest.mark.parametrize("name", ["dann_ocr", "dann_iimt", "dann_cnsn"])
def test_regularizer_on_dann_matches_pytorch(name):
    extra = ["model.norm_plugins.crossnorm.p=1.0"] if name == "dann_cnsn" else []
    cfg = load_config(os.path.join(ROOT, f"configs/digits/{name}_optdigits.yaml"), OVERRIDES + extra)
    ms.set_seed(0)
    method = build_method(cfg)
    cnsn = name == "dann_cnsn"
    if cnsn:
        crossnorms = [c for _, c in method.cells_and_names() if isinstance(c, CrossNorm)]
        assert len(crossnorms) == 1
        crossnorms[0].force(STYLE_PERMUTATION)
    phase = method.phases()[0]
    groups = method.param_groups(phase)
    optimizers = {g: build_optimizer(groups[g], cfg.optim, g, phase.iters) for g in phase.groups}
    method.set_train(True)
    step = make_step(phase, method.loss_cells(phase), optimizers)

    torch.manual_seed(0)
    net = TorchDann(cnsn).double()  # float64 reference: in float32, PyTorch's own CrossNorm/SelfNorm gradients
    # differ from float64 by up to 1e-4 on the first conv (MindSpore float32: 4e-8)
    load_torch(net, copy_weights(method, net))
    net.model.style_perm = torch.tensor(STYLE_PERMUTATION) if cnsn else None
    net.train()
    sgd = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    keys = method.step_log_keys(phase)

    for k, (batch, t) in enumerate(zip(batches(method), PROGRESS)):
        got = step(ms.mutable({key: Tensor(v) for key, v in batch.items()}), Tensor(np.float32(t)))
        got = dict(zip(keys, (float(v.asnumpy()) for v in got)))

        tb = {key: torch.tensor(v).double() if v.dtype == np.float32 else torch.tensor(v) for key, v in batch.items()}
        g, f, cls, transfer, coeff = net(tb["x_s"], tb["y_s"].long(), tb["x_t"], t)
        reg, terms = {"dann_ocr": torch_ocr, "dann_iimt": torch_iimt}.get(name, lambda *a: (0.0, []))(
            net, tb, g, f, t)
        loss = cls + transfer + reg
        for group in sgd.param_groups:
            group["lr"] = LR * (1 + GAMMA * k) ** -POWER
        sgd.zero_grad()
        loss.backward()
        sgd.step()

        want = {"loss": loss, "cls": cls, "transfer": transfer, "grl": coeff}
        want.update(zip(method.reg_log_keys, terms))
        for key, value in want.items():
            value = float(value.detach()) if torch.is_tensor(value) else value
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, k, key)

    final = {name_: p.asnumpy() for name_, p in method.parameters_and_names()}
    state = net.state_dict()
    for torch_name, ms_name in torch_names(net).items():
        np.testing.assert_allclose(final[ms_name].reshape(state[torch_name].shape), state[torch_name].numpy(),
                                   rtol=1e-4, atol=1e-6, err_msg=f"{name}: {ms_name}")
