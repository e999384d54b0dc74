"""Segmentation domains (images + per-pixel train-id maps), joint augmentation and colourisation.

A segmentation domain follows the :mod:`datasets.base` contract with ``task = "segmentation"``:
``domain.labels[idx]`` is a uint8 ``(n, h, w)`` array of train ids (``ignore_index`` = 255 marks
pixels that count nowhere), ``class_names`` and ``palette`` (K, 3) describe the K classes.

* :class:`SegArrayDomain` holds everything in memory (the embedded DigitScenes benchmark).
* :class:`SegFileDomain` reads image/label PNG pairs (GTA5, Cityscapes) as AdaptSegNet's
  ``dataset/gta5_dataset.py`` / ``cityscapes_dataset.py`` do (Tsai et al., CVPR 2018;
  github.com/wasidennis/AdaptSegNet): the image is resized bicubically to ``size``, the raw label
  ids are resized with nearest neighbour and mapped to train ids through a lookup table.
  Decoding runs on the thread pool of :mod:`datasets.office`.
"""
import os

import numpy as np
from PIL import Image

from datasets.base import DatasetMissingError, ImageDomain
from datasets.image_utils import bilinear_matrix
from datasets.office import _pool

IGNORE_INDEX = 255
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _unreadable(kind, path, err):
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return DatasetMissingError(f"cannot decode {kind} {path} ({reason}); "
                               "re-extract it from the dataset archive or remove it from the image list")


def _header_size(path):
    """(w, h) from the file header only (Pillow opens lazily)."""
    try:
        with Image.open(path) as img:
            return img.size
    except _DECODE_ERRORS as err:
        raise _unreadable("image", path, err) from None


def _map_parallel(fn, items, workers):
    """``[fn(x) for x in items]`` on the shared decode pool (Pillow releases the GIL while decoding)."""
    if workers > 1 and len(items) > 1:
        return list(_pool(workers).map(fn, items))
    return [fn(x) for x in items]


def _stack(arrays, what):
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"{what} of different sizes {sorted(shapes)} in one batch; resize them to one size "
                         "(data.source.resize / data.target.resize) or use batch size 1")
    return np.stack(arrays)


# --------------------------------------------------------------------------- in memory
class SegArrayDomain(ImageDomain):
    """In-memory segmentation set: ``images`` float32 NHWC in [0, 1], ``labels`` uint8 (N, H, W) train ids."""

    task = "segmentation"

    def __init__(self, images, labels, class_names, palette, ignore_index=IGNORE_INDEX):
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        labels = np.asarray(labels)
        if images.ndim != 4 or labels.shape != images.shape[:3]:
            raise ValueError(f"images {images.shape} and labels {labels.shape} do not match: expected "
                             "images (N, H, W, C) and labels (N, H, W)")
        if labels.dtype != np.uint8:
            if labels.size and (labels.min() < 0 or labels.max() > 255):
                raise ValueError("labels must be train ids in 0..255 (255 = ignore)")
            labels = labels.astype(np.uint8)
        self.images = images.astype(np.float32, copy=False)
        self.labels = labels
        self.class_names = tuple(class_names)
        self.palette = np.asarray(palette, np.uint8).reshape(len(self.class_names), 3)
        self.ignore_index = int(ignore_index)

    def load(self, index):
        return self.images[index]

    def subset(self, indices):
        indices = np.asarray(indices).reshape(-1)
        return SegArrayDomain(self.images[indices], self.labels[indices], self.class_names, self.palette,
                              self.ignore_index)


# --------------------------------------------------------------------------- files
def decode_image(path, size):
    """RGB float32 HWC in [0, 1]; resized bicubically to ``size`` = (w, h) unless None (AdaptSegNet)."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is not None and img.size != tuple(size):
                img = img.resize(tuple(size), Image.BICUBIC)
            return np.asarray(img, dtype=np.float32) / 255.0
    except _DECODE_ERRORS as err:
        raise _unreadable("image", path, err) from None


def decode_label(path, size, label_map):
    """uint8 (h, w) train ids of a raw label-id PNG: nearest resize to ``size`` (None = as stored),
    then ids mapped through the 256-entry ``label_map`` (None = stored ids are train ids already)."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            if size is not None and img.size != tuple(size):
                img = img.resize(tuple(size), Image.NEAREST)
            ids = np.asarray(img)
    except _DECODE_ERRORS as err:
        raise _unreadable("label", path, err) from None
    if mode not in ("L", "P"):
        raise DatasetMissingError(f"label {path} is a {mode} image; expected single-channel 8-bit label ids "
                                  "(PNG mode L or P) as in the dataset archive: re-extract it")
    return ids if label_map is None else label_map[ids]


