"""OCR: order-preserving consistency regularization, as a plug-in regularizer.

Jing et al., "Order-preserving Consistency Regularization for Domain Adaptation and
Generalization", ICCV 2023. The feature of an augmented view is modelled as a mix of the
feature z of the original view and a residual z_res holding only what the augmentation added:

    z_aug = lam z + (1 - lam) z_res   =>   z_res = (z_aug - lam z) / (1 - lam)

The classifier C should find no class evidence in z_res, so OCR maximises the entropy of its
prediction there; with the classification loss on z this keeps the order of the class
probabilities of z_aug the same as z's:

    L = CE(C(z_s), y_s) - weight * mean_i H(softmax(C(z_res_i)))
    lam_p = lam_max (1 - (1 + gamma p)^-power),   p = training progress in [0, 1]

z are the weak-view features of the method's forward pass (source; plus target with
``on_target``), z_aug the features of one strong view of the same images. As the official code
(Tongzhou-uestc/ocr-mindspore, ``trainers/demix.py``): the strong view is a content-preserving
perturbation (colour jitter, grayscale, blur, flip, small translation; ``datasets.transforms``
``ocr_strong``), it goes through the model in its own training-mode forward pass (its own batch
statistics, BatchNorm running statistics updated as by any training forward), the entropy is
``-sum_c p_c log(p_c + 1e-5)``, and the denominator 1 - lam is kept 1e-3 away from 0 and 1.
Shapes: z, z_aug (N, F) -> z_res (N, F); logits (N, C) -> scalar.
"""
from dataclasses import dataclass

from mindspore import ops

from engine.config import RegularizerParams
from engine.registry import REGULARIZERS
from losses.base import Regularizer


@dataclass
class OcrParams(RegularizerParams):
    name: str = "ocr"
    weight: float = 1.0
    on_target: bool = False   # also regularise target images (their weak/strong views)
    lam_max: float = 0.5      # lam_p = lam_max (1 - (1 + gamma p)^-power)
    gamma: float = 10.0
    power: float = 0.75


def ocr_lambda(progress, lam_max=0.5, gamma=10.0, power=0.75):
    """``lam_max (1 - (1 + gamma p)^-power)``; works on a 0-d Tensor in graph."""
    return lam_max * (1.0 - ops.pow(1.0 + gamma * progress, -power))


DENOMINATOR_MARGIN = 1e-3  # official Demix_Loss: 1 - lam moved by 1e-3 when within 1e-3 of 0 or 1
ENTROPY_EPS = 1e-5         # official Entropy: -sum p log(p + 1e-5)


def ocr_residual(z, z_aug, lam):
    """``(z_aug - lam z) / (1 - lam)``: the part of z_aug not explained by z. (N, F) -> (N, F).

    The denominator is kept ``DENOMINATOR_MARGIN`` away from 0 and 1 as the official code does.
    """
    denominator = 1.0 - lam
    denominator = ops.where(denominator < DENOMINATOR_MARGIN, denominator + DENOMINATOR_MARGIN, denominator)
    denominator = ops.where(1.0 - denominator < DENOMINATOR_MARGIN, denominator - DENOMINATOR_MARGIN, denominator)
    return (z_aug - lam * z) / denominator


def residual_entropy(logits):
    """Mean over the batch of ``-sum_c p_c log(p_c + 1e-5)``, p = softmax(logits). (N, C) -> scalar."""
    p = ops.softmax(logits, -1)
    return ops.mean(-ops.sum(p * ops.log(p + ENTROPY_EPS), -1))


@REGULARIZERS.register("ocr", params=OcrParams)
class OrderPreservingConsistency(Regularizer):
    """``-weight * mean H(softmax(head(z_res)))``; logs the entropy and lam."""

    log_keys = ("ocr_ent", "ocr_lam")
    strong_views = 1

    def __init__(self, params, num_classes=None, features_dim=None):
        super().__init__(params, num_classes, features_dim)
        if not 0.0 <= params.lam_max < 1.0:
            raise ValueError(f"ocr lam_max must be in [0, 1) (the residual divides by 1 - lam), got {params.lam_max}")
        self.on_target = params.on_target
        self.needs_target = params.on_target
        self.schedule = (params.lam_max, params.gamma, params.power)

    def construct(self, model, batch, out, t):
        lam = ocr_lambda(t, *self.schedule)
        n = batch["x_s"].shape[0]
        if self.on_target:  # first strong view of each image (other regularizers may ask for more)
            x_aug = ops.concat((batch["x_s_strong"][:n], batch["x_t_strong"][:batch["x_t"].shape[0]]), 0)
            z = ops.concat((out[1], out[3]), 0)
        else:
            x_aug, z = batch["x_s_strong"][:n], out[1]
        _, z_aug = self.extra_forward(model, x_aug)
        ent = residual_entropy(model.head(ocr_residual(z, z_aug, lam)))
        return -self.weight * ent, (ent, lam)
