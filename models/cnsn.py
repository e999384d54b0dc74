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
so every training call differs and eval is deterministic. Statistics follow the official
``calc_ins_mean_std``: unbiased variance, ``sigma = sqrt(var + eps)`` with eps 1e-5 (CrossNorm) and
1e-12 (SelfNorm).

Segmenters (``models/deeplab.py``) build their plug-ins with :class:`NormPluginBuilder`, which adds
the official segmentation setting (amazon-science/crossnorm-selfnorm,
``segmentation/config/gtav/gtav_fcn50_cnsn.yaml``: ``pos: residual, cn_pos: post, active_num: 1,
mix_prob: 0.5``): per-plug-in positions, the position ``after_block`` (after a residual block's
addition and ReLU), and module-level gating, where :class:`CrossNormSelector` picks ``active_num``
of the network's CrossNorm modules per forward pass and applies them with probability ``p``.
"""
import inspect
import itertools
import math

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Uniform, initializer

POSITIONS = ("after_stem", "in_block")                 # what build_plugin offers (LeNet, DTN, ResNet)
SEGMENTER_POSITIONS = POSITIONS + ("after_block",)      # deeplabv2 also: after the residual addition + ReLU
PLUGIN_KEYS = ("crossnorm", "selfnorm", "positions")
DRAW_SLOTS = 16              # distinct draws per step for up to this many calls of one CrossNorm
_INSTANCES = itertools.count(1)  # per-instance op seed


def instance_stats(x, mask=None, eps=1e-5):
    """Per-instance channel mean and std over H, W (only where ``mask`` (1, 1, H, W) is 1).

    x (N, C, H, W) -> mean, std (N, C, 1, 1); std = sqrt(unbiased var + eps), as the official
    ``calc_ins_mean_std`` (``torch.var``; a single position counts as one degree of freedom).
    """
    if mask is None:
        area = x.shape[2] * x.shape[3]
        mean = ops.mean(x, (2, 3), True)
        squares = ops.sum(ops.square(x - mean), (2, 3), True)
        dof = max(area - 1, 1)
    else:
        area = ops.sum(mask)
        mean = ops.sum(x * mask, (2, 3), True) / area
        squares = ops.sum(ops.square(x - mean) * mask, (2, 3), True)
        dof = ops.maximum(area - 1.0, 1.0)
    return mean, ops.sqrt(squares / dof + eps)


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


class SeededDraws(nn.Cell):
    """Base of the cells that draw uniform numbers in-graph, seeded per instance.

    Seeded per instance, so a run is reproducible under ms.set_seed. The op is stateful, so each
    step draws anew; a model called twice in one step (OCR, IIMT) gives both calls the same
    kernel output, so each call takes its own row, chosen by the ``calls`` counter.
    """

    def __init__(self):
        super().__init__()
        self.uniform = ops.UniformReal(seed=ms.get_seed() or 0, seed2=next(_INSTANCES))
        self.calls = Parameter(Tensor(0, ms.int32), name="calls", requires_grad=False)

    def draw(self, size):
        """Uniform [0, 1) draws (size,) for this call: row ``calls % DRAW_SLOTS`` of this step's draws."""
        rows = self.uniform((DRAW_SLOTS, size))
        row = ops.gather(rows, self.calls % DRAW_SLOTS, 0)
        return ops.depend(row, ops.assign_add(self.calls, Tensor(1, ms.int32)))


