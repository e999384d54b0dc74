"""Scores of a model on a labelled domain, one evaluator per task, chosen by the domain's ``task``.

Every evaluator has the signature ``(model, domain, transform, batch_size, loader=None,
on_batch=None) -> {"metric", "score", "per_class", "n", "extra"}``: ``metric`` names the
score (``acc`` for classification, ``miou`` for segmentation), ``per_class`` lists the per-class
numbers in ``domain.class_names`` order and ``extra`` holds secondary numbers. ``on_batch(indices,
predictions)`` sees every batch of predictions (eval.py writes colourised maps with it). The
model runs in inference mode over the whole domain, in order, without augmentation; the trainer
and eval.py call :func:`evaluate` and never ask which task they are in.
"""
import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from engine.metrics import ConfusionAccumulator
from engine.registry import EVALUATORS


def evaluate(model, domain, transform, batch_size, loader=None, on_batch=None):
    """Dispatch to the evaluator of ``domain.task`` (``classification`` when the domain names none)."""
    evaluator = EVALUATORS.get(getattr(domain, "task", "classification"))
    was_training = model.training
    model.set_train(False)
    try:
        return evaluator(model, domain, transform, batch_size, loader, on_batch)
    finally:
        model.set_train(was_training)


def _batches(domain, batch_size, transform, loader):
    from datasets.base import iterate_eval

    start = 0
    for x, y in iterate_eval(domain, batch_size, transform, loader):
        yield np.arange(start, start + len(y)), x, y
        start += len(y)


def predict(model, domain, transform, batch_size, loader=None, indices=None):
    """``{"logits", "probs", "features", "labels"}`` (NumPy, in ``indices`` order) of a classifier on ``domain``.

    The label-free validators and the analysis tools read the model through this one pass:
    inference mode, no augmentation, ``indices`` (default: the whole domain) in batches. ``labels``
    are the domain's (unused by anything that selects on the target).
    """
    from datasets.base import to_nchw

    indices = np.arange(len(domain)) if indices is None else np.asarray(indices).reshape(-1)
    was_training = model.training
    model.set_train(False)
    logits, features = [], []
    try:
        for start in range(0, len(indices), batch_size):
            idx = indices[start:start + batch_size]
            images = loader(domain, idx) if loader is not None else domain.images[idx]
            out = model(Tensor(to_nchw(transform(images, None))))
            logits.append(out[0].asnumpy())
            features.append(out[1].asnumpy().reshape(len(idx), -1))
    finally:
        model.set_train(was_training)
    logits = np.concatenate(logits).astype(np.float64)
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return {"logits": logits, "probs": shifted / shifted.sum(1, keepdims=True),
            "features": np.concatenate(features), "labels": np.asarray(domain.labels)[indices]}


@EVALUATORS.register("classification")
def classification(model, domain, transform, batch_size, loader=None, on_batch=None):
    """Overall accuracy and per-class accuracy (recall); batches of at least 64 images."""
    preds, labels = [], []
    for idx, x, y in _batches(domain, max(batch_size, 64), transform, loader):
        pred = model(Tensor(x))[0].asnumpy().argmax(-1)
        if on_batch is not None:
            on_batch(idx, pred)
        preds.append(pred)
        labels.append(y)
    preds, labels = np.concatenate(preds), np.concatenate(labels)
    per_class = [float((preds[labels == c] == c).mean()) if (labels == c).any() else float("nan")
                 for c in range(domain.num_classes)]
    acc = float((preds == labels).mean())
    return {"metric": "acc", "score": acc, "per_class": per_class, "n": int(len(labels)), "extra": {}}


class DensePrediction(nn.Cell):
    """``x -> argmax over classes`` of the main logits upsampled bilinearly to ``size`` (the label's (H, W)).

    align_corners=True, as AdaptSegNet's evaluation (``nn.Upsample(size=(1024, 2048), mode='bilinear',
    align_corners=True)``); upsampling and argmax run on the device, only the class map comes back.
    """

    def __init__(self, model, size):
        super().__init__(auto_prefix=False)
        self.model, self.size = model, tuple(size)

    def construct(self, x):
        logits = self.model(x)[0]
        if logits.shape[2:] != self.size:
            logits = ops.interpolate(logits, size=self.size, mode="bilinear", align_corners=True)
        return ops.argmax(logits, 1).astype(ms.int32)


@EVALUATORS.register("segmentation")
def segmentation(model, domain, transform, batch_size, loader=None, on_batch=None):
    """mIoU over the whole split (one confusion matrix, not a mean of per-image IoUs), per-class IoU, pixel accuracy."""
    conf = ConfusionAccumulator(domain.num_classes, getattr(domain, "ignore_index", 255))
    predictors = {}
    n = 0
    for idx, x, y in _batches(domain, batch_size, transform, loader):
        size = tuple(y.shape[1:])
        if size not in predictors:
            predictors[size] = DensePrediction(model, size)
        pred = predictors[size](Tensor(x)).asnumpy()
        if on_batch is not None:
            on_batch(idx, pred)
        conf.add(pred, y)
        n += len(y)
    per_class = conf.iou()
    miou = conf.mean_iou()
    return {"metric": "miou", "score": miou, "per_class": [float(v) for v in per_class], "n": n,
            "extra": {"pixel_acc": conf.pixel_accuracy()}}
