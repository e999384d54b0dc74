"""Scores of a model on a labelled domain, one evaluator per task, chosen by the domain's ``task``.

Every evaluator has the signature ``(model, domain, transform, batch_size, loader=None,
on_batch=None) -> {"metric", "score", "per_class", "n", "extra"}``: ``metric`` names the
score (``acc`` for classification and partial targets, ``hscore`` for open-set targets, ``miou`` for
segmentation), ``per_class`` lists the per-class numbers in ``domain.class_names`` order and
``extra`` holds secondary numbers. ``on_batch(indices,
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


def _logits_and_labels(model, domain, transform, batch_size, loader, on_batch):
    """Logits (float64) and labels of the whole domain in order; ``on_batch`` sees each batch's argmax."""
    logits, labels = [], []
    for idx, x, y in _batches(domain, max(batch_size, 64), transform, loader):
        out = model(Tensor(x))[0].asnumpy().astype(np.float64)
        if on_batch is not None:
            on_batch(idx, out.argmax(-1))
        logits.append(out)
        labels.append(y)
    return np.concatenate(logits), np.concatenate(labels)


def class_recalls(pred, labels, classes):
    """``[accuracy on the images of class c for c in classes]``, NaN for a class with no image."""
    return [float((pred[labels == c] == c).mean()) if (labels == c).any() else float("nan") for c in classes]


def entropy_threshold(num_logits):
    """DANCE's rho = ln(K) / 2 for K classes (the official configs' train.thr: 1.15, 1.49, 1.71 for K = 10, 20, 31)."""
    return float(np.log(num_logits) / 2.0)


def rejecting_predictions(logits, unknown_label):
    """``(predictions, rho)``: the argmax, or ``unknown_label`` where the softmax entropy exceeds rho = ln(K) / 2."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    entropy = -(np.exp(log_p) * log_p).sum(1)
    threshold = entropy_threshold(logits.shape[1])
    return np.where(entropy > threshold, unknown_label, logits.argmax(1)), threshold


def openset_scores(logits, labels, known_classes, unknown_label):
    """Open-set scores of ``logits`` (N, K) against ``labels`` (known classes, or ``unknown_label`` = K).

    As the official DANCE ``eval.py``: a prediction is "unknown" when the entropy of the softmax
    (natural log) exceeds rho = ln(K) / 2, else the argmax. Accuracies are per class (recall): known =
    mean over ``known_classes``, unknown = the recall of ``unknown_label``; H-score = their harmonic
    mean (Fu et al., ECCV 2020; OVANet's ``h_score``); ``os`` = mean over the known classes and
    unknown (eval.py's "per class mean acc"). ``closed_*``: the argmax alone (no rejection) on the
    known-class images.
    """
    pred, threshold = rejecting_predictions(logits, unknown_label)
    closed = np.asarray(logits).argmax(1)
    known = class_recalls(pred, labels, known_classes)
    known_acc = float(np.nanmean(known)) if not np.all(np.isnan(known)) else float("nan")
    unknown_acc = class_recalls(pred, labels, [unknown_label])[0]
    total = known_acc + unknown_acc
    hscore = 2.0 * known_acc * unknown_acc / total if total > 0 else 0.0
    closed_per_class = class_recalls(closed, labels, known_classes)
    return {"hscore": float(hscore), "known_acc": known_acc, "unknown_acc": unknown_acc,
            "os": float(np.nanmean(known + [unknown_acc])), "closed_acc": float(np.nanmean(closed_per_class)),
            "closed_per_class": closed_per_class, "known_per_class": known,
            "unknown_rate": float((pred == unknown_label).mean()), "threshold": threshold}


@EVALUATORS.register("openset")
def openset(model, domain, transform, batch_size, loader=None, on_batch=None):
    """Open-set / open-partial target (datasets/class_split.py): score = H-score of known and unknown accuracy.

    ``per_class`` follows ``domain.class_names`` (the source's K classes, then "unknown"): recall with
    rejection for the known classes and the unknown, NaN for source-private classes (absent from the
    target); the other numbers of :func:`openset_scores` go to ``extra``.
    """
    logits, labels = _logits_and_labels(model, domain, transform, batch_size, loader, on_batch)
    scores = openset_scores(logits, labels, domain.known_classes, domain.unknown_label)
    per_class = [float("nan")] * domain.num_classes
    for c, acc in zip(domain.known_classes, scores["known_per_class"]):
        per_class[c] = acc
    per_class[domain.unknown_label] = scores["unknown_acc"]
    extra = {k: v for k, v in scores.items() if k not in ("hscore", "known_per_class")}
    return {"metric": "hscore", "score": scores["hscore"], "per_class": per_class, "n": int(len(labels)),
            "extra": extra}


@EVALUATORS.register("partial")
def partial(model, domain, transform, batch_size, loader=None, on_batch=None):
    """Partial target (only shared classes; the model predicts all K source classes): accuracy over the target.

    ``extra``: ``shared_class_acc`` (mean per-class accuracy over the shared classes) and
    ``acc_with_rejection`` (the official DANCE ``eval.py`` applies the entropy rejection of
    :func:`openset_scores` in every setting, so a rejected shared-class image counts as an error).
    """
    logits, labels = _logits_and_labels(model, domain, transform, batch_size, loader, on_batch)
    pred = logits.argmax(1)
    per_class = class_recalls(pred, labels, range(domain.num_classes))
    rejecting, _ = rejecting_predictions(logits, logits.shape[1])
    extra = {"shared_class_acc": float(np.nanmean([per_class[c] for c in domain.known_classes])),
             "acc_with_rejection": float((rejecting == labels).mean())}
    return {"metric": "acc", "score": float((pred == labels).mean()), "per_class": per_class,
            "n": int(len(labels)), "extra": extra}


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
