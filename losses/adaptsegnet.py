"""AdaptSegNet: output-space adversarial adaptation for segmentation (Tsai et al., CVPR 2018).

Official code: wasidennis/AdaptSegNet, ``train_gta2cityscapes_multi.py``. Per iteration, with
P = softmax of logits upsampled (bilinear, align_corners=True) to the input size, a discriminator
D_l per output level l (main = layer4 classifier, aux = layer3 classifier), source label 0 and
target label 1:

    G:   L_seg(main) + aux_weight L_seg(aux) + adv_weight BCE(D_main(P_t), 0) + adv_weight_aux BCE(D_aux(P_t), 0)
    D_l: 1/2 BCE(D_l(P_s.detach()), 0) + 1/2 BCE(D_l(P_t.detach()), 1)

The official loop backpropagates all terms from ONE forward pass of the source and the target
image (D's ``requires_grad`` off for the G terms, predictions detached for the D terms) and then
steps the SGD optimizer of G and the Adam optimizers of the D's. Here that is one joint phase
(``Phase.joint``): a single ``value_and_grad`` over G's and the D's parameters of
``G terms + D terms``, where the G terms see D with ``stop_gradient`` weights and the D terms see
detached predictions, so each optimizer gets exactly its own gradient. Paper settings: G = SGD
2.5e-4 (classifier x10), momentum 0.9, wd 5e-4, poly 0.9 over 250k iterations stopping at 150k;
D = Adam 1e-4, betas (0.9, 0.99), poly; aux_weight 0.1, adv_weight 0.001, adv_weight_aux 0.0002.
Single-level AdaptSegNet is a network without the auxiliary output (one discriminator).
"""
from dataclasses import dataclass, field
from typing import Any, Dict

import mindspore as ms
from mindspore import nn, ops

from engine.registry import DISCRIMINATORS, METHODS
from losses.base import JOINT, Phase
from losses.seg_source_only import SegSourceOnly, SegSourceOnlyParams, pixel_accuracy
from models.modules import binary_cross_entropy_with_logits

SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0


@dataclass
class AdaptSegNetParams(SegSourceOnlyParams):
    name: str = "adaptsegnet"
    adv_weight: float = 0.001         # lambda_adv of the main output (official LAMBDA_ADV_TARGET2)
    adv_weight_aux: float = 0.0002    # lambda_adv of the auxiliary output (LAMBDA_ADV_TARGET1)
    disc_channels: int = 64           # ndf of the fully-convolutional discriminators
    disc_optim: Dict[str, Any] = field(default_factory=lambda: {
        "name": "adam", "lr": 1e-4, "betas": [0.9, 0.99], "weight_decay": 0.0})  # schedule: optim's (poly)


def _bce(logits, label):
    return binary_cross_entropy_with_logits(logits, ops.full_like(logits, label))


@METHODS.register("adaptsegnet", params=AdaptSegNetParams)
class AdaptSegNet(SegSourceOnly):
    log_keys = ("seg", "seg_aux", "pix_acc_s", "adv", "adv_aux", "d_loss", "d_loss_aux", "d_acc")
    uses_target = True

    def __init__(self, params, model, regularizers=(), num_classes=19, train_cfg=None, model_factory=None):
        super().__init__(params, model, regularizers, num_classes, train_cfg, model_factory)
        levels = 2 if model.multi_level else 1
        self.discriminators = nn.CellList([DISCRIMINATORS.build("fc", num_classes, params.disc_channels)
                                           for _ in range(levels)])
        self.adv_weights = (params.adv_weight, params.adv_weight_aux)[:levels]

    def phases(self):
        return [Phase("train", self.train_cfg.iters, ("gen", "disc"), group_optim={"disc": self.params.disc_optim},
                      joint=True)]

    def param_groups(self, phase):
        return {"gen": [(p, m) for p, m in self.model.lr_groups().values() if p],
                "disc": [(self.discriminators.trainable_params(), 1.0)]}

    def loss_cells(self, phase):
        return {JOINT: self}

    def construct(self, batch, t):
        y_s, x_t = batch["y_s"], batch["x_t"]
        main_s, aux_s = self.segment(batch["x_s"], y_s.shape[1:])
        main_t, aux_t = self.segment(x_t, x_t.shape[2:])
        total, seg, seg_aux = self.seg_loss(main_s, aux_s, y_s)
        adv, d_loss, d_acc = [], [], []
        for disc, weight, out_s, out_t in zip(self.discriminators, self.adv_weights, (main_s,) + aux_s,
                                              (main_t,) + aux_t):
            p_s, p_t = ops.softmax(out_s, 1), ops.softmax(out_t, 1)
            adv_l = _bce(disc(p_t, True), SOURCE_LABEL)  # G: make target outputs look like source ones
            d_s, d_t = disc(ops.stop_gradient(p_s)), disc(ops.stop_gradient(p_t))
            d_l = 0.5 * _bce(d_s, SOURCE_LABEL) + 0.5 * _bce(d_t, TARGET_LABEL)
            total = total + weight * adv_l + d_l
            adv.append(adv_l)
            d_loss.append(d_l)
            d_acc.append(0.5 * (ops.mean((d_s < 0).astype(ms.float32)) + ops.mean((d_t > 0).astype(ms.float32))))
        zero = ops.zeros((), ms.float32)
        adv_aux, d_loss_aux = (adv[1], d_loss[1]) if len(adv) > 1 else (zero, zero)
        return total, (seg, seg_aux, pixel_accuracy(main_s, y_s, self.params.ignore_index), adv[0], adv_aux,
                       d_loss[0], d_loss_aux, d_acc[0])
