"""Step-for-step parity of the classification methods with PyTorch code written from TLlib (issue #11).

For source-only, DANN, CDAN, CDAN+E, MCC and ADDA's adapt phase the repository's method is built
by ``engine.trainer.build_method`` from a ``Config``, and trained for 20 steps through the engine's
real step (``build_phase_optimizers`` + ``make_step``). Beside it runs a PyTorch model written from
TLlib (``tools/torch_reference.py``: ``ImageClassifier``, ``DomainDiscriminator``,
``WarmStartGradientReverseLayer``, the DANN/CDAN/MCC losses, SGD + ``LambdaLR`` as in
``examples/domain_adaptation/image_classification/*.py``; ADDA from pytorch-adda's
``core/adapt.py``) that starts from the same weights and sees the same batches.

Checked per step: the total loss and every logged term (cls, acc_s, transfer, d_acc, the GRL
coefficient) within 1e-4 relative. After the 20 steps: every parameter and BatchNorm running
statistic within 1e-4 relative. ``atol`` is 1e-4 x the largest magnitude of that tensor: entries
that started near zero (biases, BN shifts) only carry float32 round-off from a different summation
order, which relative error alone would magnify without bound. The change of every parameter is
checked within 1e-3 (:func:`compare_updates`), which is what exposes a wrong weight decay or
Nesterov term.

LeNet cases run free for all 20 steps. The ResNet + BN cases start every step from the PyTorch
state (weights, running statistics, SGD momentum; :class:`StateSync`) and compare that step's
result, weights per tensor in relative L2 norm: free-running, the two agree to ~1e-6 for five or
six steps, then one BN output lying closer to zero (4e-6) than the frameworks' float32 round-off
(1e-5) takes the other side of its ReLU, that channel's gradient changes by ~15 % and the
small-batch BN network amplifies it chaotically. One such flip moves a layer's gradient by about
1/sqrt(#positions) in norm, far below any real deviation, but above an elementwise check.

Where the two frameworks *define* something differently, the test maps it explicitly:
* BatchNorm momentum: MindSpore's ``momentum=0.9`` weighs the old running value, torch's 0.1 the
  batch value; ``check_batch_norm_conventions`` asserts they describe the same update.
* SGD: MindSpore adds ``weight_decay * p`` to the gradient before momentum/Nesterov, as torch
  does; TLlib's per-group ``lr`` is a multiplier that ``LambdaLR`` scales, the repository's
  ``lr_mult`` times an in-graph ``InverseDecayLR`` of the optimizer's step counter (0 at the first
  update, like ``LambdaLR``'s ``x``).
* GRL: TLlib's coefficient counts forward calls up to ``max_iters``; the repository's counts
  training progress ``t = it / iters``, so TLlib's layer gets ``alpha = grl_alpha``,
  ``max_iters = train.iters``.
* CDAN+E: TLlib normalises the entropy weights over the whole batch; the repository follows the
  CDAN authors' code (per domain), so the PyTorch side uses ``entropy_norm="domain"``.
* Discriminators: TLlib's BN-free discriminator has Dropout(0.5), whose masks cannot be shared
  across frameworks; the digits recipe's discriminator has none (``dropout=0``).
"""
import copy
import functools
import re

import pytest

torch = pytest.importorskip("torch")

import engine  # noqa: E402,F401  (runtime settings before MindSpore loads)
import losses  # noqa: E402,F401  (registers the methods)
import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, ops  # noqa: E402
from torch import nn as tnn  # noqa: E402

from engine.config import build_config  # noqa: E402
from engine.registry import BACKBONES  # noqa: E402
from engine.trainer import build_method, build_phase_optimizers, make_step  # noqa: E402
from models.resnet import BasicBlock, ResNet  # noqa: E402
from tools.convert_torchvision import BN_RENAMES, convert_state_dict  # noqa: E402
from tools import torch_reference as ref  # noqa: E402

