"""Segmentation metrics from a confusion matrix accumulated over a whole split (NumPy).

Per-class IoU = TP / (TP + FP + FN) on pixels whose ground truth is not ignored, mIoU = the mean
over classes present in the ground truth or the prediction. This is the Cityscapes benchmark's
definition (``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling``, classes with a zero
denominator are NaN and skipped in the average) and AdaptSegNet's ``compute_iou.py`` (one histogram
over the whole split, ``np.nanmean`` of the per-class IoU); tests/test_metrics.py checks both.
"""
import numpy as np


def confusion_matrix(pred, label, num_classes, ignore_index=255):
    """int64 (K, K) counts, rows = ground truth, columns = prediction.

    Pixels whose label equals ``ignore_index`` or lies outside [0, K) are skipped; a prediction
    outside [0, K) on a counted pixel is an error.
    """
    pred, label = np.asarray(pred).reshape(-1), np.asarray(label).reshape(-1)
    if pred.shape != label.shape:
        raise ValueError(f"prediction has {pred.size} pixels, label {label.size}; they must match")
    k = int(num_classes)
    valid = (label >= 0) & (label < k) & (label != ignore_index)
    pred, label = pred[valid].astype(np.int64), label[valid].astype(np.int64)
    if pred.size and (pred.min() < 0 or pred.max() >= k):
        raise ValueError(f"predictions must be class ids in 0..{k - 1}, got {pred.min()}..{pred.max()}")
    return np.bincount(label * k + pred, minlength=k * k).reshape(k, k)


def iou(conf):
    """Per-class IoU TP / (TP + FP + FN); NaN for classes absent from both ground truth and prediction."""
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    denom = conf.sum(axis=0) + conf.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def mean_iou(conf):
    """Mean of :func:`iou` over the classes where it is defined (NaN if none is)."""
    values = iou(conf)
    return float(np.mean(values[~np.isnan(values)])) if (~np.isnan(values)).any() else float("nan")


def pixel_accuracy(conf):
    """Fraction of counted pixels predicted correctly (NaN when none was counted)."""
    conf = np.asarray(conf)
    total = conf.sum()
    return float(np.trace(conf) / total) if total else float("nan")


class ConfusionAccumulator:
    """Sums :func:`confusion_matrix` over batches so the scores cover the whole split, not per image."""

    def __init__(self, num_classes, ignore_index=255):
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.conf = np.zeros((self.num_classes, self.num_classes), np.int64)

    def add(self, pred, label):
        self.conf += confusion_matrix(pred, label, self.num_classes, self.ignore_index)
        return self

    def reset(self):
        self.conf[:] = 0

    def iou(self):
        return iou(self.conf)

    def mean_iou(self):
        return mean_iou(self.conf)

    def pixel_accuracy(self):
        return pixel_accuracy(self.conf)
