"""IIMT: inter- and intra-domain mixup training, as a plug-in regularizer.

Yan et al., "Improve Unsupervised Domain Adaptation with Mixup Training", arXiv 2001.00677
(2020). With C the classifier, f the features, mix(a, b, lam) = lam a + (1 - lam) b and
lam' = max(lam, 1 - lam), lam ~ Beta(alpha, alpha) (one draw per mixed batch, made on the host):

    virtual labels  q_t = sharpen(1/K sum_k softmax(C(aug_k(x_t))), T)     (no gradient)
                    sharpen(p, T) = p^(1/T) / sum_c p_c^(1/T); views: weak + K-1 strong (MixMatch)
    inter, source-dominant  x_st = mix(x_s, x_t, lam'),  L_s = CE(C(x_st), mix(y_s, q_t, lam'))
    inter, target-dominant  x_ts = mix(x_t, x_s, lam'),  L_t = ||softmax(C(x_ts)) - mix(q_t, y_s, lam')||^2
    feature consistency     L_f = ||f(x_st) - mix(f(x_s), f(x_t), lam')||^2  (and likewise for x_ts)
    intra-domain mixup      L_ss = CE(C(mix(x_s, x_s[pi], lam')), mix(y_s, y_s[pi], lam'))
                            L_tt = ||softmax(C(mix(x_t, x_t[pi'], lam'))) - mix(q_t, q_t[pi'], lam')||^2

    L = weight * (w_s L_s + w_f L_f + w_ss L_ss + r(p) w_t (L_t + L_tt)),   r(p) = min(p / ramp, 1)

The target weight alone ramps in, linearly over the first ``ramp`` of training (the paper). There is
no adversary here: the domain-adversarial term is the one of the method IIMT sits on (DANN's
discriminator on f(x_s), f(x_t)). alpha defaults to 1, the paper's recommendation: with small alpha
(0.2) lam' > 0.9 in about two thirds of the draws and the mixes are nearly unmixed.
||.||^2 is the mean squared error over all entries (as MixMatch, whose label guessing IIMT uses).

Extra pass: the K-1 strong views and the four mixed batches go through the model in one forward
pass in training mode (batch statistics, dropout on) that does not update BatchNorm running
statistics, as MixMatch's official code (its label-guess and extra mixed batches run with the
update ops skipped): the running statistics come from the method's own forward pass only.
Shapes: x_s, x_t (N, C, H, W) (equal N), y_s (N,), x_t_strong ((K-1) N, C, H, W) -> scalar.
"""
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import ops

from engine.config import RegularizerParams
from engine.registry import REGULARIZERS
from losses.base import Regularizer


@dataclass
class IimtParams(RegularizerParams):
    name: str = "iimt"
    weight: float = 1.0
    alpha: float = 1.0             # lam ~ Beta(alpha, alpha), lam' = max(lam, 1 - lam)
    K: int = 2                     # views averaged for the virtual labels: weak + K-1 strong
    T: float = 0.5                 # sharpening temperature
    w_inter_src: float = 1.0       # w_s: source-dominant inter-domain CE
    w_consistency: float = 1.0     # w_f: feature-level consistency of both inter-domain mixes
    w_intra_src: float = 1.0       # w_ss: intra-source mixup CE
    w_t: float = 1.0               # target weight (target-dominant + intra-target consistency), ramped
    ramp: float = 0.1              # fraction of training over which w_t ramps linearly 0 -> w_t


def sharpen(p, T):  # noqa: N803 (paper notation)
    """``p^(1/T) / sum_c p_c^(1/T)`` row-wise: (N, C) -> (N, C)."""
    p = ops.pow(p, 1.0 / T)
    return p / ops.sum(p, -1, True)


def mix(a, b, lam):
    """``lam a + (1 - lam) b`` (mixup of inputs, labels or features; lam a scalar)."""
    return lam * a + (1.0 - lam) * b


def soft_cross_entropy(logits, target):
    """``mean_i -sum_c target_ic log softmax(logits)_ic``: (N, C), (N, C) -> scalar."""
    return ops.mean(-ops.sum(target * ops.log_softmax(logits, -1), -1))


def mean_squared_error(a, b):
    """Mean over all entries of ``(a - b)^2``: (N, D), (N, D) -> scalar."""
    return ops.mean(ops.square(a - b))


