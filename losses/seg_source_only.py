"""Source-only semantic segmentation: pixel-wise cross-entropy on labelled source images.

The network's main logits (and, for multi-level networks such as AdaptSegNet's DeepLab-v2, its
auxiliary layer3 logits) are upsampled bilinearly (align_corners=True) to the label size, as
AdaptSegNet's ``interp``, and scored with cross-entropy over the pixels whose label is not
``ignore_index``:  L = CE(main) + aux_weight * CE(aux)  (AdaptSegNet's ``lambda_seg = 0.1``).
It is also the oracle when the "source" is labelled target data.
"""
from dataclasses import dataclass

import mindspore as ms
from mindspore import ops

from engine.config import MethodParams
from engine.registry import METHODS
from losses.base import Method


@dataclass
class SegSourceOnlyParams(MethodParams):
    name: str = "seg_source_only"
    aux_weight: float = 0.1          # weight of the auxiliary (layer3) output's loss; unused without one
    ignore_index: int = 255


def upsample(logits, size):
    """Bilinear, align_corners=True (AdaptSegNet's ``nn.Upsample(..., align_corners=True)``); no-op at ``size``."""
    if logits.shape[2:] == size:
        return logits
    return ops.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def pixel_accuracy(logits, labels, ignore_index):
    valid = (labels != ignore_index).astype(ms.float32)
    hit = (ops.argmax(logits, 1) == labels).astype(ms.float32) * valid
    return ops.sum(hit) / ops.maximum(ops.sum(valid), 1.0)


@METHODS.register("seg_source_only", params=SegSourceOnlyParams)
class SegSourceOnly(Method):
    log_keys = ("seg", "seg_aux", "pix_acc_s")

    def __init__(self, params, model, regularizers=(), num_classes=19, train_cfg=None, model_factory=None):
        if regularizers:
            raise ValueError(f"{params.name} takes no regularizers: they are written for classification features")
        if not hasattr(model, "lr_groups") or not hasattr(model, "net"):
            raise ValueError(f"method {params.name} needs a segmentation network (model.backbone one of the "
                             "segmenters, e.g. deeplabv2 or digitscenes_net)")
        super().__init__(params, model, regularizers, num_classes, train_cfg, model_factory)

    def cross_entropy(self, logits, labels):
        return ops.cross_entropy(logits, labels, ignore_index=self.params.ignore_index)

    def segment(self, x, size):
        """Main and auxiliary logits of ``x``, upsampled to ``size``: ``(main, (aux, ...))``."""
        main, aux = self.model(x)
        return upsample(main, size), tuple(upsample(a, size) for a in aux)

    def seg_loss(self, main, aux, labels):
        """``(aux_weight-weighted total, main CE, aux CE)``; the aux CE is 0 without an auxiliary output."""
        seg = self.cross_entropy(main, labels)
        seg_aux = self.cross_entropy(aux[0], labels) if aux else ops.zeros((), ms.float32)
        return seg + self.params.aux_weight * seg_aux, seg, seg_aux

    def construct(self, batch, t):
        y_s = batch["y_s"]
        main, aux = self.segment(batch["x_s"], y_s.shape[1:])
        total, seg, seg_aux = self.seg_loss(main, aux, y_s)
        return total, (seg, seg_aux, pixel_accuracy(main, y_s, self.params.ignore_index))
