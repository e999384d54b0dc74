"""DANCE: Domain Adaptative Neighborhood Clustering via Entropy optimization (universal DA).

Saito, Kim, Sclaroff & Saenko, "Universal Domain Adaptation through Self-Supervision", NeurIPS 2020;
official code VisionLearningGroup/DANCE (``train_dance.py``, ``utils/loss.py``,
``models/LinearAverage.py``, ``models/basenet.py``). Per iteration, with p = softmax:

    L = CE(C(f_s), y_s) + eta * (L_nc + L_es)
    L_nc = H(softmax([C(f_t), f^_t M^T / T, f^_t f^_t^T / T]))     (neighbourhood clustering)
    L_es = -mean max(|H(p_t) - rho|, m)                               (entropy separation)

C is the cosine classifier ``W f^ / T`` (T = 0.05, ``models.modules.CosineHead``) whose weight rows
are renormalised to unit length before every forward pass (``C1.module.weight_norm()``), f^ the
L2-normalised target features, M the target memory bank (one row per target training image). In
the similarity to M the columns of the batch's own images are set to -1/T (their fresh features
sit in the batch block instead), and in the batch block the diagonal (self-similarity) too.
H(q) = -sum q log(q + 1e-5), mean over the batch (``utils/loss.py``); rho = ln(K) / 2, m = 0.5,
eta = 0.05. After the step the bank rows of the batch take the detached normalised features
(``LinearAverage.update_weight``: ``momentum * old + (1 - momentum) * new``, renormalised; the
first update ignores the momentum; the official configs use momentum 0; the bank starts at zero).

At test time an image whose prediction entropy exceeds rho is "unknown" (engine/evaluators.py).
Source and target go through the network in separate forward passes, as the official loop does
(BatchNorm statistics per domain). Shapes: g_t (B, K), f_t (B, F), memory (N, F) -> scalars.
Deviations: no class-balanced source sampler (the official ``class_balance: true``); fp32, not
apex O1.
"""
import math
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from engine.config import MethodParams
from engine.registry import METHODS
from losses.base import Method, accuracy, cross_entropy
from models.modules import l2_normalize

LOG_EPS = 1e-5  # utils/loss.py: p * log(p + 1e-5)


@dataclass
class DanceParams(MethodParams):
    name: str = "dance"
    eta: float = 0.05             # weight of L_nc and L_es (train.eta)
    margin: float = 0.5           # m of the entropy separation (train.margin)
    threshold: float = 0.0        # rho; 0 = ln(K) / 2 (the official train.thr: 1.15 / 1.49 / 1.71, K = 10 / 20 / 31)
    temperature: float = 0.05     # T of the memory and batch similarities (model.temp; the cosine head has its own)
    memory_momentum: float = 0.0  # LinearAverage momentum (train.momentum; 0 in every official config)


def entropy(logits):
    """``-mean_i sum_k p_ik log(p_ik + 1e-5)``, p = softmax(logits) (official ``entropy``)."""
    p = ops.softmax(logits, -1)
    return -ops.mean(ops.sum(p * ops.log(p + LOG_EPS), -1))


def entropy_separation(logits, rho, margin):
    """``-mean_i max(|H(p_i) - rho|, margin)`` (official ``entropy_margin`` with ``hinge``)."""
    p = ops.softmax(logits, -1)
    h = -ops.sum(p * ops.log(p + LOG_EPS), -1)
    return -ops.mean(ops.maximum(ops.abs(h - rho), margin))


