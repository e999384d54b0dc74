"""DANN: domain-adversarial training with a gradient reversal layer.

Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", ICML 2015;
Ganin et al., JMLR 2016. A discriminator D predicts the domain of features f through a GRL:

    L = CE(C(f_s), y_s) + weight * [BCE(D(R(f_s)), 1) + BCE(D(R(f_t)), 0)] / 2

R is the identity forward and multiplies gradients by ``-lambda_p`` backward, with
``lambda_p = max_coeff * (2 / (1 + exp(-alpha * p)) - 1)`` and p the training progress, so a
single optimizer step minimises the loss for D and maximises its domain confusion for the
feature extractor. Shapes: f_s (N, F), f_t (M, F) -> scalar loss, domain accuracy.
"""
from dataclasses import dataclass

import mindspore as ms
from mindspore import nn, ops

from engine.config import MethodParams
from engine.registry import DISCRIMINATORS, METHODS
from losses.base import Method
from models.modules import GradientReverse, binary_accuracy, binary_cross_entropy_with_logits, grl_coefficient


@dataclass
class DannParams(MethodParams):
    name: str = "dann"
    weight: float = 1.0              # trade-off of the adversarial term
    discriminator: str = "mlp"
    disc_hidden: int = 1024
    disc_batch_norm: bool = False
    grl_alpha: float = 10.0
    grl_max: float = 1.0


class DomainAdversarialLoss(nn.Cell):
    """``(f_s, f_t, coeff[, weight]) -> (loss, domain accuracy)``; the GRL sits inside.

    ``weight`` (N + M,) optionally weights each sample's BCE, source first (CDAN+E); the loss is
    then ``mean(weight * BCE)``.
    """

    def __init__(self, discriminator):
        super().__init__()
        self.discriminator = discriminator
        self.grl = GradientReverse()

    def construct(self, f_s, f_t, coeff, weight=None):
        d = self.discriminator(self.grl(ops.concat((f_s, f_t), 0), coeff))
        n = f_s.shape[0]
        label = ops.concat((ops.ones((n,), ms.float32), ops.zeros((f_t.shape[0],), ms.float32)))
        if weight is None:
            loss = binary_cross_entropy_with_logits(d, label)
        else:
            loss = ops.binary_cross_entropy_with_logits(d, label, weight, ops.ones_like(d))
        return loss, binary_accuracy(d, label)


def build_domain_adversary(params, features_dim):
    disc = DISCRIMINATORS.build(params.discriminator, features_dim, hidden=params.disc_hidden,
                                batch_norm=params.disc_batch_norm)
    return DomainAdversarialLoss(disc)


@METHODS.register("dann", params=DannParams)
class DANN(Method):
    log_keys = Method.log_keys + ("transfer", "d_acc", "grl")
    uses_target = True

    def __init__(self, params, model, regularizers=(), num_classes=10, train_cfg=None, model_factory=None):
        super().__init__(params, model, regularizers, num_classes, train_cfg, model_factory)
        self.adversary = self.build_adversary(params, model.features_dim, num_classes, train_cfg)

    def build_adversary(self, params, features_dim, num_classes, train_cfg):
        """The GRL + discriminator loss cell; CDAN conditions it on the predictions."""
        return build_domain_adversary(params, features_dim)

    def adversary_loss(self, g_s, f_s, g_t, f_t, coeff):
        return self.adversary(f_s, f_t, coeff)

    def extra_params(self):
        return self.adversary.trainable_params()

    def align(self, g_s, f_s, g_t, f_t, t):
        coeff = grl_coefficient(t, self.params.grl_alpha, self.params.grl_max)
        transfer, d_acc = self.adversary_loss(g_s, f_s, g_t, f_t, coeff)
        return self.params.weight * transfer, (transfer, d_acc, coeff)