STEPS, BATCH, CLASSES = 20, 8, 5
TINY_LAYERS = (1, 1, 1, 1)
RTOL = 1e-4
UPDATE_TOL = 1e-3
FLIP_TOL = 1e-2  # one-step update of a ResNet tensor, in norm: a single flipped ReLU moves the stem's by ~3e-3
TINY_RESNET = "parity_resnet"

# The two recipes of the repository: TLlib's Office-31 schedule (configs/_base_/schedules/sgd_tllib_20k.yaml,
# ResNet + bottleneck, backbone 0.1x) and the digits one (sgd_inv_1k.yaml, LeNet).
TLLIB_RECIPE = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.001,
                "lr_schedule": "inv", "lr_gamma": 0.001, "lr_power": 0.75}
DIGITS_RECIPE = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0005,
                 "lr_schedule": "inv", "lr_gamma": 0.01, "lr_power": 0.75}
MODELS = {
    "resnet": {"backbone": TINY_RESNET, "bottleneck_dim": 16, "backbone_lr_mult": 0.1, "num_classes": CLASSES},
    "lenet": {"backbone": "lenet", "bottleneck_dim": 0, "backbone_lr_mult": 1.0, "num_classes": CLASSES},
}
IMAGE_SIZE = {"resnet": 32, "lenet": 28}
DANN = {"name": "dann", "weight": 1.0, "disc_hidden": 32, "grl_alpha": 10.0}


def _tiny_resnet(in_channels=3, image_size=32, norm_plugins=None):
    return ResNet(BasicBlock, TINY_LAYERS, in_channels, image_size, norm_plugins)


if TINY_RESNET not in BACKBONES:  # a resnet18 with one block per stage keeps the test fast
    BACKBONES.register(TINY_RESNET)(_tiny_resnet)


def make_config(model, method, optim):
    return build_config({
        "data": {"image_size": IMAGE_SIZE[model], "channels": 3, "batch_size": BATCH},
        "model": MODELS[model], "method": method, "optim": optim,
        "train": {"iters": STEPS, "seed": 0}})


# --------------------------------------------------------------------------- PyTorch side and weight copy
def torch_classifier(model):
    torch.manual_seed(0)
    spec = MODELS[model]
    if model == "resnet":
        backbone = ref.ResNet(ref.BasicBlock, TINY_LAYERS)
        backbone.out_features = 512
    else:
        backbone = ref.LeNet(3, IMAGE_SIZE[model])
    net = ref.ImageClassifier(backbone, CLASSES, spec["bottleneck_dim"], spec["backbone_lr_mult"])
    with torch.no_grad():  # non-trivial BN statistics and affine parameters, so a mix-up of fields shows
        for module in net.modules():
            if isinstance(module, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return net


def renamed(module, fix=lambda name: name):
    """``{MindSpore-style name: array}`` of a torch module: BN fields renamed, ``num_batches_tracked`` dropped."""
    batch_norms = {n for n, m in module.named_modules() if isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d))}
    out = {}
    for name, value in module.state_dict().items():
        parent, _, field = name.rpartition(".")
        if field == "num_batches_tracked":
            continue
        out[fix(f"{parent}.{BN_RENAMES[field]}" if parent in batch_norms else name)] = value.detach().numpy().copy()
    return out


@functools.lru_cache(maxsize=1)
def resnet_names():
    """``{torchvision name: MindSpore name}`` of the tiny ResNet, from the converter (computed once:
    ``convert_state_dict`` builds a MindSpore ResNet to check shapes, too slow for every step)."""
    state = {k: v.numpy() for k, v in ref.ResNet(ref.BasicBlock, TINY_LAYERS).state_dict().items()}
    kept = [k for k in state if not k.endswith("num_batches_tracked")]
    converted = list(convert_state_dict(state, "resnet18", TINY_LAYERS))  # same order as its input
    assert len(kept) == len(converted)
    return dict(zip(kept, converted))


