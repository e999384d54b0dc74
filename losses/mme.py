"""MME: minimax entropy for semi-supervised domain adaptation.

Saito, Kim, Sclaroff, Darrell, Saenko, "Semi-supervised Domain Adaptation via Minimax Entropy",
ICCV 2019; official code VisionLearningGroup/SSDA_MME (``main.py``, ``utils/loss.py``
``adentropy``, ``model/basenet.py`` ``Predictor``). The classifier is a cosine (prototype) head
``W l2norm(f) / T``, T = 0.05 (``model.head: cosine``). Every iteration makes two updates of the
same SGD optimizers (shared momentum), as ``main.py`` does:

1. CE step: ``CE(C(G([x_s; x_tl])), [y_s; y_tl])`` on source and few-shot labelled target
   concatenated, then ``optimizer_g.step(); optimizer_f.step()`` (``Method.construct``);
2. entropy step, with a fresh forward pass at the updated weights:
   ``L_ent = lambda * mean_i sum_k p_ik log(p_ik + 1e-5)`` (= -lambda H), ``p = softmax(C(R(G(x_tu))))``
   with the gradient-reversal layer R (coefficient 1, ``adentropy``'s ``eta``) at the classifier
   *input*, then both optimizers step again. Descending ``L_ent`` makes C maximise the entropy of
   unlabelled target predictions; through R the feature extractor G minimises it.

Both steps use the iteration's learning rate (``engine.optim.PerIterationLR``); main.py's
``zero_grad_all()`` between them means the entropy step sees its own gradient only, which a
separate ``value_and_grad`` per step gives here. Shapes: f_tu (M, F) -> scalar loss.
"""
from dataclasses import dataclass

import mindspore as ms
from mindspore import nn, ops

from engine.config import MethodParams
from engine.registry import METHODS
from losses.base import Method, Phase
from models.modules import GradientReverse

ENTROPY_UNIT = "entropy"


@dataclass
class MmeParams(MethodParams):
    name: str = "mme"
    weight: float = 0.1    # lambda of the entropy term (main.py --lamda)
    grl_coeff: float = 1.0  # eta of the reversal layer (adentropy's default)


def adversarial_entropy(g_t):
    """``mean_i sum_k p_ik log(p_ik + 1e-5)``, p = softmax(g_t): the negative entropy of adentropy (N, K) -> ()."""
    p = ops.softmax(g_t, -1)
    return ops.mean(ops.sum(p * ops.log(p + 1e-5), -1))


class MinimaxEntropyLoss(nn.Cell):
    """``(head, f_t) -> (weight * negative entropy, entropy)``: the head sees ``R(f_t)``, R = gradient reversal."""

    def __init__(self, weight, coeff):
        super().__init__()
        self.grl = GradientReverse()
        self.weight = weight
        self.coeff = ms.Tensor(coeff, ms.float32)

    def construct(self, head, f_t):
        negative_entropy = adversarial_entropy(head(self.grl(f_t, self.coeff)))
        return self.weight * negative_entropy, -negative_entropy


class MmePhase(Phase):
    """One phase whose step updates the same parameter group twice: CE, then adversarial entropy."""

    def update_units(self):
        return [(g, (g,)) for g in self.groups] + [(ENTROPY_UNIT, tuple(self.groups))]


class EntropyStep(nn.Cell):
    """The entropy update's loss cell: ``(batch, t) -> (loss, (entropy,))``."""

    def __init__(self, method):
        super().__init__(auto_prefix=False)
        self.model = method.model
        self.minimax = method.minimax

    def construct(self, batch, t):
        _, f_t = self.model(batch["x_t"])
        loss, entropy = self.minimax(self.model.head, f_t)
        return loss, (entropy,)


@METHODS.register("mme", params=MmeParams)
class MME(Method):
    """Source + labelled-target CE step (the inherited construct), then the minimax entropy step."""

    def __init__(self, params, model, regularizers=(), num_classes=10, train_cfg=None, model_factory=None):
        if regularizers:
            raise ValueError("mme takes no regularizers (its step is the official two-update iteration); "
                             "remove the regularizers section")
        super().__init__(params, model, regularizers, num_classes, train_cfg, model_factory)
        if not hasattr(model, "head"):
            raise ValueError("mme needs a classifier with a head (model.head: cosine)")
        self.minimax = MinimaxEntropyLoss(params.weight, params.grl_coeff)
        # not a child cell: the parameters keep their names under ``model``
        object.__setattr__(self, "_entropy_step", EntropyStep(self))

    def phases(self):
        return [MmePhase("train", self.train_cfg.iters)]

    def step_log_keys(self, phase):
        return ("loss",) + self.log_keys + ("loss_ent", "entropy")

    def loss_cells(self, phase):
        return {"gen": self, ENTROPY_UNIT: self._entropy_step}
