"""Optimizers with per-group learning-rate multipliers and in-graph LR schedules."""
import mindspore as ms
from mindspore import nn, ops
from mindspore.nn.learning_rate_schedule import LearningRateSchedule


class InverseDecayLR(LearningRateSchedule):
    """``lr * (1 + gamma * it) ** -power`` (Ganin & Lempitsky 2015; TLlib's default)."""

    def __init__(self, lr, gamma, power):
        super().__init__()
        self.lr, self.gamma, self.power = lr, gamma, power

    def construct(self, global_step):
        it = global_step.astype(ms.float32)
        return self.lr * ops.pow(1.0 + self.gamma * it, -self.power)


def build_lr(cfg_optim, mult):
    base = cfg_optim.lr * mult
    if cfg_optim.lr_schedule == "inv":
        return InverseDecayLR(base, cfg_optim.lr_gamma, cfg_optim.lr_power)
    if cfg_optim.lr_schedule == "constant":
        return base
    raise ValueError(f"unknown optim.lr_schedule {cfg_optim.lr_schedule!r}; use inv or constant")


def build_optimizer(groups, cfg_optim, name="gen"):
    """``groups = [(params, lr_mult), ...]`` -> one optimizer whose groups keep their multipliers.

    The optimizer's own state (global_step, moments, ...) is renamed ``<name>.<param>`` so two
    optimizers can live in one jitted step (ADDA) without clashing parameter names.
    """
    opt = _make_optimizer(groups, cfg_optim)
    network = {id(p) for params, _ in groups for p in params}
    for _, param in opt.parameters_and_names():
        if id(param) not in network and not param.name.startswith(f"{name}."):
            param.name = f"{name}.{param.name}"
    return opt


def _make_optimizer(groups, cfg_optim):
    param_groups = [{"params": list(params), "lr": build_lr(cfg_optim, mult)} for params, mult in groups if params]
    first_lr = param_groups[0]["lr"]
    if cfg_optim.name == "sgd":
        return nn.SGD(param_groups, learning_rate=first_lr, momentum=cfg_optim.momentum,
                      weight_decay=cfg_optim.weight_decay, nesterov=cfg_optim.nesterov)
    if cfg_optim.name == "adam":
        beta1, beta2 = cfg_optim.betas
        return nn.Adam(param_groups, learning_rate=first_lr, beta1=beta1, beta2=beta2,
                       weight_decay=cfg_optim.weight_decay)
    raise ValueError(f"unknown optim.name {cfg_optim.name!r}; use sgd or adam")