class SegLabels:
    """Lazy label maps of a :class:`SegFileDomain`: ``labels[idx]`` decodes them on the thread pool.

    Without label files (an unlabelled target set) every pixel is ``ignore_index``.
    """

    def __init__(self, domain):
        self.domain = domain

    def __len__(self):
        return len(self.domain.image_paths)

    def _one(self, i):
        d = self.domain
        if d.label_paths is None:
            size = d.label_size or d.size or _header_size(d.image_paths[i])
            return np.full((size[1], size[0]), d.ignore_index, np.uint8)
        return decode_label(d.label_paths[i], d.label_size, d.label_map)

    def __getitem__(self, indices):
        if np.ndim(indices) == 0:
            return self._one(int(indices))
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        if not indices:
            raise ValueError("empty index")
        return _stack(_map_parallel(self._one, indices, self.domain.num_workers), "label maps")


def load_seg_batch(domain, indices):
    """NHWC float32 images of ``domain[indices]`` in [0, 1], in the order given (thread pool)."""
    paths = [domain.image_paths[i] for i in np.asarray(indices).reshape(-1)]
    return _stack(_map_parallel(lambda p: decode_image(p, domain.size), paths, domain.num_workers), "images")


class SegFileDomain(ImageDomain):
    """Image/label file pairs, decoded per batch.

    ``size`` (w, h): images are resized bicubically to it (None = as stored); ``label_size`` (w, h):
    labels are resized with nearest neighbour to it (None = original resolution, for evaluation);
    ``label_map``: 256-entry uint8 lookup table raw id -> train id (None = stored ids are train ids);
    ``label_paths`` None = unlabelled (every pixel ignored).
    """

    task = "segmentation"
    batch_loader = staticmethod(load_seg_batch)  # engine.data calls ``loader(domain, idx)``

    def __init__(self, image_paths, label_paths, class_names, palette, size=None, label_size=None,
                 label_map=None, ignore_index=IGNORE_INDEX, num_workers=2):
        self.image_paths = list(image_paths)
        self.label_paths = None if label_paths is None else list(label_paths)
        if self.label_paths is not None and len(self.label_paths) != len(self.image_paths):
            raise ValueError(f"{len(self.image_paths)} images but {len(self.label_paths)} label files")
        self.class_names = tuple(class_names)
        self.palette = np.asarray(palette, np.uint8).reshape(len(self.class_names), 3)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.label_size = None if label_size is None else (int(label_size[0]), int(label_size[1]))
        if label_map is not None:
            label_map = np.asarray(label_map, np.uint8)
            if label_map.shape != (256,):
                raise ValueError(f"label_map must be a 256-entry lookup table, got shape {label_map.shape}")
        self.label_map = label_map
        self.ignore_index = int(ignore_index)
        self.num_workers = int(num_workers)
        self.labels = SegLabels(self)

    def load(self, index):
        return decode_image(self.image_paths[index], self.size)

    def subset(self, indices):
        indices = np.asarray(indices).reshape(-1)
        labels = None if self.label_paths is None else [self.label_paths[i] for i in indices]
        return SegFileDomain([self.image_paths[i] for i in indices], labels, self.class_names, self.palette,
                             self.size, self.label_size, self.label_map, self.ignore_index, self.num_workers)


def check_pairs(image_paths, label_paths, same_size=True, workers=2, limit=3):
    """Validate image/label pairs from their headers (no full decode), raising ONE error for all.

    Missing or unreadable files raise :class:`DatasetMissingError`; with ``same_size``, pairs whose
    image and label sizes differ raise ``ValueError``. Each message names the first ``limit`` files
    and the count.
    """
    def header(path):
        try:
            return _header_size(path)
        except DatasetMissingError:
            return "missing" if not os.path.isfile(path) else "unreadable"

    paths = list(image_paths) + list(label_paths or [])
    sizes = _map_parallel(header, paths, workers)
    image_sizes, label_sizes = sizes[:len(image_paths)], sizes[len(image_paths):]
    bad = [(p, s) for p, s in zip(paths, sizes) if isinstance(s, str)]  # s = "missing" | "unreadable"
    if bad:
        names = ", ".join(f"{p} ({s})" for p, s in bad[:limit])
        raise DatasetMissingError(f"{len(bad)} image/label file(s) missing or unreadable, first: {names}; "
                                  "re-extract the dataset archives (every image needs its label file)")
    if same_size and label_paths is not None:
        wrong = [(path, a, b) for path, a, b in zip(image_paths, image_sizes, label_sizes) if a != b]
        if wrong:
            names = ", ".join(f"{os.path.basename(path)} {a[0]}x{a[1]} vs label {b[0]}x{b[1]}"
                              for path, a, b in wrong[:limit])
            raise ValueError(f"{len(wrong)} image/label pair(s) differ in size, first: {names} (in "
                             f"{os.path.dirname(wrong[0][0])}); re-extract them, or set verify_counts: false "
                             "(data.source / data.target) to accept the mismatch and resize both (what AdaptSegNet "
                             "does implicitly)")


