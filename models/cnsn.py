"""CrossNorm and SelfNorm: feature-statistics augmentation and recalibration.

Tang et al., "CrossNorm and SelfNorm for Generalization under Distribution Shifts", ICCV 2021.
With per-instance, per-channel statistics ``mu(x), sigma(x)`` over the spatial positions of a
feature map x (N, C, H, W):

    CrossNorm:  CN(x, x') = sigma(x') (x - mu(x)) / sigma(x) + mu(x')   (training only)
    SelfNorm:   SN(x)     = f mu(x) + g sigma(x) (x - mu(x)) / sigma(x)
                g = sigmoid(BN(a_0 mu + a_1 sigma)),  f = sigmoid(BN(b_0 mu + b_1 sigma))

CrossNorm enlarges the training distribution by exchanging styles (channel statistics) between
instances ("2-instance": x' = another instance of the batch) or between the channels of one
instance ("1-instance"), optionally computing the statistics on random crops. SelfNorm learns a
per-channel recalibration (a grouped ``Conv1d(C, C, 2, groups=C)`` over the (mu, sigma) pair in
the paper, i.e. two weights per channel) of the statistics and is active in train and eval.

Both are inserted by backbones through :func:`build_plugin` from ``model.norm_plugins``. All
randomness is drawn in-graph by a seeded MindSpore random op (reproducible under ``ms.set_seed``),
so every training call differs and eval is deterministic. Statistics use the biased variance
and ``sigma = sqrt(var + eps)``.
"""
import itertools
import math

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Uniform, initializer

POSITIONS = ("after_stem", "in_block")
PLUGIN_KEYS = ("crossnorm", "selfnorm", "positions")
DRAW_SLOTS = 16              # distinct draws per step for up to this many calls of one CrossNorm
_INSTANCES = itertools.count(1)  # per-instance op seed


def instance_stats(x, mask=None, eps=1e-5):
    """Per-instance channel mean and std over H, W (only where ``mask`` (1, 1, H, W) is 1).

    x (N, C, H, W) -> mean, std (N, C, 1, 1); std = sqrt(biased var + eps).
    """
    if mask is None:
        mean = ops.mean(x, (2, 3), True)
        var = ops.mean(ops.square(x - mean), (2, 3), True)
    else:
        area = ops.sum(mask)
        mean = ops.sum(x * mask, (2, 3), True) / area
        var = ops.sum(ops.square(x - mean) * mask, (2, 3), True) / area
    return mean, ops.sqrt(var + eps)


def restyle_affine(content_stats, style_stats):
    """``(scale, shift)`` with ``x scale + shift = sigma_s (x - mu_c) / sigma_c + mu_s``."""
    (mu_c, sd_c), (mu_s, sd_s) = content_stats, style_stats
    scale = sd_s / sd_c
    return scale, mu_s - mu_c * scale


def crossnorm(x, x_other, eps=1e-5):
    """x's content (instance-normalised per channel) with x_other's channel mean and std.

    x, x_other (N, C, H, W) (x_other may have another H, W) -> (N, C, H, W).
    """
    scale, shift = restyle_affine(instance_stats(x, eps=eps), instance_stats(x_other, eps=eps))
    return x * scale + shift


class CrossNorm(nn.Cell):
    """Exchange channel statistics with probability ``p`` per call, in training mode only.

    Args:
        p: probability that a call applies CrossNorm (drawn in-graph each call).
        mode: "2-instance" (statistics of a randomly permuted instance of the batch) or
            "1-instance" (randomly permuted channels of the same instance).
        crop: "none" | "content" | "style" | "both": compute the content and/or style statistics
            on a random box covering at least a fraction ``r ~ U(crop_ratio_min, 1)`` of the map
            (one box for the batch); with a content crop only the box is restyled, as in the paper.
    Shape: (N, C, H, W) -> (N, C, H, W).
    """

    MODES = ("1-instance", "2-instance")
    CROPS = ("none", "content", "style", "both")

    def __init__(self, p=0.5, mode="2-instance", crop="none", crop_ratio_min=0.1, eps=1e-5):
        super().__init__()
        if mode not in self.MODES or crop not in self.CROPS or not 0.0 <= p <= 1.0 or not 0.0 < crop_ratio_min <= 1.0:
            raise ValueError(f"CrossNorm(p={p}, mode={mode!r}, crop={crop!r}, crop_ratio_min={crop_ratio_min}): "
                             f"need 0<=p<=1, mode in {self.MODES}, crop in {self.CROPS}, 0<crop_ratio_min<=1")
        self.p, self.eps, self.crop_ratio_min = p, eps, crop_ratio_min
        self.two_instance = mode == "2-instance"
        self.crop_content = crop in ("content", "both")
        self.crop_style = crop in ("style", "both")
        # Seeded per instance, so a run is reproducible under ms.set_seed. The op is stateful, so each
        # step draws anew; a model called twice in one step (OCR, IIMT) gives both calls the same
        # kernel output, so each call takes its own row, chosen by the ``calls`` counter.
        self.uniform = ops.UniformReal(seed=ms.get_seed() or 0, seed2=next(_INSTANCES))
        self.calls = Parameter(Tensor(0, ms.int32), name="calls", requires_grad=False)

    def draw(self, size):
        """Uniform [0, 1) draws (size,) for this call: row ``calls % DRAW_SLOTS`` of this step's draws."""
        rows = self.uniform((DRAW_SLOTS, size))
        row = ops.gather(rows, self.calls % DRAW_SLOTS, 0)
        return ops.depend(row, ops.assign_add(self.calls, Tensor(1, ms.int32)))

    def random_box(self, h, w, u):
        """(1, 1, H, W) float mask of a box of ceil(s H) x ceil(s W) pixels, s^2 = t + (1 - t) u[0].

        ``u`` (3,) uniform draws: size, top and left.
        """
        side = ops.sqrt(self.crop_ratio_min + (1.0 - self.crop_ratio_min) * u[0])
        bh, bw = ops.ceil(side * h), ops.ceil(side * w)
        top, left = ops.floor(u[1] * (h - bh + 1)), ops.floor(u[2] * (w - bw + 1))
        rows, cols = ops.arange(h).astype(ms.float32), ops.arange(w).astype(ms.float32)
        in_rows = ops.logical_and(rows >= top, rows < top + bh).astype(ms.float32)
        in_cols = ops.logical_and(cols >= left, cols < left + bw).astype(ms.float32)
        return (in_rows.reshape(h, 1) * in_cols.reshape(1, w)).reshape(1, 1, h, w)

    def construct(self, x):
        if not self.training:
            return x
        n, c, h, w = x.shape
        m = n if self.two_instance else c
        u = self.draw(m + 7)  # permutation noise, content box, style box, apply?
        content_mask = self.random_box(h, w, u[m:m + 3]) if self.crop_content else None
        style_mask = self.random_box(h, w, u[m + 3:m + 6]) if self.crop_style else None
        full = None if self.crop_content and self.crop_style else instance_stats(x, None, self.eps)
        content = instance_stats(x, content_mask, self.eps) if self.crop_content else full
        mu_s, sd_s = instance_stats(x, style_mask, self.eps) if self.crop_style else full
        perm = ops.sort(u[:m])[1]  # argsort of uniform noise: a uniformly random permutation
        axis = 0 if self.two_instance else 1
        mu_s, sd_s = ops.gather(mu_s, perm, axis), ops.gather(sd_s, perm, axis)
        scale, shift = restyle_affine(content, (mu_s, sd_s))
        gate = (u[m + 6] < self.p).astype(x.dtype)  # scale 1, shift 0: exactly x
        if content_mask is not None:
            gate = gate * content_mask  # restyle the box only
        return x * (1.0 + gate * (scale - 1.0)) + gate * shift


