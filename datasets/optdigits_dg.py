"""Embedded optdigits-DG (four domains) and optdigits-C (4 corruptions x 5 severities), issue #17.

Both derive from scikit-learn's bundled ``load_digits`` (UCI optdigits, 1797 8x8 images in 0..16):
m = images / 16 upsampled bilinearly to 28x28 (float64, clipped to [0, 1]), 3 channels, and
``perm = RandomState(0).permutation(1797)``.

optdigits-DG (leave-one-domain-out): ``perm`` is cut into 4 disjoint parts (``np.array_split``:
450/449/449/449), one per domain, in the order grey, inverted, photo, tint:

* grey: m;  inverted: 1 - m;
* photo: |P - m|, P a random 28x28 crop of one of the sample photos (``load_sample_images``), as
  ``datasets/optdigits.py`` builds optdigits-M;
* tint: m c_fg + (1 - m) c_bg + N(0, 0.08^2), clipped to [0, 1]; c_fg, c_bg ~ U(0, 1)^3 per image,
  redrawn until their mean absolute channel gap is >= 0.3.

Registered ``optdigits_dg`` (``data.*.domain`` = one of :data:`DOMAINS`): split ``train`` = every
image of the domain (what a source domain contributes), ``test`` = its second half (what every
method is scored on); ``optdigits_dg_half`` trains on the first half (the oracle) and tests on the
second.

optdigits-C (test-time adaptation): the source is grey ``perm[:899]``, the test set grey
``perm[899:]`` (898 images) under one of :data:`CORRUPTIONS` at severity 1..5, as ImageNet-C
applies them (per pixel and channel; Hendrycks & Dietterich 2019, ``make_imagenet_c.py``):

* gaussian_noise: x + N(0, s^2);  impulse_noise: salt-and-pepper on a fraction s of the values;
* gaussian_blur: Gaussian filter of sigma s px (``scipy.ndimage``, edge mode "nearest");
* contrast: (x - mean) s + mean, the mean per image and channel;

each clipped to [0, 1], drawn from ``RandomState(CORRUPTION_SEED + 10 * corruption index + severity)``.
Registered ``optdigits_c``: ``domain`` unset or ``clean`` -> train = the source, test = the clean
test set; ``domain: <corruption>-<severity>`` (e.g. ``gaussian_noise-5``) -> the corrupted test
set for both splits. ``CHECKSUMS`` pins the generated arrays (tests/test_datasets_optdigits_dg.py).
"""
import hashlib
from functools import lru_cache

import numpy as np

from datasets.image_utils import frozen_domain
from datasets.optdigits import upsampled_digits
from engine.registry import DATASETS

SIZE = 28
PERM_SEED = 0
DOMAINS = ("grey", "inverted", "photo", "tint")
PHOTO_SEED, TINT_SEED, CORRUPTION_SEED = 1, 2, 1000
TINT_NOISE_STD = 0.08
TINT_MIN_GAP = 0.3
C_SOURCE_SIZE = 899  # optdigits-C: grey perm[:899] trains the source model, perm[899:] is the test set
CORRUPTIONS = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
    "gaussian_blur": (0.8, 1.2, 1.6, 2.0, 2.5),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
}
SEVERITIES = (1, 2, 3, 4, 5)
# sha256 of the generated arrays (rounded to 1e-5) with scikit-learn 1.9.1, scipy and Pillow as pinned here.
CHECKSUMS = {
    "dg/grey": "fadfa6df03443c07ea165255ecf5df25d336713aef94e8d7da0bad1b489d37af",
    "dg/inverted": "73fb7b0642f27e280fc821c385678211f55d70c1e6676897b91cadf10fa12457",
    "dg/photo": "9d3287c4c51d5f253b6871b4a2dbffcfdbf7dbe0f6bb60d6b0807a195d165885",
    "dg/tint": "a1f5e3eb1bb8b7fc04a1df93fd89387f724b3d44243b58a467a2d75d6778e368",
    "c/source": "7867b294ad8969044ba163f5604abea376a2e0d2c3a8d3ced9d40be50ce7f7b7",
    "c/clean": "7941f3363042a2459476ca6de24a7e082d79cb82f86e91c30c5c0b79cf11ee70",
    "c/gaussian_noise-5": "77d704420f5d76a7a2b496c4221730b0eb95c7cf51209ed3c8bffc272b3c8240",
    "c/impulse_noise-5": "1f793b698584df97bf4b04155c2f06950a9b5093bb3123253cd54fc5f6bb12c9",
    "c/gaussian_blur-5": "0a3cca158ff7d1349c8f22a0a20810ec791359e3019f3de406ad22f94c20e4e8",
    "c/contrast-5": "9e9fd40cda354d280a0821dae6ace7b9cdb74908d691ee3b9b2b3557b4f04103",
}


