"""MNIST from the official idx ubyte files in ``cfg.root`` (gzipped, or unpacked beside them).

An unpacked ``train-images-idx3-ubyte`` is used as is (no published checksum, only the idx
header and the counts are checked); otherwise the ``.gz`` file is verified (md5) or downloaded.
Images: (N, 28, 28, 1) float32 in [0, 1], resized to ``data_cfg.image_size``.
"""
import gzip
import os
from functools import lru_cache

import numpy as np

from datasets.download import ensure, from_manifest
from datasets.image_utils import check_count, frozen_domain, to_float_images
from engine.registry import DATASETS

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
COUNTS = {"train": 60000, "test": 10000}
IDX_UBYTE = 0x08


def read_idx(path, ndim):
    """Array of an idx file holding unsigned bytes with ``ndim`` dimensions (gzip detected by magic)."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    with (gzip.open if gzipped else open)(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != IDX_UBYTE or data[3] != ndim:
        raise ValueError(f"{path} is not an idx ubyte file with {ndim} dimensions (magic {data[:4].hex()}, "
                         f"expected 0000080{ndim}); use the official MNIST files")
    shape = tuple(int.from_bytes(data[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != np.prod(shape):
        raise ValueError(f"{path}: idx header says {shape} = {np.prod(shape)} bytes but holds {body.size}; "
                         "the file is truncated, download it again")
    return body.reshape(shape)


def locate(cfg, name):
    """Path of the unpacked idx file if present, else of the verified (or downloaded) ``.gz``."""
    raw = os.path.join(cfg.root, name)
    if os.path.isfile(raw):
        return raw
    return ensure(from_manifest("mnist", [name + ".gz"]), cfg.root, cfg.download, "mnist")[name + ".gz"]


@lru_cache(maxsize=4)
def decode(image_path, label_path, size):
    images, labels = read_idx(image_path, 3), read_idx(label_path, 1)
    if len(images) != len(labels):
        raise ValueError(f"{image_path} has {len(images)} images but {label_path} {len(labels)} labels")
    return to_float_images(images[..., None], size), labels.astype(np.int32)


@DATASETS.register("mnist")
def mnist(cfg, split, data_cfg):
    images, labels = decode(*(locate(cfg, name) for name in FILES[split]), data_cfg.image_size)
    check_count("mnist", split, len(labels), COUNTS[split], cfg.verify_counts)
    return frozen_domain(images, labels)
