"""CIFAR-10 (the binary version) and CIFAR-10-C, read without pickle.

CIFAR-10 (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html), ``cifar-10-binary.tar.gz``
(md5 c32a1d4ab5d03f1284b67883e8d87530, 170052171 bytes) unpacked in ``cfg.root``:
``<root>/cifar-10-batches-bin/data_batch_{1..5}.bin`` (train, 50000) and ``test_batch.bin`` (10000).
Each record is 1 label byte followed by 3072 pixel bytes, the 1024 red, then green, then blue values
of a 32x32 image in row-major order.

CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019; Zenodo record 2535967, ``CIFAR-10-C.tar``, md5
56bf5dcef84df0e2308c6dcbcbbd8499, 2918471680 bytes) unpacked in ``cfg.root``:
``<root>/CIFAR-10-C/<corruption>.npy``, 50000x32x32x3 uint8 each, severity s in rows
(s-1)*10000 .. s*10000, and one shared ``labels.npy``. ``domain: <corruption>-<severity>`` (e.g.
``gaussian_noise-5``) selects a set; :data:`CORRUPTIONS` are the 15 benchmark corruptions in the
order of CrossNorm/SelfNorm's ``cifar.py`` and Tent's ``cfgs/tent.yaml``.

With ``download: true`` a missing file fetches the archive (checksummed, resumable:
:mod:`datasets.download`) and unpacks only the expected regular members; without it the error is one
line saying where the files go. The archives' checksums are the published ones; the unpacked files
are checked for their record counts and array shapes (``verify_counts: false`` accepts other
counts, e.g. the tests' tiny fixtures in the same formats).
"""
import os
import shutil
import tarfile
from functools import lru_cache

import numpy as np

