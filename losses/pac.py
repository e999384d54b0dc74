"""PAC: pretraining (rotation prediction) and consistency for semi-supervised domain adaptation.

Mishra, Saenko, Saligrama, "Surprisingly Simple Semi-Supervised Domain Adaptation with
Pretraining and Consistency", BMVC 2021; official code venkatesh-saligrama/PAC. Two phases of
one config (the official code runs two scripts and passes a checkpoint between them):

1. ``rot_pretrain`` (``addnl_scripts/pretrain/rot_pred.py``): every image is shown at all four
   rotations, labels 0..3 = rotated by -90, 0, 90, 180 degrees (``dataset.py``'s ``rot=True``:
   ``TF.rotate`` is counter-clockwise, i.e. ``np.rot90(x, k)`` with k = -1, 0, 1, 2), source and
   target images concatenated into one batch, ``CE(F2(G(x_rot)), rot_label)``. F2 is a separate
   4-way cosine head (``Predictor(num_class=4, temp=T, normalize=True, cls_bias=False)``) trained
   with G; the class head stays untouched. ``rot_images`` images per domain per step
   (``--batch_size=16``) from the training streams.
2. ``train`` (``main.py``): ``CE(F1(G(x_s)), y_s) + CE(F1(G(x_tl)), y_tl)`` (a sum of two means,
   separate forward passes) plus ``weight`` x the consistency term on unlabelled target:
   ``p = softmax(F1(G(x_weak)))`` held fixed, ``mask = max_k p > threshold`` (0.9),
   ``L_cons = mean_i mask_i * sum_k -p_ik log softmax(F1(G(x_strong)))_ik`` (soft pseudo-labels,
   ``CrossEntropyWLogits``; no temperature besides the head's T = 0.05; ``cons_wt`` = 1).
   The weak view is ``data.train_transform``, the strong one ``data.strong_transform``
   (``randaugment``: RandAugment n=2, m=10 + Cutout 16/224 + ColorJitter p 0.8, PAC's
   ``aug_level=3``) through the engine's strong views (``x_t_strong``).

Deviations: the official rotation pretraining runs ``aug_level=3`` on its inputs and samples
the whole target domain; here the rotations see ``data.train_transform`` images of the training
streams (the labelled target images are not in the unlabelled stream). The official main.py
also defaults ``--vat_tw=0.01`` (VAT), which its own comment says is not meant to be combined
with the consistency term and which is not part of PAC; it is not implemented.
"""
from dataclasses import dataclass

import mindspore as ms
from mindspore import nn, ops

from engine.config import MethodParams
from engine.registry import METHODS
from losses.base import Method, Phase, accuracy, cross_entropy
from models.modules import CosineHead

ROTATION_PHASE = "rot_pretrain"
ROTATION_K = (-1, 0, 1, 2)  # label i = np.rot90(x, ROTATION_K[i]) over (H, W), as PAC's dataset.py


@dataclass
class PacParams(MethodParams):
    name: str = "pac"
    weight: float = 1.0           # cons_wt
    threshold: float = 0.9        # cons_threshold
    rot_iters: int = 500          # iterations of the rotation pretraining phase (0: skip it)
    rot_images: int = 16          # images per domain per pretraining step (rot_pred.py --batch_size)
    rot_temperature: float = 0.05  # T of the 4-way rotation head


def rot90(x, k):
    """``np.rot90(x, k, axes=(2, 3))`` for NCHW Tensors, k in -1, 0, 1, 2."""
    if k == 0:
        return x
    if k == 2:
        return ops.flip(x, (2, 3))
    if k == 1:
        return ops.transpose(ops.flip(x, (3,)), (0, 1, 3, 2))
    return ops.flip(ops.transpose(x, (0, 1, 3, 2)), (3,))  # k = -1


def all_rotations(x):
    """``(4N, C, H, W)`` images, rotation-major, and their ``(4N,)`` int32 labels 0..3."""
    n = x.shape[0]
    images = ops.concat([rot90(x, k) for k in ROTATION_K], 0)
    labels = ops.concat([ops.fill(ms.int32, (n,), label) for label in range(len(ROTATION_K))], 0)
    return images, labels


