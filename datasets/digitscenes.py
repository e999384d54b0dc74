"""Embedded offline segmentation benchmark DigitScenes -> DigitScenes-M (needs only scikit-learn).

The segmentation analogue of optdigits -> optdigits-M (issue #10), generated deterministically
from scikit-learn's bundled ``load_digits`` (UCI optdigits, 1797 digits of 8x8 in 0..16) and
``load_sample_images`` (china.jpg, flower.jpg, 427x640):

* **Scenes.** A 32x32 canvas holds 2 digits (``images / 16`` in [0, 1], upsampled bilinearly
  8x8 -> 14x14 with half-pixel centres, i.e. torch ``interpolate(align_corners=False)``) in two
  non-overlapping 14x14 boxes. Pixel label = the digit's class where its upsampled intensity
  > 0.35, else background (class 10); 11 classes ``"0".."9", "background"``.
* **Digit pools.** ``RandomState(0).permutation(1797)`` split 900 / 450 / 447: source scenes
  (train and test) use the first 900 digits, target train the next 450, target test the last 447.
* **Composition.** ``RandomState(scene_seed)``, per scene in order: two distinct pool entries
  (``choice(pool, 2, replace=False)``), then box corners ``(top1, left1, top2, left2) =
  randint(0, 19, 4)`` redrawn until the boxes do not overlap (uniform over valid layouts).
  Seeds: source train 1 (2000 scenes), target train 2 (2000), target test 3 (500), source test 4 (500).
* **Rendering** (``RandomState(render_seed)``, values in 0..255, not quantised, divided by 255):
  source = ``digit * 255`` in all 3 channels plus independent Gaussian noise sigma 4 per pixel and
  channel, clipped to [0, 255] (render seed 11 train, 14 test); target = ``|patch - digit * 255|``
  per channel with a 32x32 patch of a sample photo, drawn vectorised as: photo index for all
  scenes, then all patch tops, then all lefts; the patch lies wholly inside photo columns 0-399
  (target train, render seed 12) or 400-639 (target test, render seed 13).

Images are float32 NHWC in [0, 1] (the configs scale ``x - 0.5``), labels uint8. Each split is
generated once per process (< 1 s) and returned read-only; ``CHECKSUMS`` pins the sha256 of the
generated arrays (tests/test_datasets_digitscenes.py).
"""
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np

from datasets.image_utils import bilinear_matrix
from datasets.segmentation import SegArrayDomain
from engine.registry import DATASETS

CANVAS, DIGIT, DIGITS_PER_SCENE = 32, 14, 2
THRESHOLD = 0.35
BACKGROUND = 10
CLASSES = tuple(str(d) for d in range(10)) + ("background",)
# matplotlib's tab10 for the digits, dark grey background (ignored pixels colourise black)
PALETTE = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
                    (64, 64, 64)], np.uint8)
POOL_SIZES = {"source": 900, "target_train": 450, "target_test": 447}


@dataclass(frozen=True)
class SplitRecipe:
    pool: str
    scene_seed: int
    count: int
    render_seed: int
    photo_columns: Optional[Tuple[int, int]]  # None = source rendering; else [lo, hi) columns of the photo


RECIPES = {
    "source_train": SplitRecipe("source", 1, 2000, 11, None),
    "target_train": SplitRecipe("target_train", 2, 2000, 12, (0, 400)),
    "target_test": SplitRecipe("target_test", 3, 500, 13, (400, 640)),
    "source_test": SplitRecipe("source", 4, 500, 14, None),
}
# sha256 of the generated splits (images rounded to 1e-5, then labels) with scikit-learn 1.9.1;
# tests/test_datasets_digitscenes.py checks them, so a change in the recipe or its inputs is noticed.
CHECKSUMS = {
    "source_train": "31d6a24935a2495041a1102df59b6cef677989dd7290555a5fe4d4166c7b421a",
    "target_train": "d930668110e65aa5533e8e9071b79ed5aa05515fa646dc2f0098553406519b0c",
    "target_test": "7a1a08964017e9ac4bdd11292dfdcc5e3c86a565ceea2efeabe2cb6c1b7a3764",
    "source_test": "0269ba8b6b9dc9a697adc9cf6969e749d74342ed5076c98999341ff75c2a4d6d",
}


@dataclass(frozen=True)
class DigitScenes:
    """One generated split and how it was made (for inspection and the tests)."""
    images: np.ndarray          # (N, 32, 32, 3) float32 in [0, 1]
    labels: np.ndarray          # (N, 32, 32) uint8, 0..9 digits, 10 background
    digit_ids: np.ndarray       # (N, 2) indices into load_digits()
    boxes: np.ndarray           # (N, 2, 2) (top, left) of each digit's 14x14 box
    photo_ids: Optional[np.ndarray]      # (N,) index into load_sample_images().images (target only)
    photo_offsets: Optional[np.ndarray]  # (N, 2) (top, left) of the 32x32 patch (target only)