def classifier_state(net, model):
    backbone = {k: v.detach().numpy().copy() for k, v in net.backbone.state_dict().items()
                if not k.endswith("num_batches_tracked")}
    if model == "resnet":
        backbone = {resnet_names()[k]: v for k, v in backbone.items()}
    state = {f"model.backbone.{k}": v for k, v in backbone.items()}
    if not isinstance(net.bottleneck, tnn.Identity):
        state.update({f"model.bottleneck.net.{k}": v for k, v in renamed(net.bottleneck).items()})
    state.update({f"model.head.fc.{k}": v for k, v in renamed(net.head).items()})
    return state


def discriminator_state(disc, prefix):
    """TLlib ends in ``Sequential(Linear, Sigmoid)`` (``6.0.weight``), the repository in a Dense (``6.weight``)."""
    return {f"{prefix}net.{k}": v for k, v in renamed(disc, lambda n: re.sub(r"^(\d+)\.0\.", r"\1.", n)).items()}


def load_into(method, state):
    """Copy ``state`` into the method's parameters (before any step is compiled)."""
    params = dict(method.parameters_and_names())
    for name, value in state.items():
        assert params[name].shape == value.shape, name
        params[name].set_data(Tensor(value))


def assert_tensor_close(got, want, tol, name, per_tensor=False, floor=0.0):
    """Elementwise: ``|got - want| <= tol |want| + atol``, atol = ``tol`` x the tensor's largest entry
    (entries that start near zero carry only round-off, which a purely relative check magnifies)
    + ``floor``. ``per_tensor``: ``||got - want|| <= tol ||want|| + floor`` over the whole tensor."""
    if per_tensor:
        err, size = float(np.linalg.norm(got - want)), float(np.linalg.norm(want))
        assert err <= tol * size + floor * np.sqrt(want.size), f"{name}: relative error {err / max(size, 1e-30):.2e}"
        return
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * float(np.abs(want).max()) + floor + 1e-12,
                               err_msg=name)


def compare_state(method, state, skip=(), per_tensor=False):
    """Every parameter and running statistic of ``method`` against the PyTorch ``state`` (MindSpore names).

    Running statistics are always compared elementwise: the forward pass has no kinks to amplify round-off.
    """
    names = [n for n, _ in method.parameters_and_names() if not n.startswith(skip)]
    missing = sorted(set(names) - set(state))
    assert not missing, f"no PyTorch counterpart for {missing}"
    for name, param in method.parameters_and_names():
        if name.startswith(skip):
            continue
        stat = name.endswith(("moving_mean", "moving_variance"))
        assert_tensor_close(param.asnumpy(), state[name], RTOL, name, per_tensor and not stat)


def compare_updates(method, before, after, per_tensor=False):
    """The change of every parameter, MindSpore against PyTorch, within 1e-3 (see :func:`assert_tensor_close`).

    Updates are ~1e-2 of the parameters, so a wrong weight decay, Nesterov term or learning rate
    (1-10 % of an update) hides below a 1e-4 check of the parameters but not here. The float32
    spacing of the parameter's values quantises both changes, so it is added to the tolerance.
    """
    params = dict(method.parameters_and_names())
    for name, start in before.items():
        if name not in params or name.endswith(("moving_mean", "moving_variance")):
            continue
        floor = 4 * np.finfo(np.float32).eps * float(np.abs(start).max())
        tol = FLIP_TOL if per_tensor else UPDATE_TOL
        assert_tensor_close(params[name].asnumpy() - start, after[name] - start, tol, f"update of {name}",
                            per_tensor, floor)


def check_batch_norm_conventions(method, torch_modules):
    """MindSpore ``BatchNorm(momentum=0.9)`` keeps ``1 - 0.9`` as the weight of the batch statistic: torch's 0.1."""
    ms_bns = [c for _, c in method.cells_and_names() if isinstance(c, (ms.nn.BatchNorm1d, ms.nn.BatchNorm2d))]
    torch_bns = [m for module in torch_modules for m in module.modules()
                 if isinstance(m, (tnn.BatchNorm1d, tnn.BatchNorm2d))]
    for bn in ms_bns:
        assert bn.momentum == pytest.approx(0.1) and bn.eps == pytest.approx(1e-5)
    for bn in torch_bns:
        assert bn.momentum == pytest.approx(0.1) and bn.eps == pytest.approx(1e-5)