class ConfidentConsistencyLoss(nn.Cell):
    """``(g_weak, g_strong) -> (loss, mask rate)``: soft pseudo-labels of the weak view where confident."""

    def __init__(self, threshold):
        super().__init__()
        self.threshold = threshold

    def construct(self, g_weak, g_strong):
        p = ops.softmax(ops.stop_gradient(g_weak), -1)
        mask = (ops.max(p, -1)[0] > self.threshold).astype(ms.float32)
        per_sample = ops.sum(-p * ops.log_softmax(g_strong, -1), -1)
        return ops.mean(per_sample * mask), ops.mean(mask)


class RotationStep(nn.Cell):
    """Stage 1's loss cell: ``(batch, t) -> (CE of the 4-way rotation head, (rotation accuracy,))``."""

    def __init__(self, method):
        super().__init__(auto_prefix=False)
        self.model, self.rot_head, self.images = method.model, method.rot_head, method.params.rot_images

    def construct(self, batch, t):
        x, labels = all_rotations(ops.concat((batch["x_s"][:self.images], batch["x_t"][:self.images]), 0))
        _, f = self.model(x)
        g = self.rot_head(f)
        return cross_entropy(g, labels), (accuracy(g, labels),)


@METHODS.register("pac", params=PacParams)
class PAC(Method):
    log_keys = Method.log_keys + ("cons", "mask_rate")
    uses_target = True

    def __init__(self, params, model, regularizers=(), num_classes=10, train_cfg=None, model_factory=None):
        if regularizers:
            raise ValueError("pac takes no regularizers; remove the regularizers section")
        super().__init__(params, model, regularizers, num_classes, train_cfg, model_factory)
        if not 0.0 <= params.threshold <= 1.0:
            raise ValueError(f"method.threshold must be in [0, 1] (a softmax confidence), got {params.threshold}")
        if params.rot_iters < 0 or params.rot_images < 1:
            raise ValueError(f"method.rot_iters must be >= 0 and method.rot_images >= 1, got {params.rot_iters} "
                             f"and {params.rot_images}")
        self.rot_head = CosineHead(model.features_dim, len(ROTATION_K), params.rot_temperature)
        self.consistency = ConfidentConsistencyLoss(params.threshold)
        object.__setattr__(self, "_rotation_step", RotationStep(self))  # not a child: names stay under model

    @property
    def strong_views(self):
        return 1

    def phases(self):
        rotation = [Phase(ROTATION_PHASE, self.params.rot_iters)] if self.params.rot_iters > 0 else []
        return rotation + [Phase("train", self.train_cfg.iters)]

    def step_log_keys(self, phase):
        return ("loss", "rot_acc") if phase.name == ROTATION_PHASE else ("loss",) + self.log_keys

    def param_groups(self, phase):
        if phase.name != ROTATION_PHASE:
            return super().param_groups(phase)
        head = {id(p) for p in self.model.head.trainable_params()}  # the class head waits for stage 2
        groups = [([p for p in params if id(p) not in head], mult) for params, mult in self.model.lr_groups().values()]
        groups.append((self.rot_head.trainable_params(), getattr(self.model, "head_lr_mult", 1.0)))
        return {"gen": [(p, m) for p, m in groups if p]}

    def extra_params(self):
        return []  # the rotation head trains in stage 1 only

    def loss_cells(self, phase):
        return {"gen": self._rotation_step if phase.name == ROTATION_PHASE else self}

    def construct(self, batch, t):
        g_s, _ = self.model(batch["x_s"])
        cls = cross_entropy(g_s, batch["y_s"])
        if self.labelled_target:
            g_tl, _ = self.model(batch["x_tl"])
            cls = cls + cross_entropy(g_tl, batch["y_tl"])
        g_weak, _ = self.model(batch["x_t"])
        g_strong, _ = self.model(batch["x_t_strong"])
        cons, mask_rate = self.consistency(g_weak, g_strong)
        return cls + self.params.weight * cons, (cls, accuracy(g_s, batch["y_s"]), cons, mask_rate)
