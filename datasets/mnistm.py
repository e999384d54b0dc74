"""MNIST-M (Ganin & Lempitsky) from the standard extracted ``mnist_m/`` folder.

``cfg.root`` (or its ``mnist_m/`` subfolder) holds ``mnist_m_{train,test}/`` PNG folders and
``mnist_m_{train,test}_labels.txt`` with lines ``filename label``. There is no stable official
URL and no published checksum, so only presence and the image counts are checked (see
``download.MANUAL``). Images: (N, 28, 28, 3) float32 in [0, 1], resized to ``data_cfg.image_size``.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
from PIL import Image

from datasets.base import DatasetMissingError
from datasets.download import MANUAL
from datasets.image_utils import check_count, frozen_domain, to_float_images
from engine.registry import DATASETS

COUNTS = {"train": 59001, "test": 9001}


def locate(cfg, split):
    """(image folder, label list) of ``split``; one-line manual-step error when absent."""
    for root in (cfg.root, os.path.join(cfg.root, "mnist_m")):
        folder, labels = (os.path.join(root, f"mnist_m_{split}{suffix}") for suffix in ("", "_labels.txt"))
        if os.path.isdir(folder) and os.path.isfile(labels):
            return folder, labels
    raise DatasetMissingError(f"mnistm: {cfg.root}/mnist_m_{split}/ or {cfg.root}/mnist_m_{split}_labels.txt is "
                              f"missing and download=true cannot fetch it; {MANUAL['mnistm'].format(root=cfg.root)}")


def read_rgb(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@lru_cache(maxsize=4)
def decode(folder, label_file, size):
    with open(label_file, encoding="utf-8") as handle:
        entries = [line.split() for line in handle if line.strip()]
    if any(len(entry) != 2 for entry in entries):
        raise ValueError(f"{label_file}: every line must be 'filename label'")
    names, labels = zip(*entries) if entries else ((), ())
    paths = [os.path.join(folder, name) for name in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetMissingError(f"mnistm: {len(missing)} images listed in {label_file} are missing "
                                  f"(first: {missing[0]}); extract mnist_m.tar.gz again")
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(read_rgb, paths))
    if len({image.shape for image in images}) > 1:
        raise ValueError(f"mnistm: images in {folder} differ in size; expected 28x28 RGB PNGs")
    return to_float_images(np.stack(images), size), np.asarray(labels, np.int32)


@DATASETS.register("mnistm")
def mnistm(cfg, split, data_cfg):
    folder, label_file = locate(cfg, split)
    images, labels = decode(folder, label_file, data_cfg.image_size)
    check_count("mnistm", split, len(labels), COUNTS[split], cfg.verify_counts)
    return frozen_domain(images, labels)