def linear_ramp(progress, length):
    """``min(p / length, 1)`` (1 when ``length`` is 0); works on a 0-d Tensor in graph."""
    return ops.minimum(progress / length, 1.0) if length > 0 else 1.0


@REGULARIZERS.register("iimt", params=IimtParams)
class MixupTraining(Regularizer):
    """IIMT terms (module docstring); logs each unweighted term and the ramp."""

    log_keys = ("iimt_inter_s", "iimt_inter_t", "iimt_cons", "iimt_intra_s", "iimt_intra_t", "iimt_ramp")
    updates_running_stats = False  # MixMatch: the extra passes leave BatchNorm running statistics alone

    def __init__(self, params, num_classes=None, features_dim=None):
        super().__init__(params, num_classes, features_dim)
        if params.K < 1 or params.T <= 0 or params.alpha <= 0 or params.ramp < 0:
            raise ValueError(f"iimt needs K >= 1, T > 0, alpha > 0 and ramp >= 0, got K={params.K} T={params.T} "
                             f"alpha={params.alpha} ramp={params.ramp}")
        self.strong_views = params.K - 1
        self.num_classes, self.alpha, self.T, self.ramp = num_classes, params.alpha, params.T, params.ramp
        self.w = (params.w_inter_src, params.w_consistency, params.w_intra_src, params.w_t)

    def host_random(self, rng, batch_size):
        lam = rng.beta(self.alpha, self.alpha, size=4)  # inter st, inter ts, intra s, intra t
        return {"iimt_lam": np.maximum(lam, 1.0 - lam).astype(np.float32),
                "iimt_perm_s": rng.permutation(batch_size).astype(np.int32),
                "iimt_perm_t": rng.permutation(batch_size).astype(np.int32)}

    def virtual_labels(self, g_t, g_views):
        """sharpen(mean softmax over the weak logits (N, C) and K-1 strong ones ((K-1) N, C))."""
        p = ops.softmax(g_t, -1)
        if self.strong_views:
            p = p + ops.sum(ops.softmax(g_views, -1).reshape((self.strong_views,) + g_t.shape), 0)
        return ops.stop_gradient(sharpen(p / (self.strong_views + 1), self.T))

    def construct(self, model, batch, out, t):
        x_s, x_t, lam = batch["x_s"], batch["x_t"], batch["iimt_lam"]
        perm_s, perm_t = batch["iimt_perm_s"], batch["iimt_perm_t"]
        _, f_s, g_t, f_t = out
        n, v = x_s.shape[0], self.strong_views * x_t.shape[0]
        x_mix = ops.concat((mix(x_s, x_t, lam[0]), mix(x_t, x_s, lam[1]),
                            mix(x_s, ops.gather(x_s, perm_s, 0), lam[2]),
                            mix(x_t, ops.gather(x_t, perm_t, 0), lam[3])), 0)
        if self.strong_views:
            x_mix = ops.concat((batch["x_t_strong"][:v], x_mix), 0)
        g, f = self.extra_forward(model, x_mix)
        q_t = self.virtual_labels(g_t, g[:v])
        g_st, g_ts, g_ss, g_tt = ops.split(g[v:], n, 0)
        f_st, f_ts = f[v:v + n], f[v + n:v + 2 * n]
        y_s = ops.one_hot(batch["y_s"], self.num_classes, ms.Tensor(1.0, ms.float32), ms.Tensor(0.0, ms.float32))

        inter_s = soft_cross_entropy(g_st, mix(y_s, q_t, lam[0]))
        inter_t = mean_squared_error(ops.softmax(g_ts, -1), mix(q_t, y_s, lam[1]))
        cons = mean_squared_error(ops.concat((f_st, f_ts), 0), ops.concat((mix(f_s, f_t, lam[0]),
                                                                           mix(f_t, f_s, lam[1])), 0))
        intra_s = soft_cross_entropy(g_ss, mix(y_s, ops.gather(y_s, perm_s, 0), lam[2]))
        intra_t = mean_squared_error(ops.softmax(g_tt, -1), mix(q_t, ops.gather(q_t, perm_t, 0), lam[3]))
        ramp = linear_ramp(t, self.ramp)
        w_s, w_f, w_ss, w_t = self.w
        total = w_s * inter_s + w_f * cons + w_ss * intra_s + ramp * w_t * (inter_t + intra_t)
        return self.weight * total, (inter_s, inter_t, cons, intra_s, intra_t, ramp * ops.ones((), ms.float32))