def neighbourhood_clustering(g_t, f_unit, memory, idx, temperature):
    """Entropy of the similarities of each target image to the prototypes (``g_t``), the memory bank
    and the other batch images; memory rows ``idx`` (the batch's own) and self-pairs at -1/T."""
    masked = -1.0 / temperature
    to_memory = ops.matmul(f_unit, memory.T) / temperature
    own_rows = ops.zeros((memory.shape[0],), ms.float32)
    own_rows = ops.tensor_scatter_elements(own_rows, idx, ops.ones(idx.shape, ms.float32), 0)
    to_memory = ops.where(own_rows.reshape(1, -1) > 0, masked, to_memory)
    to_batch = ops.matmul(f_unit, f_unit.T) / temperature
    to_batch = ops.where(ops.eye(f_unit.shape[0], f_unit.shape[0], ms.bool_), masked, to_batch)
    return entropy(ops.concat((g_t, to_memory, to_batch), 1))


class MemoryBank(nn.Cell):
    """One L2-normalised feature per target training image (non-trainable Parameter, zeros at start)."""

    def __init__(self, size, dim, momentum=0.0):
        super().__init__()
        self.memory = Parameter(Tensor(np.zeros((size, dim), np.float32)), name="memory", requires_grad=False)
        self.filled = Parameter(Tensor(0.0, ms.float32), name="filled", requires_grad=False)  # LinearAverage.flag
        self.momentum = momentum

    def update(self, f_unit, idx):
        """Rows ``idx`` <- normalise(momentum * old + (1 - momentum) * f_unit) (momentum 0 on the first update)."""
        momentum = self.momentum * self.filled
        rows = l2_normalize(momentum * ops.gather(self.memory, idx, 0) + (1.0 - momentum) * f_unit)
        done = ops.scatter_update(self.memory, idx, rows)
        return ops.depend(ops.assign(self.filled, ops.ones((), ms.float32)), done)


def target_train_size(data_cfg):
    """Images in the target training domain after the class split (the memory bank's rows)."""
    from datasets.class_split import class_split_of
    from engine.data import build_domain

    target = build_domain(data_cfg.target, "train", data_cfg)
    split = class_split_of(data_cfg, target.num_classes)
    return len(target) if split is None else int((split.target_labels(target.labels) >= 0).sum())


@METHODS.register("dance", params=DanceParams)
class DANCE(Method):
    log_keys = Method.log_keys + ("nc", "es")
    uses_target = True
    needs_target_indices = True  # the trainer adds batch["t_idx"]: the target images' rows in the bank

    def __init__(self, params, model, regularizers=(), num_classes=10, train_cfg=None, model_factory=None):
        if regularizers:
            raise ValueError("dance takes no regularizers; remove the regularizers section")
        if not hasattr(getattr(model, "head", None), "normalize_weights"):
            raise ValueError("dance needs the cosine classifier: set model.head: cosine "
                             "(model.head_kwargs: {temperature: 0.05})")
        super().__init__(params, model, regularizers, num_classes, train_cfg, model_factory)
        self.rho = params.threshold or math.log(num_classes) / 2.0
        self.bank = None

    def bind_data_config(self, data_cfg):
        """Sizes the memory bank to the target training domain (engine.trainer.build_method calls it)."""
        self.bank = MemoryBank(target_train_size(data_cfg), self.model.features_dim, self.params.memory_momentum)

    def construct(self, batch, t):
        # the prototypes are renormalised before the forward passes (official: C1.module.weight_norm())
        normalized = self.model.head.normalize_weights()
        x_s, y_s, x_t = ops.depend(batch["x_s"], normalized), batch["y_s"], ops.depend(batch["x_t"], normalized)
        g_s, _ = self.model(x_s)
        g_t, f_t = self.model(x_t)
        cls = cross_entropy(g_s, y_s)
        f_unit = l2_normalize(f_t)
        idx = batch["t_idx"]
        nc = neighbourhood_clustering(g_t, f_unit, self.bank.memory, idx, self.params.temperature)
        es = entropy_separation(g_t, self.rho, self.params.margin)
        total = cls + self.params.eta * (nc + es)
        total = ops.depend(total, self.bank.update(ops.stop_gradient(f_unit), idx))
        return total, (cls, accuracy(g_s, y_s), nc, es)