@lru_cache(maxsize=1)
def digits():
    """``(m (1797, 28, 28) float64 in [0, 1], labels int32, perm)`` of the common recipe."""
    images, labels = upsampled_digits()
    perm = np.random.RandomState(PERM_SEED).permutation(len(images))
    return images, labels, perm


def _rgb(m):
    return np.repeat(m[..., None], 3, axis=-1)


def render(domain, m):
    """Images of ``domain`` (NHWC float64 in [0, 1]) from the grey digits ``m`` (N, 28, 28)."""
    if domain == "grey":
        return _rgb(m)
    if domain == "inverted":
        return _rgb(1.0 - m)
    if domain == "photo":
        from sklearn.datasets import load_sample_images

        rng = np.random.RandomState(PHOTO_SEED)
        photos = [p.astype(np.float64) / 255.0 for p in load_sample_images().images]
        out = np.empty(m.shape + (3,))
        for k, digit in enumerate(m):
            photo = photos[rng.randint(len(photos))]
            top = rng.randint(0, photo.shape[0] - SIZE + 1)
            left = rng.randint(0, photo.shape[1] - SIZE + 1)
            out[k] = np.abs(photo[top:top + SIZE, left:left + SIZE] - digit[..., None])
        return out
    if domain == "tint":
        rng = np.random.RandomState(TINT_SEED)
        out = np.empty(m.shape + (3,))
        for k, digit in enumerate(m):
            while True:
                fg, bg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
                if np.abs(fg - bg).mean() >= TINT_MIN_GAP:
                    break
            out[k] = digit[..., None] * fg + (1.0 - digit[..., None]) * bg
            out[k] += rng.normal(0.0, TINT_NOISE_STD, out[k].shape)
        return np.clip(out, 0.0, 1.0)
    raise ValueError(f"unknown optdigits_dg domain {domain!r}; choose one of {', '.join(DOMAINS)}")