def batches(model, seed=0):
    """Identical inputs for both sides; the target is shifted so the discriminator has something to find."""
    rng = np.random.default_rng(seed)
    shape = (BATCH, 3, IMAGE_SIZE[model], IMAGE_SIZE[model])
    for _ in range(STEPS):
        yield (rng.normal(size=shape).astype(np.float32), rng.integers(0, CLASSES, BATCH).astype(np.int32),
               (rng.normal(size=shape) * 1.5 + 0.5).astype(np.float32))


def ms_batch(x_s, y_s, x_t):
    return ms.mutable({"x_s": Tensor(x_s), "y_s": Tensor(y_s), "x_t": Tensor(x_t)})


def assert_logged(ms_log, torch_log, it):
    shared = sorted(set(ms_log) & set(torch_log))
    for key in shared:
        assert ms_log[key] == pytest.approx(torch_log[key], rel=RTOL, abs=1e-6), \
            f"step {it} {key}: MindSpore {ms_log[key]} vs PyTorch {torch_log[key]}"
    return shared


# --------------------------------------------------------------------------- the one-group methods
CASES = {
    # the ResNet cases (resynchronised every step, see the module docstring) are the expensive ones:
    # source-only and MCC run on LeNet, the 0.1x backbone group is exercised by DANN and CDAN+E
    "source_only_lenet": ("lenet", {"name": "source_only"}, DIGITS_RECIPE),
    "dann_resnet": ("resnet", {**DANN, "disc_batch_norm": True, "grl_alpha": 20.0}, TLLIB_RECIPE),
    "cdan_e_resnet": ("resnet", {**DANN, "name": "cdan_e", "disc_batch_norm": True}, TLLIB_RECIPE),
    "mcc_lenet": ("lenet", {"name": "mcc", "weight": 1.0, "temperature": 2.5}, TLLIB_RECIPE),
    "dann_lenet": ("lenet", {**DANN, "disc_batch_norm": False}, DIGITS_RECIPE),
    "cdan_randomized_lenet": ("lenet", {**DANN, "name": "cdan", "randomized": True, "randomized_dim": 64},
                              DIGITS_RECIPE),
}


def torch_transfer(method_cfg, method, net):
    """TLlib's loss module for the method, or None (source-only); returns ``(transfer, modules with parameters)``."""
    name = method_cfg["name"]
    if name == "source_only":
        return None, []
    if name == "mcc":
        mcc = ref.MinimumClassConfusionLoss(method_cfg["temperature"])
        return (lambda g_s, f_s, g_t, f_t: (mcc(g_t), None)), []
    grl = ref.WarmStartGradientReverseLayer(alpha=method_cfg["grl_alpha"], lo=0.0, hi=1.0, max_iters=STEPS)
    if name == "dann":
        in_features = net.features_dim
    elif method_cfg.get("randomized"):
        in_features = method_cfg["randomized_dim"]
    else:
        in_features = net.features_dim * CLASSES
    torch.manual_seed(1)
    disc = ref.DomainDiscriminator(in_features, method_cfg["disc_hidden"], method_cfg["disc_batch_norm"] if
                                   "disc_batch_norm" in method_cfg else False, dropout=0.0)
    if name == "dann":
        adv = ref.DomainAdversarialLoss(disc, grl)
        return (lambda g_s, f_s, g_t, f_t: (adv(f_s, f_t), adv.domain_discriminator_accuracy)), [disc, grl]
    R_f = R_g = None  # noqa: N806
    if method_cfg.get("randomized"):  # the repository's fixed random matrices, copied
        R_f = torch.tensor(method.adversary.map.R_f.asnumpy())  # noqa: N806
        R_g = torch.tensor(method.adversary.map.R_g.asnumpy())  # noqa: N806
    adv = ref.ConditionalDomainAdversarialLoss(disc, grl, name == "cdan_e", R_f, R_g, entropy_norm="domain")
    return (lambda g_s, f_s, g_t, f_t: (adv(g_s, f_s, g_t, f_t), adv.domain_discriminator_accuracy)), [disc, grl]