class CrossNorm(SeededDraws):
    """Exchange channel statistics with probability ``p`` per call, in training mode only.

    Args:
        p: probability that a call applies CrossNorm (drawn in-graph each call).
        mode: "2-instance" (statistics of a randomly permuted instance of the batch) or
            "1-instance" (randomly permuted channels of the same instance).
        crop: "none" | "content" | "style" | "both": compute the content and/or style statistics
            on a random box (one for the batch), drawn as the official ``cn_rand_bbox`` with beta 1:
            area ratio r ~ U(0, 1), sides ``int(H sqrt r)`` x ``int(W sqrt r)`` centred on a uniform
            pixel, clipped to the map, redrawn until it covers more than ``crop_ratio_min`` (the
            official ``bbx_thres``) of the map; with a content crop only the box is restyled.
    Shape: (N, C, H, W) -> (N, C, H, W).

    Attached to a :class:`CrossNormSelector` (:meth:`attach_selector`), the selector decides per
    forward pass whether this module applies (its own ``p`` is then unused).
    """

    MODES = ("1-instance", "2-instance")
    CROPS = ("none", "content", "style", "both")

    def __init__(self, p=0.5, mode="2-instance", crop="none", crop_ratio_min=0.1, eps=1e-5):
        if mode not in self.MODES or crop not in self.CROPS or not 0.0 <= p <= 1.0 or not 0.0 < crop_ratio_min <= 1.0:
            raise ValueError(f"CrossNorm(p={p}, mode={mode!r}, crop={crop!r}, crop_ratio_min={crop_ratio_min}): "
                             f"need 0<=p<=1, mode in {self.MODES}, crop in {self.CROPS}, 0<crop_ratio_min<=1")
        super().__init__()
        self.p, self.eps, self.crop_ratio_min = p, eps, crop_ratio_min
        self.two_instance = mode == "2-instance"
        self.crop_content = crop in ("content", "both")
        self.crop_style = crop in ("style", "both")
        self.selector, self.selector_index = None, -1
        self.forced_permutation = None

    def force(self, permutation):
        """Test hook: always take the style of ``permutation`` (instances or channels) instead of a random
        one. Graph mode compiles it as a constant, so set it before the first call."""
        self.forced_permutation = Tensor(list(permutation), ms.int32)

    def attach_selector(self, selector):
        """Let ``selector`` decide when this module applies; it registers the module and numbers it."""
        self.selector_index = selector.register()
        self.selector = selector

    BOX_TRIES = 16  # in-graph stand-in for the official redraw loop: P(all 16 too small) < 1e-6 at 0.1

    def random_box(self, h, w, u):
        """(1, 1, H, W) float mask of the official ``cn_rand_bbox(beta=1, bbx_thres=crop_ratio_min)``.

        ``u`` (3 BOX_TRIES,) uniform draws, three per try: area ratio, centre row, centre column. The
        first try covering more than ``crop_ratio_min`` of the map is the box (the whole map if none).
        """
        u = u.reshape(self.BOX_TRIES, 3)
        cut = ops.sqrt(u[:, 0])
        half_h, half_w = ops.floor(ops.floor(h * cut) / 2), ops.floor(ops.floor(w * cut) / 2)
        cy, cx = ops.floor(u[:, 1] * h), ops.floor(u[:, 2] * w)
        top, bottom = ops.clip(cy - half_h, 0, h), ops.clip(cy + half_h, 0, h)
        left, right = ops.clip(cx - half_w, 0, w), ops.clip(cx + half_w, 0, w)
        valid = ((bottom - top) * (right - left) / (h * w) > self.crop_ratio_min).astype(ms.int32)
        first = ops.argmax(valid)  # the first valid try (0 when none is)
        any_valid = valid.max() > 0
        top = ops.where(any_valid, top[first], 0.0)
        bottom = ops.where(any_valid, bottom[first], float(h))
        left = ops.where(any_valid, left[first], 0.0)
        right = ops.where(any_valid, right[first], float(w))
        rows, cols = ops.arange(h).astype(ms.float32), ops.arange(w).astype(ms.float32)
        in_rows = ops.logical_and(rows >= top, rows < bottom).astype(ms.float32)
        in_cols = ops.logical_and(cols >= left, cols < right).astype(ms.float32)
        return (in_rows.reshape(h, 1) * in_cols.reshape(1, w)).reshape(1, 1, h, w)

    def construct(self, x):
        if not self.training:
            return x
        n, c, h, w = x.shape
        m = n if self.two_instance else c
        k = 3 * self.BOX_TRIES
        u = self.draw(m + 2 * k + 1)  # permutation noise, content box, style box, apply?
        content_mask = self.random_box(h, w, u[m:m + k]) if self.crop_content else None
        style_mask = self.random_box(h, w, u[m + k:m + 2 * k]) if self.crop_style else None
        full = None if self.crop_content and self.crop_style else instance_stats(x, None, self.eps)
        content = instance_stats(x, content_mask, self.eps) if self.crop_content else full
        mu_s, sd_s = instance_stats(x, style_mask, self.eps) if self.crop_style else full
        perm = ops.sort(u[:m])[1]  # argsort of uniform noise: a uniformly random permutation
        if self.forced_permutation is not None:
            perm = self.forced_permutation
        axis = 0 if self.two_instance else 1
        mu_s, sd_s = ops.gather(mu_s, perm, axis), ops.gather(sd_s, perm, axis)
        scale, shift = restyle_affine(content, (mu_s, sd_s))
        if self.selector is None:
            gate = (u[m + 2 * k] < self.p).astype(x.dtype)  # scale 1, shift 0: exactly x
        else:
            gate = self.selector.is_active(self.selector_index).astype(x.dtype)
        if content_mask is not None:
            gate = gate * content_mask  # restyle the box only
        return x * (1.0 + gate * (scale - 1.0)) + gate * shift


