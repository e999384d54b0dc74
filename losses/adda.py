"""ADDA: adversarial discriminative domain adaptation (Tzeng et al., CVPR 2017).

Phase ``source_pretrain``: encoder E and classifier C trained with CE on labelled source.
Phase ``adapt``: a target encoder E_t, initialised from E, is trained against a domain
discriminator D while the source encoder E_s (a frozen copy of E) and C stay fixed:

    L_D   = BCE(D(E_s(x_s)), 1) + BCE(D(E_t(x_t)), 0)        (D's parameters)
    L_adv = BCE(D(E_t(x_t)), 1)                              (E_t's parameters; inverted labels)

Both updates run in one jitted step, D first. At test time target images go through E_t and C.
Here ``self.model`` holds E_t and C (so evaluation needs nothing special) and
``self.source_model`` holds E_s.

E_s is frozen in inference mode, as in pytorch-adda (corenel/pytorch-adda ``core/adapt.py``, where
the source encoder stays in the eval mode ``eval_src`` left it in): dropout off, BatchNorm on its
running statistics, which therefore never drift. ``set_train`` keeps it there whatever the trainer asks.
Deliberate difference: D has one logit and BCE (the paper's loss) where pytorch-adda's critic has
two logits and cross-entropy.
"""
from dataclasses import dataclass, field
from typing import Any, Dict

import mindspore as ms
from mindspore import ops

from engine.config import MethodParams
from engine.registry import DISCRIMINATORS, METHODS
from losses.base import Method, Phase
from models.modules import binary_accuracy, binary_cross_entropy_with_logits


@dataclass
class AddaParams(MethodParams):
    name: str = "adda"
    pretrain_iters: int = 0          # source_pretrain iterations (0: same as train.iters, the adapt phase)
    disc_hidden: int = 500           # the paper's 500-500-1 discriminator
    disc_batch_norm: bool = False
    adapt_optim: Dict[str, Any] = field(default_factory=lambda: {
        "name": "adam", "lr": 0.0002, "betas": [0.5, 0.999], "lr_schedule": "constant", "weight_decay": 0.0})


@METHODS.register("adda", params=AddaParams)
class ADDA(Method):
    def __init__(self, params, model, regularizers=(), num_classes=10, train_cfg=None, model_factory=None):
        if regularizers:
            raise ValueError("adda takes no regularizers: its adapt phase has no classification loss to add them to")
        super().__init__(params, model, regularizers, num_classes, train_cfg, model_factory)
        self.source_model = model_factory()
        for param in self.source_model.trainable_params():
            param.requires_grad = False
        self.discriminator = DISCRIMINATORS.build("mlp", model.features_dim, hidden=params.disc_hidden,
                                                  batch_norm=params.disc_batch_norm)

    def set_train(self, mode=True):
        super().set_train(mode)
        self.source_model.set_train(False)  # the frozen source encoder always runs in inference mode
        return self

    def phases(self):
        return [Phase("source_pretrain", self.params.pretrain_iters or self.train_cfg.iters),
                Phase("adapt", self.train_cfg.iters, ("disc", "gen"), self.params.adapt_optim)]

    def step_log_keys(self, phase):
        if phase.name == "adapt":
            return ("d_loss", "d_acc", "adv_loss")
        return super().step_log_keys(phase)

    def target_encoder_params(self):
        head = {id(p) for p in self.model.head.trainable_params()}
        return [p for p in self.model.trainable_params() if id(p) not in head]

    def param_groups(self, phase):
        if phase.name == "adapt":
            return {"disc": [(self.discriminator.trainable_params(), 1.0)],
                    "gen": [(self.target_encoder_params(), 1.0)]}
        return super().param_groups(phase)

    def start_phase(self, phase):
        if phase.name == "adapt":  # E_s and E_t both start from the pretrained source encoder
            pretrained = dict(self.model.parameters_and_names())
            for name, param in self.source_model.parameters_and_names():
                param.set_data(ms.Tensor(pretrained[name].asnumpy()))

    def loss_cells(self, phase):
        if phase.name == "adapt":
            return {"disc": self.discriminator_loss, "gen": self.target_encoder_loss}
        return super().loss_cells(phase)

    def discriminator_loss(self, batch, t):
        f_s = ops.stop_gradient(self.source_model(batch["x_s"])[1])
        f_t = ops.stop_gradient(self.model(batch["x_t"])[1])
        d = self.discriminator(ops.concat((f_s, f_t), 0))
        label = ops.concat((ops.ones(f_s.shape[:1], ms.float32), ops.zeros(f_t.shape[:1], ms.float32)))
        return binary_cross_entropy_with_logits(d, label), (binary_accuracy(d, label),)

    def target_encoder_loss(self, batch, t):
        d_t = self.discriminator(self.model(batch["x_t"])[1])
        return binary_cross_entropy_with_logits(d_t, ops.ones(d_t.shape, ms.float32)), ()