def discriminator_prefix(method):
    return "adversary.adversary.discriminator." if hasattr(method.adversary, "map") else "adversary.discriminator."


def method_state(net, model, disc, method):
    """The PyTorch side's parameters and running statistics under the repository's names."""
    state = classifier_state(net, model)
    if disc is not None:
        state.update(discriminator_state(disc, discriminator_prefix(method)))
    return state


def momentum_state(net, model, disc, method, optimizer):
    """torch SGD's momentum buffers under the repository's parameter names (a shadow copy holds them)."""
    modules = [net] + ([disc] if disc is not None else [])
    shadows = [copy.deepcopy(m) for m in modules]
    with torch.no_grad():
        for module, shadow in zip(modules, shadows):
            for param, slot in zip(module.parameters(), shadow.parameters()):
                slot.copy_(optimizer.state[param]["momentum_buffer"])
    return method_state(shadows[0], model, shadows[1] if disc is not None else None, method)


class StateSync:
    """Starts the next MindSpore step from the PyTorch state: parameters, running statistics, SGD momentum.

    One jitted ``ops.assign`` per tensor, in place (``Parameter.set_data`` would swap the tensor out
    from under the compiled step). MindSpore's SGD keeps a per-parameter ``stat`` flag (1 until the
    first update, which initialises the momentum with the gradient as torch does; then 0).
    """

    def __init__(self, method, ms_optimizer):
        params = dict(method.parameters_and_names())
        self.names = sorted(n for n in params if not n.startswith("adversary.map."))  # fixed, never trained
        self.trained = [p.name for p in ms_optimizer.parameters]
        targets = [params[n] for n in self.names] + list(ms_optimizer.accum) + list(ms_optimizer.stat)
        self.targets = ms.ParameterTuple(targets)
        self.zeros = [Tensor(np.zeros(p.shape, np.float32)) for p in ms_optimizer.stat]

        @ms.jit
        def assign_all(values):
            done = ()
            for param, value in zip(self.targets, values):
                done = done + (ops.assign(param, value),)
            return done

        self.assign_all = assign_all

    def __call__(self, state, momentum):
        values = [Tensor(state[n]) for n in self.names] + [Tensor(momentum[n]) for n in self.trained] + self.zeros
        self.assign_all(tuple(values))


# the ResNet cases resynchronise every step and take minutes on 2 cores: `python -m pytest -m slow` runs them
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if CASES[c][0] == "resnet" else c
                                  for c in sorted(CASES)])
def test_method_matches_tllib_step_for_step(case):
    model, method_cfg, optim = CASES[case]
    resync = model == "resnet"
    cfg = make_config(model, method_cfg, optim)
    method = build_method(cfg)
    net = torch_classifier(model)
    transfer, extra = torch_transfer(method_cfg, method, net)
    disc = extra[0] if extra else None
    grl = extra[1] if extra else None

    initial = method_state(net, model, disc, method)
    load_into(method, initial)
    check_batch_norm_conventions(method, [net] + ([disc] if disc is not None else []))

    groups = net.get_parameters() + (disc.get_parameters() if disc is not None else [])
    optimizer, scheduler = ref.inverse_decay_sgd(groups, optim["lr"], optim["momentum"], optim["weight_decay"],
                                                 optim["nesterov"], optim["lr_gamma"], optim["lr_power"])
    net.train()
    if disc is not None:
        disc.train()

    phase = method.phases()[0]
    method.set_train(True)
    ms_optimizers = build_phase_optimizers(cfg.optim, method, phase)
    step = make_step(phase, method.loss_cells(phase), ms_optimizers)
    sync = StateSync(method, ms_optimizers["gen"]) if resync else None
    keys = method.step_log_keys(phase)
    uses_target = method.forward_target
    for it, (x_s, y_s, x_t) in enumerate(batches(model)):
        before = method_state(net, model, disc, method)
        if resync and it > 0:
            sync(before, momentum_state(net, model, disc, method, optimizer))
        out = step(ms_batch(x_s, y_s, x_t), Tensor(it / phase.iters, ms.float32))
        ms_log = dict(zip(keys, (float(v.asnumpy()) for v in out)))
        torch_log = ref.tllib_iteration(net, optimizer, scheduler, torch.from_numpy(x_s),
                                        torch.from_numpy(y_s.astype(np.int64)),
                                        torch.from_numpy(x_t) if uses_target else None, transfer,
                                        method_cfg.get("weight", 1.0))
        if grl is not None:
            torch_log["grl"] = grl.last_coeff
        shared = assert_logged(ms_log, torch_log, it)
        assert set(shared) >= {"loss", "cls", "acc_s"} | ({"transfer"} if transfer else set()) \
            | ({"d_acc", "grl"} if grl else set()), (keys, sorted(torch_log))
        if resync:
            after = method_state(net, model, disc, method)
            compare_state(method, after, skip=("adversary.map.",), per_tensor=True)
            compare_updates(method, before, after, per_tensor=True)

    final = method_state(net, model, disc, method)
    compare_state(method, final, skip=("adversary.map.",))
    if not resync:
        compare_updates(method, initial, final)