class SelfNorm(nn.Cell):
    """Recalibrate each channel's std (gate g) and, with ``two=True``, its mean (gate f).

    ``two=False`` (the official default, ``is_two=False``) is the single-gate ``SN(x) = g x``.
    Shape: (N, C, H, W) -> same.
    """

    def __init__(self, channels, two=False, eps=1e-12):
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


class CrossNormSelector(SeededDraws):
    """Module-level CrossNorm gating of the official segmentation code (``active_num``, ``mix_prob``).

    Per training forward pass of the network that owns it: with probability ``p`` choose
    ``active_num`` of its ``num_modules`` CrossNorm modules uniformly without replacement; only those
    apply CrossNorm in this pass, all others are the identity (official ``train_cnsn.py``: host draw
    ``r < mix_prob``, then ``_enable_cross_norm`` with ``np.random.choice(cn_num, active_num,
    replace=False)``; here both draws are in-graph and seeded like CrossNorm's). The network calls
    the selector on its input first (``x = selector(x)``, the identity on x that records the choice);
    the modules read the choice through :meth:`is_active`. Identity and no draw in eval.
    """

    def __init__(self, active_num, p):
        super().__init__()
        self.active_num, self.p = active_num, p
        self.num_modules = 0
        self.forced = None
        self.chosen = Parameter(Tensor([-1] * active_num, ms.int32), name="chosen", requires_grad=False)

    def register(self):
        """Number a new CrossNorm module (0, 1, ... in build order)."""
        self.num_modules += 1
        return self.num_modules - 1

    def force(self, indices):
        """Test hook: always choose ``indices`` (``p`` still applies). Graph mode compiles it as a
        constant, so set it before the network's first call."""
        self.forced = Tensor(list(indices), ms.int32).reshape(self.active_num)

    def construct(self, x):
        if not self.training:
            return x
        u = self.draw(self.num_modules + 1)
        chosen = ops.sort(u[:self.num_modules])[1][:self.active_num].astype(ms.int32)
        if self.forced is not None:
            chosen = self.forced
        chosen = ops.where(u[self.num_modules] < self.p, chosen, ops.full_like(chosen, -1))
        return ops.depend(x, ops.assign(self.chosen, chosen))

    def is_active(self, index):
        """Bool 0-d Tensor: module ``index`` applies in the current forward pass."""
        return (self.chosen == index).any()


