"""What a method is: a Cell computing ``(loss, aux)`` from a batch dict and progress ``t``.

A method declares its training ``phases`` and, per phase, the parameter ``groups`` that each get
their own optimizer and loss cell (DANN: one group, the GRL flips the sign for the
discriminator; ADDA: a discriminator group then an encoder group). The engine builds one
jitted step per phase from these and never branches on the method's name.

Batch dict keys: ``x_s, y_s, x_t`` always; ``x_s_strong, x_t_strong`` of shape (V*N, C, H, W)
(V independently augmented views of the same N images, view-major) when a method or regularizer
sets ``strong_views = V > 0``; extra host-drawn random tensors from ``host_random``; ``x_tl, y_tl`` (few-shot
labelled target images, semi-supervised DA) when ``data.target_labeled_per_class > 0``.
``t`` is training progress in [0, 1] as a 0-d float32 Tensor, so schedules computed from it
(GRL coefficient, OCR lambda, ramps) never recompile the graph.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import mindspore as ms
from mindspore import nn, ops


@dataclass
class Phase:
    """A training phase: ``iters`` updates of each parameter group in ``groups`` (one optimizer each).

    By default the groups update one after another inside the step, each from a fresh forward
    pass (ADDA: the encoder sees the updated discriminator, as pytorch-adda). ``joint=True``
    takes every group's gradient from one forward pass at the same parameters, then applies all
    updates (AdaptSegNet: one backward, then ``optimizer.step()`` for G and each D); the method
    then provides one loss cell, under the key ``JOINT``, whose gradient routing (detached
    predictions, discriminator weights held fixed) is its own business.
    """
    name: str
    iters: int
    groups: Tuple[str, ...] = ("gen",)
    optim: Dict[str, Any] = field(default_factory=dict)  # overrides of the optim section for this phase
    group_optim: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # further overrides per group
    joint: bool = False

    def update_units(self):
        """``[(loss-cell key, groups it updates)]`` in the order the step runs them."""
        if self.joint:
            return [(JOINT, tuple(self.groups))]
        return [(g, (g,)) for g in self.groups]


JOINT = "joint"


def cross_entropy(logits, labels):
    return ops.cross_entropy(logits, labels)


def accuracy(logits, labels):
    return ops.mean((ops.argmax(logits, -1) == labels).astype(ms.float32))


def running_stat_parameters(model):
    """The BatchNorm running means and variances of ``model`` (backbone, bottleneck, SelfNorm gates)."""
    return tuple(p for _, cell in model.cells_and_names() if isinstance(cell, (nn.BatchNorm1d, nn.BatchNorm2d))
                 for p in (cell.moving_mean, cell.moving_variance))


class Regularizer(nn.Cell):
    """Base of plug-in regularizers: ``construct(model, batch, out, t) -> (weighted loss, aux)``.

    ``out`` is ``(g_s, f_s, g_t, f_t)`` from the method's forward pass, so a regularizer only
    runs the model again when it needs other inputs (augmented or mixed images), through
    :meth:`extra_forward`: a separate training-mode pass (its own batch statistics, dropout on).
    ``updates_running_stats`` says whether that pass also updates the BatchNorm running statistics
    (OCR's official code: yes, its second ``model(x_aug)`` is a plain training forward; IIMT after
    MixMatch's code: no).
    """

    log_keys = ()
    strong_views = 0             # extra augmented views of each source/target image it needs
    needs_target = True
    updates_running_stats = True

    def __init__(self, params, num_classes=None, features_dim=None):
        super().__init__()
        self.params = params
        self.weight = params.weight
        self._running_stats = ()

    def bind_model(self, model):
        """Called by the method with its model: remembers the running statistics to keep (not registered
        as this cell's parameters, so checkpoints name them once, under the model)."""
        object.__setattr__(self, "_running_stats", () if self.updates_running_stats else running_stat_parameters(model))

    def extra_forward(self, model, x):
        """``model(x)`` in training mode; BatchNorm running statistics restored afterwards unless
        ``updates_running_stats`` (the pass still normalises with its own batch statistics)."""
        if not self._running_stats:
            return model(x)
        saved = [ops.stop_gradient(p + 0.0) for p in self._running_stats]
        g, f = model(x)
        restored = [ops.assign(p, s) for p, s in zip(self._running_stats, saved)]
        return ops.depend(g, restored), ops.depend(f, restored)

    def host_random(self, rng, batch_size):
        """Random draws made on the host (seeded per iteration) and fed in as Tensors."""
        return {}


class Method(nn.Cell):
    """Source-supervised cross-entropy plus the subclass's ``align`` term plus regularizers."""

    log_keys = ("cls", "acc_s")
    uses_target = False          # forward target images through the model (alignment methods)
    labelled_target = False      # SSDA: batches carry few-shot labelled target ``x_tl, y_tl`` (set by the trainer)
    needs_target_indices = False  # batches carry ``t_idx``, the target images' indices in their domain (DANCE)

    def __init__(self, params, model, regularizers=(), num_classes=10, train_cfg=None, model_factory=None):
        super().__init__()
        self.params = params
        self.model = model
        self.model_factory = model_factory  # builds another model like ``model`` (ADDA's frozen source encoder)
        self.regularizers = nn.CellList(list(regularizers))
        for reg in regularizers:
            reg.bind_model(model)
        self.forward_target = self.uses_target or any(r.needs_target for r in regularizers)
        self.train_cfg = train_cfg
        self.reg_log_keys = tuple(k for r in regularizers for k in r.log_keys)

    # ------------------------------------------------------------------ declarations
    @property
    def strong_views(self):
        return max([r.strong_views for r in self.regularizers], default=0)

    def phases(self):
        return [Phase("train", self.train_cfg.iters)]

    def step_log_keys(self, phase):
        return ("loss",) + self.log_keys + self.reg_log_keys

    def param_groups(self, phase):
        """``{group: [(params, lr_mult), ...]}``; groups are disjoint."""
        extra = list(self.extra_params()) + self.regularizers.trainable_params()  # e.g. a regularizer's own weights
        groups = list(self.model.lr_groups().values()) + [(extra, 1.0)]
        return {"gen": [(p, m) for p, m in groups if p]}

    def extra_params(self):
        """Trainable parameters the method adds besides the model (e.g. a discriminator)."""
        return []

    def start_phase(self, phase):
        """Hook run when ``phase`` starts fresh (not on resume), e.g. ADDA copies the encoder."""

    def bind_data_config(self, data_cfg):
        """Hook run once with ``cfg.data`` right after the method is built, before any checkpoint is loaded
        (DANCE sizes its target memory bank, one row per target training image; CyCADA builds its image-space
        networks for the images' size)."""

    def phase_source(self, phase, context):
        """Hook run before ``phase`` runs, fresh or resumed (after ``start_phase`` or the checkpoint
        load), with an ``engine.trainer.PhaseContext``: returns the source training domain of the phase,
        or None for the config's own (CyCADA: the source set translated to the target's style)."""
        return None

    def eval_artifacts(self, phase, iteration, context):
        """Hook run (on rank 0) at every evaluation point: may write files into ``context.run_dir``
        (CyCADA: a translation grid PNG)."""

    def loss_cells(self, phase):
        return {"gen": self}

    def host_random(self, rng, batch_size):
        out = {}
        for reg in self.regularizers:
            out.update(reg.host_random(rng, batch_size))
        return out

    # ------------------------------------------------------------------ computation
    def align(self, g_s, f_s, g_t, f_t, t):
        """Method-specific adaptation term ``(loss, aux)``; source-only has none."""
        return ops.zeros((), ms.float32), ()

    def construct(self, batch, t):
        x_s, y_s = batch["x_s"], batch["y_s"]
        n = x_s.shape[0]
        if self.labelled_target:  # SSDA: one CE over source and labelled target, concatenated (MME main.py)
            x_s, y_s = ops.concat((x_s, batch["x_tl"]), 0), ops.concat((y_s, batch["y_tl"]), 0)
        n_labelled = x_s.shape[0]
        if self.forward_target:
            g, f = self.model(ops.concat((x_s, batch["x_t"]), 0))
            g_l, g_t, f_l, f_t = g[:n_labelled], g[n_labelled:], f[:n_labelled], f[n_labelled:]
        else:
            g_l, f_l = self.model(x_s)
            g_t, f_t = g_l, f_l
        cls = cross_entropy(g_l, y_s)
        acc = accuracy(g_l, y_s)
        g_s, f_s = g_l[:n], f_l[:n]  # alignment and regularizers see the source images only
        if not self.forward_target:
            g_t, f_t = g_s, f_s
        align, aux = self.align(g_s, f_s, g_t, f_t, t)
        total = cls + align
        out = (g_s, f_s, g_t, f_t)
        for reg in self.regularizers:
            reg_loss, reg_aux = reg(self.model, batch, out, t)
            total = total + reg_loss
            aux = aux + reg_aux
        return total, (cls, acc) + aux
