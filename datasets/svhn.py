"""SVHN (cropped digits) from ``train_32x32.mat`` / ``test_32x32.mat`` in ``cfg.root``.

``X`` is (32, 32, 3, N) uint8 and ``y`` is (N, 1) with the digit 0 stored as 10 (mapped to 0).
Images: (N, 32, 32, 3) float32 in [0, 1], resized to ``data_cfg.image_size``.
"""
from functools import lru_cache

import numpy as np
import scipy.io

from datasets.download import ensure, from_manifest
from datasets.image_utils import check_count, frozen_domain, to_float_images
from engine.registry import DATASETS

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
COUNTS = {"train": 73257, "test": 26032}


@lru_cache(maxsize=4)
def decode(path, size):
    mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    if "X" not in mat or "y" not in mat or mat["X"].ndim != 4:
        raise ValueError(f"{path} lacks the SVHN arrays X (32x32x3xN) and y (Nx1); use the official *_32x32.mat")
    images = np.transpose(mat["X"], (3, 0, 1, 2))
    labels = mat["y"].reshape(-1).astype(np.int32) % 10
    return to_float_images(images, size), labels


@DATASETS.register("svhn")
def svhn(cfg, split, data_cfg):
    name = FILES[split]
    images, labels = decode(ensure(from_manifest("svhn", [name]), cfg.root, cfg.download, "svhn")[name],
                            data_cfg.image_size)
    check_count("svhn", split, len(labels), COUNTS[split], cfg.verify_counts)
    return frozen_domain(images, labels)
