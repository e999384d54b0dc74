"""USPS from the LIBSVM files ``usps.bz2`` / ``usps.t.bz2`` in ``cfg.root`` (or Kaggle's ``usps.h5``).

LIBSVM lines are ``label idx:value ...`` with 256 features in [-1, 1] (a 16x16 image, row-major)
and labels 1..10 (digit 0..9 = label - 1). When the LIBSVM file is absent but ``usps.h5`` exists
(groups train/test with ``data`` in [0, 1] and ``target`` 0..9), that is read instead (needs h5py).
Images: (N, 16, 16, 1) float32 in [0, 1], resized to ``data_cfg.image_size``.
"""
import bz2
import os
from functools import lru_cache

import numpy as np

from datasets.download import ensure, from_manifest
from datasets.image_utils import check_count, frozen_domain, to_float_images
from engine.registry import DATASETS

FILES = {"train": "usps.bz2", "test": "usps.t.bz2"}
H5_FILE = "usps.h5"
COUNTS = {"train": 7291, "test": 2007}
SIDE = 16


def read_libsvm(path):
    """(features in [-1, 1] as (N, 256) float32, labels 0..9) of a bz2 LIBSVM file."""
    with bz2.open(path, "rt") as handle:
        lines = [line.split() for line in handle if line.strip()]
    features = np.zeros((len(lines), SIDE * SIDE), np.float32)  # absent sparse entries are 0
    labels = np.empty(len(lines), np.int32)
    for row, (label, *pairs) in enumerate(lines):
        labels[row] = int(float(label)) - 1
        index, value = zip(*(pair.split(":") for pair in pairs)) if pairs else ((), ())
        features[row, np.asarray(index, int) - 1] = np.asarray(value, np.float32)
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must be 1..10 (LIBSVM USPS), found {labels.min() + 1}..{labels.max() + 1}")
    return features, labels


def read_h5(path, split):
    """(pixels in [0, 1] as (N, 256) float32, labels 0..9) of a split of Kaggle's usps.h5."""
    try:
        import h5py
    except ImportError:
        raise ImportError(f"reading {path} needs h5py: pip install h5py (or use the LIBSVM usps.bz2 files)") from None
    with h5py.File(path, "r") as handle:
        return np.asarray(handle[split]["data"], np.float32), np.asarray(handle[split]["target"], np.int32)


@lru_cache(maxsize=4)
def decode(path, split, size):
    if path.endswith(".h5"):
        pixels, labels = read_h5(path, split)
    else:
        features, labels = read_libsvm(path)
        pixels = (features + 1) / 2
    return to_float_images(pixels.reshape(-1, SIDE, SIDE, 1).clip(0, 1), size), labels


@DATASETS.register("usps")
def usps(cfg, split, data_cfg):
    name, h5 = FILES[split], os.path.join(cfg.root, H5_FILE)
    if not os.path.isfile(os.path.join(cfg.root, name)) and os.path.isfile(h5):
        path = h5
    else:
        path = ensure(from_manifest("usps", [name]), cfg.root, cfg.download, "usps")[name]
    images, labels = decode(path, split, data_cfg.image_size)
    check_count("usps", split, len(labels), COUNTS[split], cfg.verify_counts)
    return frozen_domain(images, labels)