def read_name_list(list_file, root):
    """Non-empty stripped lines of ``list_file`` (absolute, or relative to the working directory or ``root``)."""
    for candidate in (list_file, os.path.join(root, list_file)):
        if os.path.isfile(candidate):
            with open(candidate, encoding="utf-8") as handle:
                names = [line.strip() for line in handle if line.strip()]
            if not names:
                raise ValueError(f"image_list {candidate} is empty")
            return names
    raise DatasetMissingError(f"image_list {list_file} not found (looked in the working directory and in {root})")


# --------------------------------------------------------------------------- augmentation
def _nearest_index(n_in, n_out):
    """Source index of each of ``n_out`` outputs, half-pixel centres (PIL NEAREST, torch nearest-exact)."""
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * n_in / n_out).astype(int), n_in - 1)


def seg_augment(images, labels, rng, scale=None, crop=None, flip=False, ignore_index=IGNORE_INDEX):
    """Joint random scale, crop and horizontal flip of a batch, deterministic given ``rng``.

    ``images`` NHWC float, ``labels`` (N, H, W) uint8. Per sample: a factor ``s ~ U(scale)`` resizes
    the image bilinearly (half-pixel centres, no antialiasing) and the labels with nearest neighbour
    to ``round(s*H) x round(s*W)``; then a random ``crop`` = (w, h) window (None = the input size)
    is cut, padding bottom/right with 0 (images) and ``ignore_index`` (labels) where the scaled
    sample is smaller; ``flip`` mirrors half of the samples. Draw order per sample: scale, top,
    left, flip. Returns ``(images float32 (N, h, w, C), labels uint8 (N, h, w))``.
    """
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.uint8)
    n, h, w, c = images.shape
    out_w, out_h = (w, h) if crop is None else (int(crop[0]), int(crop[1]))
    out_x = np.zeros((n, out_h, out_w, c), np.float32)
    out_y = np.full((n, out_h, out_w), ignore_index, np.uint8)
    for i in range(n):
        x, y = images[i], labels[i]
        if scale is not None:
            s = rng.uniform(scale[0], scale[1])
            sh, sw = max(1, int(round(h * s))), max(1, int(round(w * s)))
            planes = np.moveaxis(x, 2, 0)
            x = np.moveaxis(bilinear_matrix(h, sh) @ planes @ bilinear_matrix(w, sw).T, 0, 2)
            y = y[_nearest_index(h, sh)][:, _nearest_index(w, sw)]
        sh, sw = y.shape
        top = rng.integers(0, sh - out_h + 1) if sh > out_h else 0
        left = rng.integers(0, sw - out_w + 1) if sw > out_w else 0
        x, y = x[top:top + out_h, left:left + out_w], y[top:top + out_h, left:left + out_w]
        if flip and rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        out_x[i, :x.shape[0], :x.shape[1]] = x
        out_y[i, :y.shape[0], :y.shape[1]] = y
    return out_x, out_y


def colorize(train_ids, palette, ignore_index=IGNORE_INDEX):
    """uint8 RGB (H, W, 3) of a train-id map; ``ignore_index`` and ids outside the palette are black."""
    palette = np.asarray(palette, np.uint8).reshape(-1, 3)
    if len(palette) > 255:
        raise ValueError(f"palette has {len(palette)} colours; at most 255 train ids fit in uint8 maps")
    lut = np.zeros((256, 3), np.uint8)
    lut[:len(palette)] = palette
    if 0 <= ignore_index < 256:
        lut[ignore_index] = 0
    ids = np.asarray(train_ids)
    if ids.dtype != np.uint8:  # lut[255] is black: at most 255 colours
        ids = np.where((ids >= 0) & (ids < 256), ids, 255).astype(np.uint8)
    return lut[ids]
