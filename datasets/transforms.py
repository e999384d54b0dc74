"""Batch transforms on NHWC float32 images in [0, 1]: ``fn(images, rng) -> images``.

Training transforms draw from the numpy ``rng`` they are given (seeded per iteration by the
batch stream), evaluation passes ``rng=None`` and must be deterministic. Normalisation is the
last step of every transform.
"""
import numpy as np

from engine.registry import Registry

TRANSFORMS = Registry("transform")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalizer(mean, std):
    mean = np.asarray(mean, np.float32).reshape(1, 1, 1, -1)
    std = np.asarray(std, np.float32).reshape(1, 1, 1, -1)
    return lambda images: (images - mean) / std


def match_channels(images, channels):
    if images.shape[-1] == channels:
        return images
    if channels == 3 and images.shape[-1] == 1:
        return np.repeat(images, 3, axis=-1)
    if channels == 1 and images.shape[-1] == 3:
        return images @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
    raise ValueError(f"cannot convert {images.shape[-1]} channels to {channels}")


@TRANSFORMS.register("none")
def identity(images, rng, size):
    return images


@TRANSFORMS.register("center_crop")
def center_crop(images, rng, size):
    h, w = images.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return images[:, top:top + size, left:left + size]


@TRANSFORMS.register("flip_crop")
def flip_crop(images, rng, size):
    """Random crop of ``size`` (after the domain resized to ``resize_size``) and horizontal flip."""
    if rng is None:
        return center_crop(images, rng, size)
    n, h, w = images.shape[:3]
    out = np.empty((n, size, size, images.shape[3]), np.float32)
    tops = rng.integers(0, h - size + 1, n)
    lefts = rng.integers(0, w - size + 1, n)
    flips = rng.random(n) < 0.5
    for i in range(n):
        crop = images[i, tops[i]:tops[i] + size, lefts[i]:lefts[i] + size]
        out[i] = crop[:, ::-1] if flips[i] else crop
    return out


@TRANSFORMS.register("digits_strong")
def digits_strong(images, rng, size):
    """Strong view for small digits: shift +-3 px, contrast/brightness jitter, noise, cutout."""
    if rng is None:
        return images
    n, h, w, c = images.shape
    pad = 3
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n)
    rows = dy[:, None] + np.arange(h)[None]
    cols = dx[:, None] + np.arange(w)[None]
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    contrast = rng.uniform(0.6, 1.4, (n, 1, 1, 1)).astype(np.float32)
    bright = rng.uniform(-0.2, 0.2, (n, 1, 1, 1)).astype(np.float32)
    mean = out.mean(axis=(1, 2, 3), keepdims=True)
    out = (out - mean) * contrast + mean + bright
    out = out + rng.normal(0, 0.05, out.shape).astype(np.float32)
    side = max(1, h // 4)
    cy, cx = rng.integers(0, h - side + 1, n), rng.integers(0, w - side + 1, n)
    for i in range(n):
        out[i, cy[i]:cy[i] + side, cx[i]:cx[i] + side] = 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def build_transform(name, size, channels, mean, std):
    """Compose channel matching, the named augmentation and normalisation."""
    augment = TRANSFORMS.get(name)
    norm = normalizer(mean, std)

    def transform(images, rng):
        images = match_channels(np.asarray(images, np.float32), channels)
        return norm(augment(images, rng, size)).astype(np.float32, copy=False)

    return transform