@lru_cache(maxsize=1)
def upsampled_digits():
    """(1797, 14, 14) float64 digits in [0, 1] and their (1797,) classes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    mat = bilinear_matrix(8, DIGIT).astype(np.float64)  # float64: checksums independent of the BLAS build
    return np.clip(mat @ (digits.images / 16.0) @ mat.T, 0.0, 1.0), digits.target.astype(np.int64)


@lru_cache(maxsize=1)
def digit_pools():
    """Disjoint digit indices ``{pool: array}`` from ``RandomState(0).permutation(1797)``."""
    perm = np.random.RandomState(0).permutation(len(upsampled_digits()[1]))
    bounds = np.cumsum([0] + list(POOL_SIZES.values()))
    return {name: perm[lo:hi] for name, lo, hi in zip(POOL_SIZES, bounds[:-1], bounds[1:])}


def compose(pool, seed, count):
    """Digit indices (count, 2) and non-overlapping box corners (count, 2, 2) of ``count`` scenes."""
    rng = np.random.RandomState(seed)
    digit_ids = np.empty((count, DIGITS_PER_SCENE), np.int64)
    boxes = np.empty((count, DIGITS_PER_SCENE, 2), np.int64)
    for k in range(count):
        digit_ids[k] = pool[rng.choice(len(pool), DIGITS_PER_SCENE, replace=False)]
        while True:
            top1, left1, top2, left2 = rng.randint(0, CANVAS - DIGIT + 1, 4)
            if abs(top1 - top2) >= DIGIT or abs(left1 - left2) >= DIGIT:
                break
        boxes[k] = ((top1, left1), (top2, left2))
    return digit_ids, boxes


def paint(digit_ids, boxes):
    """Canvas intensities (N, 32, 32) float64 and labels (N, 32, 32) uint8 of composed scenes."""
    images, classes = upsampled_digits()
    n = len(digit_ids)
    intensity = np.zeros((n, CANVAS, CANVAS))
    labels = np.full((n, CANVAS, CANVAS), BACKGROUND, np.uint8)
    offsets = np.arange(DIGIT)
    scene = np.arange(n)[:, None, None]
    for j in range(DIGITS_PER_SCENE):  # boxes never overlap, so plain assignment
        rows = (boxes[:, j, 0, None] + offsets)[:, :, None]
        cols = (boxes[:, j, 1, None] + offsets)[:, None, :]
        digit = images[digit_ids[:, j]]
        intensity[scene, rows, cols] = digit
        labels[scene, rows, cols] = np.where(digit > THRESHOLD, classes[digit_ids[:, j]][:, None, None], BACKGROUND)
    return intensity, labels


@lru_cache(maxsize=1)
def sample_photos():
    from sklearn.datasets import load_sample_images

    return [np.asarray(p, np.float64) for p in load_sample_images().images]


def render_photo(intensity, seed, columns):
    """``|patch - digit*255|`` with random 32x32 photo patches inside ``columns`` = [lo, hi)."""
    photos = sample_photos()
    rng = np.random.RandomState(seed)
    n = len(intensity)
    photo_ids = rng.randint(len(photos), size=n)
    heights = np.array([p.shape[0] for p in photos])[photo_ids]
    widths = np.minimum([p.shape[1] for p in photos], columns[1])[photo_ids]
    tops = rng.randint(0, heights - CANVAS + 1)
    lefts = rng.randint(columns[0], widths - CANVAS + 1)
    patches = np.stack([photos[i][t:t + CANVAS, l:l + CANVAS] for i, t, l in zip(photo_ids, tops, lefts)])
    return np.abs(patches - intensity[..., None] * 255.0), photo_ids, np.stack([tops, lefts], 1)


@lru_cache(maxsize=None)
def generate(split):
    """The :class:`DigitScenes` of ``split`` in ``RECIPES`` (cached, read-only arrays)."""
    recipe = RECIPES[split]
    digit_ids, boxes = compose(digit_pools()[recipe.pool], recipe.scene_seed, recipe.count)
    intensity, labels = paint(digit_ids, boxes)
    photo_ids = photo_offsets = None
    if recipe.photo_columns is None:
        noise = np.random.RandomState(recipe.render_seed).normal(0.0, 4.0, intensity.shape + (3,))
        rendered = np.clip(intensity[..., None] * 255.0 + noise, 0.0, 255.0)
    else:
        rendered, photo_ids, photo_offsets = render_photo(intensity, recipe.render_seed, recipe.photo_columns)
    out = DigitScenes((rendered / 255.0).astype(np.float32), labels, digit_ids, boxes, photo_ids, photo_offsets)
    for array in vars(out).values():
        if array is not None:
            array.flags.writeable = False
    return out


def checksum(split):
    scenes = generate(split)
    digest = hashlib.sha256(np.round(scenes.images, 5).tobytes())
    digest.update(scenes.labels.tobytes())
    return digest.hexdigest()


def _domain(split):
    scenes = generate(split)
    return SegArrayDomain(scenes.images, scenes.labels, CLASSES, PALETTE)


@DATASETS.register("digitscenes")
def digitscenes(cfg, split, data_cfg=None):
    """Source DigitScenes: white digits on black; split train (2000 scenes) or test (500)."""
    return _domain("source_test" if split == "test" else "source_train")


@DATASETS.register("digitscenes_m")
def digitscenes_m(cfg, split, data_cfg=None):
    """Target DigitScenes-M: digits blended with photo patches; split train (2000) or test (500)."""
    return _domain("target_test" if split == "test" else "target_train")
