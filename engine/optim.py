"""Optimizers with per-group learning-rate multipliers and in-graph LR schedules; mixed precision.

Mixed precision (``train.amp_level``): :func:`apply_amp` casts the model in place and
:func:`build_loss_scaler` gives each parameter group a dynamic loss scaler, which the training
step (``engine.trainer.make_step``) uses to scale the loss and to skip updates that overflow.
"""
import mindspore as ms
from mindspore import nn, ops
from mindspore.nn.learning_rate_schedule import LearningRateSchedule
from mindspore.ops import functional as F


class InverseDecayLR(LearningRateSchedule):
    """``lr * (1 + gamma * it) ** -power`` (Ganin & Lempitsky 2015; TLlib's default)."""

    def __init__(self, lr, gamma, power):
        super().__init__()
        self.lr, self.gamma, self.power = lr, gamma, power

    def construct(self, global_step):
        it = global_step.astype(ms.float32)
        return self.lr * ops.pow(1.0 + self.gamma * it, -self.power)


class PolyLR(LearningRateSchedule):
    """``lr * (1 - it / total) ** power`` (DeepLab; AdaptSegNet decays over 250k and stops at 150k)."""

    def __init__(self, lr, total, power):
        super().__init__()
        self.lr, self.total, self.power = lr, float(total), power

    def construct(self, global_step):
        it = ops.minimum(global_step.astype(ms.float32), self.total)
        return self.lr * ops.pow(1.0 - it / self.total, self.power)


