"""CDAN / CDAN+E: conditional domain-adversarial training.

Long et al., "Conditional Adversarial Domain Adaptation", NeurIPS 2018. The discriminator D sees
the features f conditioned on the (stop-gradient) predictions g = softmax(C(f)) through

    multilinear:  T(f, g) = flatten(g ⊗ f)                        (N, C*F)
    randomized:   T(f, g) = (f R_f) ⊙ (g R_g) / sqrt(d)            (N, d), R ~ N(0, 1) fixed

(the randomized map when C*F > ``randomized_dim_threshold`` or ``randomized: true``), behind the
gradient reversal layer of DANN:

    L = CE(C(f_s), y_s) + weight * mean_i w_i BCE(D(R(T(f_i, g_i))), domain_i)

CDAN: w_i = 1. CDAN+E (entropy conditioning): w_i = 1 + exp(-H(g_i)), normalised per domain to
sum to that domain's batch size, as the authors' code does (TLlib normalises over both domains
at once). Shapes: g_s (N, C), f_s (N, F), g_t (M, C), f_t (M, F) -> scalar loss, domain accuracy.
"""
import math
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from engine.registry import METHODS
from losses.dann import DANN, DannParams, build_domain_adversary


@dataclass
class CdanParams(DannParams):
    name: str = "cdan"
    entropy: bool = False                 # CDAN+E: weight samples by 1 + exp(-H(g))
    randomized: bool = False              # force the randomized multilinear map
    randomized_dim: int = 1024            # d, output size of the randomized map
    randomized_dim_threshold: int = 4096  # use the randomized map when F * C exceeds this


@dataclass
class CdanEParams(CdanParams):
    name: str = "cdan_e"
    entropy: bool = True


# --------------------------------------------------------------------------- functions
def multilinear_map(f, g):
    """``flatten(g ⊗ f)``: (N, F), (N, C) -> (N, C*F), entry ``c*F + j`` is ``g_c f_j``."""
    return (ops.expand_dims(g, 2) * ops.expand_dims(f, 1)).reshape((f.shape[0], -1))


def randomized_multilinear_map(f, g, R_f, R_g):  # noqa: N803 (paper notation)
    """``(f R_f) ⊙ (g R_g) / sqrt(d)``: f (N, F), g (N, C), R_f (F, d), R_g (C, d) -> (N, d)."""
    return ops.matmul(f, R_f) * ops.matmul(g, R_g) / math.sqrt(R_f.shape[1])


def entropy(p):
    """Shannon entropy ``-sum_c p_c log p_c`` of each row of probabilities (0 log 0 = 0): (N, C) -> (N,)."""
    return -ops.sum(p * ops.log(ops.clamp(p, 1e-30)), -1)


def entropy_weights(g):
    """``w = 1 + exp(-H(g))`` scaled to sum to N, no gradient: probabilities (N, C) -> (N,)."""
    w = 1.0 + ops.exp(-entropy(ops.stop_gradient(g)))
    return w * (g.shape[0] / ops.sum(w))


# --------------------------------------------------------------------------- cells
class MultiLinearMap(nn.Cell):
    def construct(self, f, g):
        return multilinear_map(f, g)


class RandomizedMultiLinearMap(nn.Cell):
    """Randomized map with fixed Gaussian ``R_f`` (F, d), ``R_g`` (C, d) from ``default_rng(seed)``.

    The matrices are non-trainable Parameters, so they are saved in (and restored from) checkpoints.
    """

    def __init__(self, features_dim, num_classes, output_dim=1024, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.R_f = Parameter(Tensor(rng.standard_normal((features_dim, output_dim)), ms.float32),
                             name="R_f", requires_grad=False)
        self.R_g = Parameter(Tensor(rng.standard_normal((num_classes, output_dim)), ms.float32),
                             name="R_g", requires_grad=False)

    def construct(self, f, g):
        return randomized_multilinear_map(f, g, self.R_f, self.R_g)


class ConditionalDomainAdversarialLoss(nn.Cell):
    """``(g_s, f_s, g_t, f_t, coeff) -> (loss, domain accuracy)``; g are logits.

    ``adversary`` is DANN's :class:`losses.dann.DomainAdversarialLoss` (GRL + discriminator + BCE)
    applied to ``T(f, softmax(g))`` instead of ``f``.
    """

    def __init__(self, adversary, conditioning, entropy_conditioning=False):
        super().__init__()
        self.adversary = adversary
        self.map = conditioning
        self.entropy_conditioning = entropy_conditioning

    def construct(self, g_s, f_s, g_t, f_t, coeff):
        p_s = ops.stop_gradient(ops.softmax(g_s, -1))
        p_t = ops.stop_gradient(ops.softmax(g_t, -1))
        h_s, h_t = self.map(f_s, p_s), self.map(f_t, p_t)
        if self.entropy_conditioning:
            weight = ops.concat((entropy_weights(p_s), entropy_weights(p_t)))
            return self.adversary(h_s, h_t, coeff, weight)
        return self.adversary(h_s, h_t, coeff)


def build_conditional_adversary(params, features_dim, num_classes, seed=0):
    """Pick the multilinear or randomized map from ``params`` and put DANN's adversary on it."""
    if params.randomized or features_dim * num_classes > params.randomized_dim_threshold:
        conditioning = RandomizedMultiLinearMap(features_dim, num_classes, params.randomized_dim, seed)
        in_features = params.randomized_dim
    else:
        conditioning = MultiLinearMap()
        in_features = features_dim * num_classes
    return ConditionalDomainAdversarialLoss(build_domain_adversary(params, in_features), conditioning,
                                            params.entropy)


@METHODS.register("cdan_e", params=CdanEParams)
@METHODS.register("cdan", params=CdanParams)
class CDAN(DANN):
    """DANN whose discriminator sees the features conditioned on the predictions."""

    def build_adversary(self, params, features_dim, num_classes, train_cfg):
        seed = train_cfg.seed if train_cfg is not None else 0
        return build_conditional_adversary(params, features_dim, num_classes, seed)

    def adversary_loss(self, g_s, f_s, g_t, f_t, coeff):
        return self.adversary(g_s, f_s, g_t, f_t, coeff)