class SelfNorm(nn.Cell):
    """Recalibrate each channel's std (gate g) and, with ``two=True``, its mean (gate f).

    ``two=False`` is the paper's single-gate variant ``SN(x) = g x``. Shape: (N, C, H, W) -> same.
    """

    def __init__(self, channels, two=True, eps=1e-5):
        super().__init__()
        bound = 1.0 / math.sqrt(2.0)  # PyTorch's default init of Conv1d(C, C, 2, groups=C)
        self.g_weight = Parameter(initializer(Uniform(bound), (channels, 2), ms.float32), name="g_weight")
        self.g_bn = nn.BatchNorm1d(channels)
        self.two, self.eps = two, eps
        if two:
            self.f_weight = Parameter(initializer(Uniform(bound), (channels, 2), ms.float32), name="f_weight")
            self.f_bn = nn.BatchNorm1d(channels)

    @staticmethod
    def gate(weight, bn, mean, std):
        return ops.sigmoid(bn(mean * weight[:, 0] + std * weight[:, 1])).reshape(mean.shape + (1, 1))

    def construct(self, x):
        mean, std = instance_stats(x, eps=self.eps)
        m, s = mean[:, :, 0, 0], std[:, :, 0, 0]
        g = self.gate(self.g_weight, self.g_bn, m, s)
        f = self.gate(self.f_weight, self.f_bn, m, s) if self.two else g
        return x * g + mean * (f - g)  # = (x - mean) g + mean f


def _kwargs(value, key):
    if value is True:
        return {}
    if isinstance(value, dict):
        return value
    raise ValueError(f"model.norm_plugins.{key} must be true, false or a mapping, got {value!r}")


def build_plugin(norm_plugins, channels, position):
    """The plug-in cells of ``model.norm_plugins`` for a backbone position, or None.

    ``norm_plugins = {crossnorm: {p, mode, crop, crop_ratio_min} | true, selfnorm: {two} | true,
    positions: [after_stem, in_block]}`` (positions default ``[after_stem]``). Returns
    ``SequentialCell([CrossNorm, SelfNorm(channels)])`` of the enabled ones when ``position`` is
    listed, else None. Backbones call it at each position they support with that position's
    channel count (LeNet: after_stem 32, in_block 48; ResNet: after_stem 64).
    """
    if position not in POSITIONS:
        raise ValueError(f"unknown norm-plugin position {position!r}; valid: {', '.join(POSITIONS)}")
    cfg = dict(norm_plugins or {})
    unknown = sorted(set(cfg) - set(PLUGIN_KEYS))
    positions = cfg.get("positions", ["after_stem"])
    bad = [p for p in positions if p not in POSITIONS]
    if unknown or bad:
        raise ValueError(f"model.norm_plugins: unknown key(s) {unknown} or position(s) {bad}; "
                         f"keys: {', '.join(PLUGIN_KEYS)}; positions: {', '.join(POSITIONS)}")
    if position not in positions:
        return None
    cells = []
    for key, build in (("crossnorm", CrossNorm), ("selfnorm", lambda **kw: SelfNorm(channels, **kw))):
        if cfg.get(key):
            try:
                cells.append(build(**_kwargs(cfg[key], key)))
            except TypeError as err:
                raise ValueError(f"model.norm_plugins.{key}: {err}") from None
    return nn.SequentialCell(cells) if cells else None
