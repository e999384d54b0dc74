"""Embedded offline benchmark optdigits -> optdigits-M (needs only scikit-learn and Pillow).

* Source ``optdigits``: scikit-learn's bundled ``load_digits`` (UCI optdigits, 1797 images of
  8x8 in 0..16), scaled to [0, 1], upsampled bilinearly to 28x28, 3 channels, with a fixed
  random half of the digits inverted (1 - d) so that digit polarity alone does not separate
  the domains.
* Target ``optdigits_m``: the MNIST-M recipe, |patch - d| with a random 28x28 patch of
  scikit-learn's bundled sample photos (``load_sample_images``: china.jpg, flower.jpg).
* Source and target use disjoint halves of the 1797 digits; the target half is split 75/25,
  stratified, into an unlabelled train split and a labelled test split.

Everything is generated from ``RECIPE_SEED`` and cached in memory; ``CHECKSUMS`` records the
sha256 of the generated arrays (checked in the tests against the pinned library versions).
"""
import hashlib
from functools import lru_cache

import numpy as np

from datasets.base import ArrayDomain, stratified_split
from datasets.image_utils import bilinear_matrix
from engine.registry import DATASETS

RECIPE_SEED = 20231001
SIZE = 28
TARGET_TEST_FRACTION = 0.25
# sha256 of the generated splits (images rounded to 1e-5) with scikit-learn 1.9.1 and Pillow 13.0.0;
# tests/test_datasets_optdigits.py checks them, so a change in the recipe or its inputs is noticed.
CHECKSUMS = {
    "source_train": "e30186412215b41f9487969c217d863275ff1d407ea41e63d796aec282d85f06",
    "target_train": "240ac3654d50041567031de9c9bfa5e8414a3c3c836fe41ecbe0d4ccfc6262b8",
    "target_test": "a3090058a7fbc72daafd9fa1f37422a0b3949d9f3e9992b7df7e45104efb1f4a",
}


@lru_cache(maxsize=1)
def upsampled_digits():
    """``(images (1797, 28, 28) float64 in [0, 1], labels int32)``: ``load_digits().images / 16`` upsampled
    bilinearly; the common start of the embedded digit benchmarks (this one, datasets/optdigits_dg.py)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # float64 throughout so the recorded checksums do not depend on the BLAS build
    mat = bilinear_matrix(8, SIZE).astype(np.float64)
    return np.clip(mat @ (digits.images / 16.0) @ mat.T, 0.0, 1.0), digits.target.astype(np.int32)


@lru_cache(maxsize=1)
def generate():
    """Return ``{split: (images NHWC float32, labels int32)}`` for all four splits."""
    from sklearn.datasets import load_sample_images

    images, labels = upsampled_digits()
    rng = np.random.default_rng(RECIPE_SEED)
    order = rng.permutation(len(labels))
    src_idx, tgt_idx = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])

    source = images[src_idx].copy()
    invert = rng.random(len(source)) < 0.5
    source[invert] = 1.0 - source[invert]
    source = np.repeat(source[..., None], 3, axis=-1)

    photos = [p.astype(np.float64) / 255.0 for p in load_sample_images().images]
    target = np.empty((len(tgt_idx), SIZE, SIZE, 3))
    for k, digit in enumerate(images[tgt_idx]):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(0, photo.shape[0] - SIZE + 1)
        left = rng.integers(0, photo.shape[1] - SIZE + 1)
        patch = photo[top:top + SIZE, left:left + SIZE]
        target[k] = np.abs(patch - digit[..., None])
    tgt_labels = labels[tgt_idx]
    train_part, test_part = stratified_split(tgt_labels, TARGET_TEST_FRACTION, RECIPE_SEED + 1)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    return {
        "source_train": (f32(source), labels[src_idx]),
        "target_train": (f32(target[train_part]), tgt_labels[train_part]),
        "target_test": (f32(target[test_part]), tgt_labels[test_part]),
    }


def checksum(split):
    images, labels = generate()[split]
    digest = hashlib.sha256(np.round(images, 5).tobytes())
    digest.update(labels.tobytes())
    return digest.hexdigest()


@DATASETS.register("optdigits")
def optdigits(cfg, split, data_cfg=None):
    """Source domain; the same images serve every split (a source test set is not used)."""
    return ArrayDomain(*generate()["source_train"])


@DATASETS.register("optdigits_m")
def optdigits_m(cfg, split, data_cfg=None):
    key = "target_test" if split == "test" else "target_train"
    return ArrayDomain(*generate()[key])
