"""Helpers shared by the file-backed digit loaders: resizing, count checks, domain assembly."""
import numpy as np

from datasets.base import ArrayDomain


def bilinear_matrix(n_in, n_out):
    """(n_out, n_in) float32 interpolation matrix, half-pixel centres (torch align_corners=False)."""
    coords = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(coords).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = coords - lo
    mat = np.zeros((n_out, n_in), np.float32)
    np.add.at(mat, (np.arange(n_out), lo), 1 - frac)
    np.add.at(mat, (np.arange(n_out), hi), frac)
    return mat


def to_float_images(images, size):
    """NHWC uint8 or float [0, 1] -> float32 NHWC in [0, 1], bilinearly resized to ``size`` x ``size``."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    images = images.astype(np.float32, copy=False)
    h, w = images.shape[1:3]
    if (h, w) != (size, size):
        planes = np.moveaxis(images, 3, 1)  # batched (h, w) matrices: rows @ plane @ cols.T
        images = np.moveaxis(bilinear_matrix(h, size) @ planes @ bilinear_matrix(w, size).T, 1, 3)
        images = np.clip(images, 0.0, 1.0)
    return np.ascontiguousarray(images)


def check_count(dataset, split, found, expected, verify):
    """One-line error when ``verify`` and the split does not have the published number of images."""
    if verify and found != expected:
        raise ValueError(f"{dataset} {split}: found {found} images, the published set has {expected}; "
                         "replace the files with the complete dataset or set "
                         "data.source.verify_counts=false (or data.target.verify_counts=false)")


def frozen_domain(images, labels):
    """An :class:`ArrayDomain` over cached arrays, made read-only so no caller can corrupt the cache."""
    domain = ArrayDomain(images, labels)
    domain.images.flags.writeable = False
    domain.labels.flags.writeable = False
    return domain