class CosineLR(LearningRateSchedule):
    """``lr * (1 + cos(pi * e / E)) / 2`` with ``e = it // step_every`` and ``E = total / step_every``.

    ``step_every`` iterations per LR change: 1 anneals every iteration; an epoch's iterations give
    ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=epochs)`` stepped once per epoch (Dassl's
    ``cosine``, used by the OCR and CrossNorm/SelfNorm recipes).
    """

    def __init__(self, lr, total, step_every=1):
        super().__init__()
        self.lr, self.step_every = lr, int(step_every)
        self.periods = float(total) / self.step_every

    def construct(self, global_step):
        period = ops.minimum((global_step // self.step_every).astype(ms.float32), self.periods)
        return self.lr * 0.5 * (1.0 + ops.cos(3.141592653589793 * period / self.periods))


_torch_adam_update = ops.MultitypeFuncGraph("torch_adam_update")


@_torch_adam_update.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                             "Tensor", "Tensor")
def _torch_adam_param(beta1_power, beta2_power, beta1, beta2, eps, lr, grad, param, m, v):
    grad = grad.astype(m.dtype)
    m_new = beta1 * m + (1.0 - beta1) * grad
    v_new = beta2 * v + (1.0 - beta2) * ops.square(grad)
    step = lr * (m_new / (1.0 - beta1_power)) / (ops.sqrt(v_new / (1.0 - beta2_power)) + eps)
    done = ops.assign(m, m_new)
    done = ops.depend(done, ops.assign(v, v_new))
    return ops.depend(done, ops.assign_sub(param, step.astype(param.dtype)))


class TorchAdam(nn.Adam):
    """Adam with ``torch.optim.Adam``'s arithmetic: ``p -= lr * m_hat / (sqrt(v_hat) + eps)``.

    MindSpore's ``nn.Adam`` adds eps to ``sqrt(v)`` before the bias correction, i.e. uses
    ``eps * sqrt(1 - beta2^t)`` in PyTorch's terms (10x larger at t = 1 with beta2 = 0.99), which
    changes every update whose gradient is within a few eps of zero; the reference
    implementations this repository reproduces are PyTorch. Weight decay is added to the
    gradient (L2), as both frameworks do for Adam; moments and step counters are nn.Adam's.
    """

    def _apply_adam(self, params, beta1_power, beta2_power, moment1, moment2, lr, gradients):
        if self.is_group_lr:
            update = F.partial(_torch_adam_update, beta1_power, beta2_power, self.beta1, self.beta2, self.eps)
            return self.map_(update, lr, gradients, params, moment1, moment2)
        update = F.partial(_torch_adam_update, beta1_power, beta2_power, self.beta1, self.beta2, self.eps, lr)
        return self.map_(update, gradients, params, moment1, moment2)


class PerIterationLR(LearningRateSchedule):
    """``schedule(global_step // k)``: the LR of an optimizer stepped ``k`` times per iteration (MME's
    CE and entropy updates share one SGD, and the official code sets its LR once per iteration)."""

    def __init__(self, schedule, k):
        super().__init__()
        self.schedule, self.k = schedule, k

    def construct(self, global_step):
        return self.schedule(global_step // self.k)


def build_lr(cfg_optim, mult, total_iters=None, updates_per_iter=1):
    """The learning rate of a group at ``mult`` x ``optim.lr``; ``total_iters`` is the phase's length (poly)."""
    lr = _build_lr(cfg_optim, mult, total_iters)
    if updates_per_iter > 1 and isinstance(lr, LearningRateSchedule):
        return PerIterationLR(lr, updates_per_iter)
    return lr


def _build_lr(cfg_optim, mult, total_iters=None):
    base = cfg_optim.lr * mult
    if cfg_optim.lr_schedule == "inv":
        return InverseDecayLR(base, cfg_optim.lr_gamma, cfg_optim.lr_power)
    if cfg_optim.lr_schedule == "poly":
        total = cfg_optim.lr_total_iters or total_iters
        if not total or total < 1:
            raise ValueError("optim.lr_schedule=poly needs optim.lr_total_iters >= 1 (or the phase's iterations)")
        return PolyLR(base, total, cfg_optim.lr_power)
    if cfg_optim.lr_schedule == "cosine":
        total = cfg_optim.lr_total_iters or total_iters
        if not total or total < cfg_optim.lr_step_every or cfg_optim.lr_step_every < 1:
            raise ValueError("optim.lr_schedule=cosine needs optim.lr_step_every >= 1 and optim.lr_total_iters (or the "
                             "phase's iterations) >= lr_step_every")
        return CosineLR(base, total, cfg_optim.lr_step_every)
    if cfg_optim.lr_schedule == "constant":
        return base
    raise ValueError(f"unknown optim.lr_schedule {cfg_optim.lr_schedule!r}; use inv, poly, cosine or constant")


def build_optimizer(groups, cfg_optim, name="gen", total_iters=None, updates_per_iter=1):
    """``groups = [(params, lr_mult), ...]`` -> one optimizer whose groups keep their multipliers.

    ``updates_per_iter``: how many times a training step calls it (its LR schedule counts iterations).

    The optimizer's own state (global_step, moments, ...) is renamed ``<name>.<param>`` so two
    optimizers can live in one jitted step (ADDA) without clashing parameter names.
    """
    opt = _make_optimizer(groups, cfg_optim, total_iters, updates_per_iter)
    network = {id(p) for params, _ in groups for p in params}
    for _, param in opt.parameters_and_names():
        if id(param) not in network and not param.name.startswith(f"{name}."):
            param.name = f"{name}.{param.name}"
    return opt


def _make_optimizer(groups, cfg_optim, total_iters=None, updates_per_iter=1):
    param_groups = [{"params": list(params), "lr": build_lr(cfg_optim, mult, total_iters, updates_per_iter)}
                    for params, mult in groups if params]
    first_lr = param_groups[0]["lr"]
    if cfg_optim.name == "sgd":
        return nn.SGD(param_groups, learning_rate=first_lr, momentum=cfg_optim.momentum,
                      weight_decay=cfg_optim.weight_decay, nesterov=cfg_optim.nesterov)
    if cfg_optim.name == "adam":
        beta1, beta2 = cfg_optim.betas
        return TorchAdam(param_groups, learning_rate=first_lr, beta1=beta1, beta2=beta2,
                         weight_decay=cfg_optim.weight_decay)
    raise ValueError(f"unknown optim.name {cfg_optim.name!r}; use sgd or adam")


# --------------------------------------------------------------------------- mixed precision
LOSS_SCALE_FACTOR, LOSS_SCALE_WINDOW = 2, 2000  # MindSpore's DynamicLossScaleManager defaults


def apply_amp(model, level):
    """Cast ``model`` in place for ``level`` (O0..O3); parameter names, ``lr_groups`` and checkpoints are unchanged.

    O1: Conv/Dense layers (MindSpore's white list) compute in fp16, every other layer in fp32.
    O2: everything in fp16 except BatchNorm/LayerNorm (MindSpore's black list), which stay fp32.
    O3: everything in fp16. Parameters stay fp32 (cast in the graph) and the model's outputs
    ``(logits, features)`` are cast back to fp32, so losses and discriminators run in fp32.
    MindSpore's own ``amp.auto_mixed_precision`` wraps cells, which renames every parameter
    (``model._backbone...``) and breaks checkpoints; this sets the same per-cell precisions
    (``Cell.to_float``) without wrapping. One difference: a BatchNorm's fp32 output is cast to
    fp16 by the next layer rather than by a wrapper.
    """
    from mindspore import amp

    if level == "O0":
        return model
    if level == "O1":  # per layer: a white-list layer casts its inputs to fp16, every other layer to fp32
        white = tuple(amp.get_white_list())
        for _, cell in model.cells_and_names():
            if not cell.name_cells():
                cell.to_float(ms.float16 if isinstance(cell, white) else ms.float32)
    elif level in ("O2", "O3"):
        model.to_float(ms.float16)
        if level == "O2":
            black = tuple(amp.get_black_list())
            for _, cell in model.cells_and_names():
                if isinstance(cell, black):
                    cell.to_float(ms.float32)
    else:
        raise ValueError(f"unknown amp level {level!r}; use O0, O1, O2 or O3")
    return _fp32_outputs(model)


def _fp32_outputs(cell):
    """Make ``cell`` return fp32 outputs by giving it a subclass of its own class (names are kept)."""
    base = type(cell)
    if getattr(base, "_fp32_outputs", False):
        return cell

    def construct(self, *args):
        return F.mixed_precision_cast(ms.float32, base.construct(self, *args))

    cell.__class__ = type(base.__name__, (base,), {"construct": construct, "_fp32_outputs": True,
                                                   "__module__": base.__module__})
    return cell


def build_loss_scaler(init_scale, group):
    """A ``DynamicLossScaler`` whose Parameters are named after ``group`` (two can share one graph)."""
    from mindspore.amp import DynamicLossScaler

    if init_scale < 1:
        raise ValueError(f"train.loss_scale must be >= 1 under mixed precision, got {init_scale}")
    scaler = DynamicLossScaler(float(init_scale), LOSS_SCALE_FACTOR, LOSS_SCALE_WINDOW)
    scaler.scale_value.name = f"{group}.loss_scale"
    scaler.counter.name = f"{group}.loss_scale_counter"
    return scaler


class LossScaleState(nn.Cell):
    """Holds a loss scaler's Parameters so checkpoints save and restore them with the optimizers."""

    def __init__(self, scaler):
        super().__init__(auto_prefix=False)
        self.scale_value = scaler.scale_value
        self.counter = scaler.counter