@lru_cache(maxsize=None)
def dg_domain(domain):
    """``(images NHWC float32, labels)`` of one optdigits-DG domain (its part of ``perm``, in perm order)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown optdigits_dg domain {domain!r}; choose one of {', '.join(DOMAINS)}")
    m, labels, perm = digits()
    part = np.array_split(perm, len(DOMAINS))[DOMAINS.index(domain)]
    return render(domain, m[part]).astype(np.float32), labels[part]


def corrupt(images, corruption, severity, rng):
    """``images`` (NHWC float in [0, 1]) under ``corruption`` at ``severity`` 1..5, clipped to [0, 1]."""
    level = CORRUPTIONS[corruption][severity - 1]
    x = np.asarray(images, np.float64)
    if corruption == "gaussian_noise":
        x = x + rng.normal(0.0, level, x.shape)
    elif corruption == "impulse_noise":
        hit = rng.uniform(0, 1, x.shape) < level
        salt = rng.uniform(0, 1, x.shape) < 0.5
        x = np.where(hit, salt.astype(np.float64), x)
    elif corruption == "gaussian_blur":
        from scipy.ndimage import gaussian_filter

        x = gaussian_filter(x, sigma=(0, level, level, 0), mode="nearest")
    elif corruption == "contrast":
        mean = x.mean(axis=(1, 2), keepdims=True)
        x = (x - mean) * level + mean
    return np.clip(x, 0.0, 1.0)


def parse_c_domain(domain):
    """``None | "clean" | "<corruption>-<severity>"`` -> ``(corruption or None, severity or None)``."""
    if domain in (None, "", "clean"):
        return None, None
    name, _, level = str(domain).rpartition("-")
    if name not in CORRUPTIONS or level not in tuple(str(s) for s in SEVERITIES):
        raise ValueError(f"unknown optdigits_c domain {domain!r}; use clean or <corruption>-<severity> with "
                         f"corruption one of {', '.join(CORRUPTIONS)} and severity 1..5 (e.g. gaussian_noise-5)")
    return name, int(level)


@lru_cache(maxsize=None)
def c_split(domain):
    """``(images NHWC float32, labels)``: ``source`` (grey perm[:899]), ``clean`` or ``<corruption>-<severity>``."""
    m, labels, perm = digits()
    if domain == "source":
        idx = perm[:C_SOURCE_SIZE]
        return _rgb(m[idx]).astype(np.float32), labels[idx]
    corruption, severity = parse_c_domain(domain)
    idx = perm[C_SOURCE_SIZE:]
    images = _rgb(m[idx])
    if corruption is not None:
        seed = CORRUPTION_SEED + 10 * list(CORRUPTIONS).index(corruption) + severity
        images = corrupt(images, corruption, severity, np.random.RandomState(seed))
    return images.astype(np.float32), labels[idx]


def c_sets():
    """The 20 optdigits-C test-set names in stream order: corruption-major, severity 1..5."""
    return [f"{name}-{s}" for name in CORRUPTIONS for s in SEVERITIES]


def checksum(key):
    """sha256 of ``dg/<domain>`` or ``c/<split>`` (images rounded to 1e-5, then labels)."""
    kind, name = key.split("/", 1)
    images, labels = dg_domain(name) if kind == "dg" else c_split(name)
    digest = hashlib.sha256(np.round(images, 5).tobytes())
    digest.update(np.asarray(labels, np.int32).tobytes())
    return digest.hexdigest()


def _dg_name(cfg):
    domain = getattr(cfg, "domain", None)
    if domain not in DOMAINS:
        raise ValueError(f"optdigits_dg needs data.source.domain / data.target.domain set to one of "
                         f"{', '.join(DOMAINS)}, got {domain!r}")
    return domain


def _halves(domain):
    images, labels = dg_domain(domain)
    half = len(labels) // 2
    return (images[:half], labels[:half]), (images[half:], labels[half:])


@DATASETS.register("optdigits_dg")
def optdigits_dg(cfg, split, data_cfg=None):
    """train: the whole domain (a source); test: its second half (the scored target images)."""
    domain = _dg_name(cfg)
    return frozen_domain(*(dg_domain(domain) if split == "train" else _halves(domain)[1]))


@DATASETS.register("optdigits_dg_half")
def optdigits_dg_half(cfg, split, data_cfg=None):
    """The oracle's domain: train on the first half, test on the second half."""
    first, second = _halves(_dg_name(cfg))
    return frozen_domain(*(first if split == "train" else second))


@DATASETS.register("optdigits_c")
def optdigits_c(cfg, split, data_cfg=None):
    """clean: train = grey perm[:899] (the source), test = grey perm[899:]; a corruption: that test set."""
    domain = getattr(cfg, "domain", None) if cfg is not None else None
    corruption, _ = parse_c_domain(domain)
    key = "source" if corruption is None and split == "train" else (domain if corruption else "clean")
    return frozen_domain(*c_split(key))


optdigits_c.corruption_sets = c_sets  # tools/tta.py and tools/robustness.py: the default test sets