class NormPluginBuilder:
    """Builds the plug-in cells of ``model.norm_plugins`` for one network, position by position.

    ``norm_plugins = {crossnorm: {p, mode, crop, crop_ratio_min, positions, active_num} | true,
    selfnorm: {two, positions} | true, positions: [...]}``. A plug-in goes to its own
    ``positions`` if given, else to the top-level ``positions`` (default ``[after_stem]``);
    ``supported`` lists the positions the network offers. ``crossnorm.active_num: k`` turns on
    module-level gating: every CrossNorm built here is attached to one :class:`CrossNormSelector`
    (``self.selector``, probability ``crossnorm.p``), which the network must run on its input at
    the start of each forward pass. The official segmentation setting (SelfNorm single gate in the
    residual branch, CrossNorm 2-instance with style crop after every block, one active per step
    with p = 0.5)::

        {crossnorm: {p: 0.5, mode: 2-instance, crop: style, positions: [after_block], active_num: 1},
         selfnorm: {two: false, positions: [in_block]}}

    Call the builder as ``builder(channels, position) -> SequentialCell([CrossNorm, SelfNorm]) |
    None`` at each position, then :meth:`finalize`.
    """

    def __init__(self, norm_plugins, supported=SEGMENTER_POSITIONS, gating=True):
        cfg = dict(norm_plugins or {})
        self.supported = tuple(supported)
        unknown = sorted(set(cfg) - set(PLUGIN_KEYS))
        # the stem where the network has one (LeNet, ResNet), else its first position (WRN: after_block)
        default_positions = cfg.get("positions", ["after_stem" if "after_stem" in self.supported else self.supported[0]])
        bad = self._unsupported(default_positions, "positions")
        if unknown or bad:
            raise ValueError(f"model.norm_plugins: unknown key(s) {unknown} or position(s) {bad}; "
                             f"keys: {', '.join(PLUGIN_KEYS)}; positions: {', '.join(self.supported)}")
        self.plugins = {}  # key -> (cell kwargs, positions)
        active_num = None
        for key in ("crossnorm", "selfnorm"):
            if cfg.get(key):
                kwargs = dict(_kwargs(cfg[key], key))
                positions = kwargs.pop("positions", default_positions)
                bad = self._unsupported(positions, f"{key}.positions")
                if bad:
                    raise ValueError(f"model.norm_plugins.{key}.positions: unknown position(s) {bad}; "
                                     f"valid here: {', '.join(self.supported)}")
                if key == "crossnorm":
                    active_num = kwargs.pop("active_num", None)
                self.plugins[key] = (kwargs, list(positions))
        self.selector = None
        if active_num is not None:
            if not gating:
                raise ValueError("model.norm_plugins.crossnorm.active_num: this backbone cannot gate its CrossNorm "
                                 "modules; use it with a segmenter (deeplabv2) or remove active_num")
            if isinstance(active_num, bool) or not isinstance(active_num, int) or active_num < 1:
                raise ValueError(f"model.norm_plugins.crossnorm.active_num must be a positive integer, "
                                 f"got {active_num!r}")
            p = self.plugins["crossnorm"][0].get("p", inspect.signature(CrossNorm).parameters["p"].default)
            self.selector = CrossNormSelector(active_num, p)

    def _unsupported(self, positions, key):
        if not isinstance(positions, (list, tuple)):
            raise ValueError(f"model.norm_plugins.{key} must be a list of positions, got {positions!r}")
        return [p for p in positions if p not in self.supported]

    def __call__(self, channels, position):
        if position not in self.supported:
            raise ValueError(f"unknown norm-plugin position {position!r}; valid: {', '.join(self.supported)}")
        cells = []
        for key, build in (("crossnorm", CrossNorm), ("selfnorm", lambda **kw: SelfNorm(channels, **kw))):
            if key in self.plugins and position in self.plugins[key][1]:
                try:
                    cell = build(**self.plugins[key][0])
                except TypeError as err:
                    raise ValueError(f"model.norm_plugins.{key}: {err}") from None
                if key == "crossnorm" and self.selector is not None:
                    cell.attach_selector(self.selector)
                cells.append(cell)
        return nn.SequentialCell(cells) if cells else None

    def finalize(self):
        """Check the gating once the network is built; returns the selector (or None)."""
        if self.selector is not None and self.selector.num_modules < self.selector.active_num:
            raise ValueError(f"model.norm_plugins.crossnorm.active_num={self.selector.active_num} but the network has "
                             f"only {self.selector.num_modules} CrossNorm module(s) at positions "
                             f"{self.plugins['crossnorm'][1]}")
        return self.selector


def build_plugin(norm_plugins, channels, position):
    """The plug-in cells of ``model.norm_plugins`` for a backbone position, or None.

    ``norm_plugins = {crossnorm: {p, mode, crop, crop_ratio_min} | true, selfnorm: {two} | true,
    positions: [after_stem, in_block]}`` (positions default ``[after_stem]``; a plug-in's own
    ``positions`` overrides them). Returns ``SequentialCell([CrossNorm, SelfNorm(channels)])`` of
    the enabled ones when ``position`` is listed, else None. Backbones call it at each position
    they support with that position's channel count (LeNet: after_stem 32, in_block 48; ResNet:
    after_stem 64). Module-level gating (``active_num``) needs a :class:`NormPluginBuilder` owned
    by the network.
    """
    return NormPluginBuilder(norm_plugins, POSITIONS, gating=False)(channels, position)


def plugin_parameter_names(net):
    """Names (as ``net.parameters_and_names()`` gives them) of the norm plug-ins' parameters.

    Pretrained backbone weights have none of them: a loader skips these names.
    """
    ids = {id(p) for _, cell in net.cells_and_names() if isinstance(cell, (SeededDraws, SelfNorm))
           for p in cell.get_parameters()}
    return {name for name, p in net.parameters_and_names() if id(p) in ids}