# --------------------------------------------------------------------------- ADDA's adapt phase
def test_adda_adapt_phase_matches_pytorch_adda():
    """ADDA's adapt phase against pytorch-adda's ``train_tgt`` (source encoder in eval mode, Adam on both).

    LeNet runs free for all 20 steps (Adam's arithmetic, D-then-encoder order, the inverted label). That the
    source encoder runs in inference mode needs dropout/BN, so ``tests/test_adda.py`` checks it on DTN.
    """
    cfg = make_config("lenet", {"name": "adda", "disc_hidden": 32}, DIGITS_RECIPE)
    method = build_method(cfg)
    net = torch_classifier("lenet")
    torch.manual_seed(1)
    critic = ref.DomainDiscriminator(net.features_dim, 32, batch_norm=False, dropout=0.0, sigmoid=False)
    state = classifier_state(net, "lenet")
    state.update(discriminator_state(critic, "discriminator."))
    load_into(method, state)

    pretrain, adapt = method.phases()
    assert pretrain.name == "source_pretrain" and adapt.name == "adapt" and adapt.groups == ("disc", "gen")
    method.set_train(True)
    method.start_phase(adapt)  # E_s <- E (the pretrained encoder), as pytorch-adda's tgt_encoder.load_state_dict
    step = make_step(adapt, method.loss_cells(adapt), build_phase_optimizers(cfg.optim, method, adapt))
    keys = method.step_log_keys(adapt)

    source_encoder = copy.deepcopy(net).eval()  # pytorch-adda leaves it in eval mode (eval_src)
    net.train()
    critic.train()
    encoder_params = [p for n, p in net.named_parameters() if not n.startswith("head.")]
    opt = cfg.method.adapt_optim
    betas = tuple(opt["betas"])
    opt_critic = torch.optim.Adam(critic.parameters(), lr=opt["lr"], betas=betas)
    opt_target = torch.optim.Adam(encoder_params, lr=opt["lr"], betas=betas)
    for it, (x_s, _, x_t) in enumerate(batches("lenet", seed=3)):
        out = step(ms_batch(x_s, np.zeros(BATCH, np.int32), x_t), Tensor(it / adapt.iters, ms.float32))
        ms_log = dict(zip(keys, (float(v.asnumpy()) for v in out)))
        torch_log = ref.adda_adapt_iteration(lambda x: source_encoder(x)[1], lambda x: net(x)[1], critic,
                                             opt_critic, opt_target, torch.from_numpy(x_s), torch.from_numpy(x_t))
        assert assert_logged(ms_log, torch_log, it) == ["adv_loss", "d_acc", "d_loss"]

    final = classifier_state(net, "lenet")
    final.update(discriminator_state(critic, "discriminator."))
    source = classifier_state(source_encoder, "lenet")
    final.update({"source_model." + k[len("model."):]: v for k, v in source.items()})
    compare_state(method, final)
