"""MCC: Minimum Class Confusion, as a method and as a regularizer on top of any method.

Jin et al., "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020. On target
logits g_t (N, C), with temperature T:

    p = softmax(g_t / T),  w_i = N (1 + exp(-H(p_i))) / sum_j (1 + exp(-H(p_j)))  (no gradient)
    C = (p ⊙ w)^T p                                 class confusion, (C, C)
    C_jk <- C_jk / sum_k' C_jk'                      row-normalised
    L_mcc = (sum_jk C_jk - trace C) / C

Method ``mcc``: CE(source) + weight * L_mcc(g_t). Regularizer ``mcc``: + weight * L_mcc(g_t) on
top of any method's forward pass. Both use :class:`MinimumClassConfusionLoss`.
"""
from dataclasses import dataclass

from mindspore import nn, ops

from engine.config import MethodParams, RegularizerParams
from engine.registry import METHODS, REGULARIZERS
from losses.base import Method, Regularizer
from losses.cdan import entropy_weights


@dataclass
class MccParams(MethodParams):
    name: str = "mcc"
    weight: float = 1.0
    temperature: float = 2.5


@dataclass
class MccRegularizerParams(RegularizerParams):
    name: str = "mcc"
    weight: float = 1.0
    temperature: float = 2.5


def minimum_class_confusion(logits_t, temperature):
    """L_mcc of target logits (N, C) -> scalar (see the module docstring)."""
    p = ops.softmax(logits_t / temperature, -1)
    w = entropy_weights(p)
    confusion = ops.matmul((p * ops.expand_dims(w, 1)).T, p)
    confusion = confusion / ops.sum(confusion, 1, keepdim=True)
    return (ops.sum(confusion) - ops.trace(confusion)) / logits_t.shape[1]


class MinimumClassConfusionLoss(nn.Cell):
    """``g_t (N, C) -> scalar`` MCC loss at a fixed temperature."""

    def __init__(self, temperature=2.5):
        super().__init__()
        self.temperature = temperature

    def construct(self, g_t):
        return minimum_class_confusion(g_t, self.temperature)


@REGULARIZERS.register("mcc", params=MccRegularizerParams)
class MCCRegularizer(Regularizer):
    log_keys = ("mcc",)

    def __init__(self, params, num_classes=None, features_dim=None):
        super().__init__(params, num_classes, features_dim)
        self.mcc = MinimumClassConfusionLoss(params.temperature)

    def construct(self, model, batch, out, t):
        loss = self.mcc(out[2])
        return self.weight * loss, (loss,)


@METHODS.register("mcc", params=MccParams)
class MCC(Method):
    log_keys = Method.log_keys + ("transfer",)
    uses_target = True

    def __init__(self, params, model, regularizers=(), num_classes=10, train_cfg=None, model_factory=None):
        super().__init__(params, model, regularizers, num_classes, train_cfg, model_factory)
        self.mcc = MinimumClassConfusionLoss(params.temperature)

    def align(self, g_s, f_s, g_t, f_t, t):
        transfer = self.mcc(g_t)
        return self.params.weight * transfer, (transfer,)