from datasets.base import DatasetMissingError
from datasets.download import Resource, ensure
from datasets.image_utils import frozen_domain
from engine.registry import DATASETS

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SIDE, RECORD = 32, 1 + 3 * 32 * 32
BIN_DIR = "cifar-10-batches-bin"
BIN_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
RECORDS_PER_FILE = 10000
C_DIR = "CIFAR-10-C"
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)
PER_SEVERITY = 10000
ARCHIVES = {  # read at call time, so the tests can point them at a local server
    "cifar10": Resource("cifar-10-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                        "c32a1d4ab5d03f1284b67883e8d87530", 170052171),
    "cifar10_c": Resource("CIFAR-10-C.tar", ("https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1",),
                          "56bf5dcef84df0e2308c6dcbcbbd8499", 2918471680),
}


def _hint(dataset, root):
    res = ARCHIVES[dataset]
    return (f"set data.source.download=true (or data.target.download=true) to fetch {res.filename} "
            f"({res.algo} {res.checksum}) from {res.urls[0]}, or unpack it by hand into {root}")


def require(dataset, root, relative_paths, download):
    """Paths of ``relative_paths`` under ``root``; fetch + unpack the archive when missing and ``download``."""
    paths = [os.path.join(root, rel) for rel in relative_paths]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing and not download:
        raise DatasetMissingError(f"{dataset}: {missing[0]} is missing; {_hint(dataset, root)}")
    if missing:
        archive = ensure([ARCHIVES[dataset]], root, True, dataset)[ARCHIVES[dataset].filename]
        unpack(archive, root, relative_paths, dataset)
    return paths


def unpack(archive, root, members, dataset):
    """Copy only ``members`` (regular files) out of ``archive`` into ``root``; nothing else is written."""
    try:
        with tarfile.open(archive) as tar:
            for name in members:
                try:
                    info = tar.getmember(name)
                except KeyError:
                    raise DatasetMissingError(f"{dataset}: {archive} has no member {name}; "
                                              "is it the official archive?") from None
                if not info.isfile():
                    raise DatasetMissingError(f"{dataset}: {archive} member {name} is not a regular file")
                target = os.path.join(root, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with tar.extractfile(info) as src, open(target + ".part", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(target + ".part", target)
    except tarfile.TarError as err:
        raise DatasetMissingError(f"{dataset}: cannot read {archive} ({err}); delete it and download again") from None


def read_binary_batches(paths, verify=True):
    """``(images (N, 32, 32, 3) uint8, labels int32)`` from CIFAR-10 binary batch files."""
    images, labels = [], []
    for path in paths:
        raw = np.fromfile(path, np.uint8)
        if raw.size % RECORD or (verify and raw.size != RECORD * RECORDS_PER_FILE):
            raise ValueError(f"cifar10: {path} has {raw.size} bytes, expected {RECORD * RECORDS_PER_FILE} "
                             f"({RECORDS_PER_FILE} records of {RECORD} bytes); replace it with the file of "
                             "cifar-10-binary.tar.gz or set data.*.verify_counts=false")
        records = raw.reshape(-1, RECORD)
        labels.append(records[:, 0].astype(np.int32))
        images.append(records[:, 1:].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    labels = np.concatenate(labels)
    if labels.size and labels.max() >= len(CLASSES):
        raise ValueError(f"cifar10: label {labels.max()} in {paths[0]}..., expected 0..9; is it CIFAR-100?")
    return np.ascontiguousarray(np.concatenate(images)), labels


@lru_cache(maxsize=2)
def _cifar10(root, split, download, verify):
    paths = require("cifar10", root, [f"{BIN_DIR}/{name}" for name in BIN_FILES[split]], download)
    return read_binary_batches(paths, verify)


@DATASETS.register("cifar10")
def cifar10(cfg, split, data_cfg=None):
    """train: data_batch_1..5 (50000), test: test_batch (10000); float32 [0, 1] NHWC."""
    images, labels = _cifar10(cfg.root, "test" if split == "test" else "train", cfg.download, cfg.verify_counts)
    return frozen_domain(images.astype(np.float32) / 255.0, labels)


def parse_c_domain(domain):
    """``"<corruption>-<severity>"`` -> ``(corruption, severity)``; one-line error otherwise."""
    name, _, level = str(domain).rpartition("-")
    if name not in CORRUPTIONS or level not in tuple(str(s) for s in SEVERITIES):
        raise ValueError(f"cifar10_c needs data.*.domain = <corruption>-<severity> with corruption one of "
                         f"{', '.join(CORRUPTIONS)} and severity 1..5 (e.g. gaussian_noise-5), got {domain!r}")
    return name, int(level)


def load_c_set(root, corruption, severity, download=False, verify=True):
    """``(images (n, 32, 32, 3) uint8, labels int32)``: rows (s-1) n .. s n of ``<corruption>.npy``, n = 10000."""
    image_path, label_path = require("cifar10_c", root, [f"{C_DIR}/{corruption}.npy", f"{C_DIR}/labels.npy"],
                                     download)
    images = np.load(image_path, mmap_mode="r", allow_pickle=False)
    labels = np.load(label_path, mmap_mode="r", allow_pickle=False)
    total = len(SEVERITIES) * PER_SEVERITY
    if images.ndim != 4 or images.shape[1:] != (SIDE, SIDE, 3) or images.dtype != np.uint8 \
            or len(images) % len(SEVERITIES) or (verify and len(images) != total):
        raise ValueError(f"cifar10_c: {image_path} holds {images.dtype} {images.shape}, expected uint8 "
                         f"({total}, 32, 32, 3); replace it with the file of CIFAR-10-C.tar or set "
                         "data.*.verify_counts=false")
    if labels.shape != (len(images),):
        raise ValueError(f"cifar10_c: {label_path} has shape {labels.shape}, expected ({len(images)},) like "
                         f"{os.path.basename(image_path)}")
    per = len(images) // len(SEVERITIES)
    rows = slice((severity - 1) * per, severity * per)
    return np.asarray(images[rows]), np.asarray(labels[rows]).astype(np.int32)


@DATASETS.register("cifar10_c")
def cifar10_c(cfg, split, data_cfg=None):
    """One CIFAR-10-C set (``domain: <corruption>-<severity>``), the same images for every split."""
    corruption, severity = parse_c_domain(cfg.domain)
    images, labels = load_c_set(cfg.root, corruption, severity, cfg.download, cfg.verify_counts)
    return frozen_domain(images.astype(np.float32) / 255.0, labels)


def c_sets():
    """The 75 CIFAR-10-C set names: corruption-major, severity 1..5."""
    return [f"{name}-{s}" for name in CORRUPTIONS for s in SEVERITIES]


cifar10_c.corruption_sets = c_sets  # tools/tta.py and tools/robustness.py: the default test sets
