"""Office-31 and ImageCLEF-DA: image files on disk, decoded per batch by a thread pool.

Both downloads are manual (no stable official mirror; see ``FileDataset.where``) and are read from
``data.source.root`` / ``data.target.root``:

* ``office31`` (Saenko et al., ECCV 2010): domains ``amazon`` / ``dslr`` / ``webcam`` (aliases
  ``A`` / ``D`` / ``W``), 31 classes, 2817 / 498 / 795 images, laid out as
  ``<root>/<domain>/images/<class>/*.jpg``. TLlib's ``<root>/image_list/<domain>.txt`` is used
  when present, else the class folders are scanned.
* ``imageclef`` (ImageCLEF 2014 DA challenge, as used by Long et al., JAN, ICML 2017): domains
  ``b`` (Bing), ``c`` (Caltech-256), ``i`` (ImageNet), ``p`` (Pascal VOC 2012), 12 classes,
  600 images each (50 per class); image folders ``<root>/<domain>/`` with labels from
  ``<root>/list/<domain>List.txt`` or ``<root>/<domain>_list.txt``.

Image lists are TLlib's format: one ``relative/path.jpg label`` per line, paths relative to
``root``; ``domain_cfg.image_list`` (absolute, or relative to the working directory or to
``root``) overrides the standard list. Label ``k`` is ``classes[k]``: Office-31 uses TLlib's
alphabetical class list (= its label numbering); TLlib-derived ImageCLEF loaders name the classes
only '0'..'11', and we give them the 12 category names in alphabetical order (names are for
display; labels always come from the list files). The train and test splits of a
domain are the same full domain, as in the DA literature.

Decoding runs in MindSpore's C++ image ops (``mindspore.dataset.vision`` eager ``Decode`` /
``Resize`` / ``ResizedCrop`` / ``Crop`` / ``HorizontalFlip``) on a thread pool; the training
pipeline (:class:`FileTrainPipeline`) keeps images uint8 until one vectorised normalisation per
batch. The random crop/flip parameters are drawn on the host from the batch stream's per-iteration
``rng`` exactly as the numpy transforms in ``datasets.transforms`` draw them, so a batch is still a
pure function of ``(seed, stream, iteration, shard)``. Every file of a domain is decoded once up
front (:func:`check_images`), all bad files are reported in one error, and files that passed are
remembered by ``(path, size, mtime)`` in ``<cache dir>/image_check.json`` (``$DA_CACHE_DIR``, else
``$XDG_CACHE_HOME/da-mindspore``, else ``~/.cache/da-mindspore``) so reruns skip them.
"""
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Tuple

import numpy as np
from PIL import Image

from datasets.base import DatasetMissingError, ImageDomain
from datasets.transforms import _crop_boxes
from engine.registry import DATASETS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class FileDataset:
    """What differs between the file-backed benchmarks; the loading code is shared."""
    name: str
    classes: Tuple[str, ...]
    domains: Dict[str, Tuple[str, ...]]        # canonical name -> accepted aliases
    counts: Dict[str, int]                      # published images per domain
    image_dir: str                              # per-domain image folder, relative to root
    list_files: Tuple[str, ...]                 # standard image lists, relative to root
    class_folders: bool                         # <image_dir>/<class name>/* can be scanned
    where: str                                  # how to obtain the data


OFFICE31 = FileDataset(
    name="office31",
    classes=("back_pack", "bike", "bike_helmet", "bookcase", "bottle", "calculator", "desk_chair", "desk_lamp",
             "desktop_computer", "file_cabinet", "headphones", "keyboard", "laptop_computer", "letter_tray",
             "mobile_phone", "monitor", "mouse", "mug", "paper_notebook", "pen", "phone", "printer", "projector",
             "punchers", "ring_binder", "ruler", "scissors", "speaker", "stapler", "tape_dispenser", "trash_can"),
    domains={"amazon": ("a",), "dslr": ("d",), "webcam": ("w",)},
    counts={"amazon": 2817, "dslr": 498, "webcam": 795},
    image_dir="{domain}/images",
    list_files=("image_list/{domain}.txt",),
    class_folders=True,
    where="download Office-31 manually (Saenko et al., ECCV 2010; the archives TLlib lists in "
          "tllib/vision/datasets/office31.py) and extract amazon/, dslr/, webcam/ under the root",
)

IMAGECLEF = FileDataset(
    name="imageclef",
    classes=("aeroplane", "bike", "bird", "boat", "bottle", "bus", "car", "dog", "horse", "monitor",
             "motorbike", "people"),
    domains={"b": ("bing",), "c": ("caltech",), "i": ("imagenet",), "p": ("pascal",)},
    counts={"b": 600, "c": 600, "i": 600, "p": 600},
    image_dir="{domain}",
    list_files=("list/{domain}List.txt", "{domain}_list.txt"),
    class_folders=False,
    where="download ImageCLEF-DA manually (the ImageCLEF 2014 domain-adaptation release used by Long et al., "
          "JAN 2017 / CDAN 2018) and extract b/, c/, i/, p/ and list/ under the root",
)


# --------------------------------------------------------------------------- decoding
_UNDECODABLE = (OSError, ValueError, SyntaxError, RuntimeError, Image.DecompressionBombError)


def _vision():
    import mindspore.dataset.vision as vision  # imported late: MindSpore must load after engine's settings

    return vision


@lru_cache(maxsize=None)
def _decoder():
    return _vision().Decode()


def _reason(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _undecodable(path, err):
    return DatasetMissingError(f"cannot decode image {path} ({_reason(err)}); re-extract it or remove it from the "
                               "image list")


def _complete_jpeg(data):
    """JPEG start and end markers present (trailing zero padding allowed)."""
    return data[:2].tobytes() == b"\xff\xd8" and data[-1024:].tobytes().rstrip(b"\x00").endswith(b"\xff\xd9")


def _pillow_rgb(path, data=None):
    try:
        with Image.open(io.BytesIO(data.tobytes()) if data is not None else path) as img:
            return np.asarray(img.convert("RGB"))
    except _UNDECODABLE as err:
        error = _undecodable(path, err)
        error.reason = _reason(err)
        raise error from None


def decode_rgb(path):
    """RGB uint8 HWC of an image file, decoded by MindSpore's C++ ``vision.Decode`` (libjpeg-turbo).

    Only complete JPEGs go to ``Decode``: MindSpore 2.8's ``Decode`` kills the process with a
    floating-point exception on a truncated JPEG. Other formats, and grey, CMYK or alpha images,
    which ``Decode`` leaves with other than 3 channels, are decoded by Pillow, which also names the
    problem of a file that cannot be decoded.
    """
    data = np.fromfile(path, np.uint8)
    if _complete_jpeg(data):
        try:
            image = _decoder()(data)
            if image.ndim == 3 and image.shape[2] == 3:
                return image
        except _UNDECODABLE:
            pass  # Pillow decides, and names the problem
    return _pillow_rgb(path, data)


def resize_ops(size, shrink):
    """C++ ops bringing an image to ``size`` x ``size``: bilinear when enlarging; when shrinking,
    bilinear to twice the size, then a 2x2 box filter.

    The reference pipelines resize with Pillow's antialiased bilinear filter. A box filter (AREA)
    follows it about twice as closely as plain bilinear, and the two-step form keeps that (mean
    |difference| to Pillow, of 255: 0.49 / 0.87 at 300x300 / 640x480 -> 256, vs 0.38 / 0.87 for
    AREA and 0.76 / 1.76 for bilinear) at under half of AREA's cost: an exact 2x box filter is
    OpenCV's fast path, a fractional one is not (0.48 / 0.49 ms vs 0.91 / 1.34 ms an image).
    """
    vision = _vision()
    if not shrink:
        return [vision.Resize((size, size), vision.Inter.LINEAR)]
    return [vision.Resize((2 * size, 2 * size), vision.Inter.LINEAR), vision.Resize((size, size), vision.Inter.AREA)]


@lru_cache(maxsize=None)
def _resizer(size, shrink):
    ops = resize_ops(size, shrink)

    def resize(image):
        for op in ops:
            image = op(image)
        return image

    return resize


def decode_resized(path, size):
    """RGB uint8 ``size`` x ``size`` x 3 of an image file (the shape every Office image is brought to)."""
    image = decode_rgb(path)
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    return _resizer(size, h >= size and w >= size)(image)


def decode_image(path, size):
    """RGB float32 HWC in [0, 1], resized to ``size`` x ``size`` (evaluation, channel statistics)."""
    return decode_resized(path, size).astype(np.float32) / 255.0


@lru_cache(maxsize=None)
def _pool(workers):
    return ThreadPoolExecutor(workers, thread_name_prefix="decode")


def _map(fn, items, workers):
    if workers > 1 and len(items) > 1:
        return list(_pool(workers).map(fn, items))
    return [fn(x) for x in items]


def load_batch(domain, indices):
    """NHWC float32 images of ``domain[indices]`` in the order given, decoded on a thread pool.

    Each image is decoded independently, so the result does not depend on the number of workers.
    """
    paths = [domain.paths[i] for i in np.asarray(indices).reshape(-1)]
    images = _map(lambda p: decode_resized(p, domain.size), paths, domain.num_workers)
    return np.stack(images).astype(np.float32) / 255.0 if images else \
        np.empty((0, domain.size, domain.size, 3), np.float32)


class FileTrainPipeline:
    """``pipeline(domain, indices, rng) -> NCHW float32``: decode, augment and normalise one batch.

    Equivalent to ``datasets.transforms.build_transform(augment, size, 3, mean, std, bgr)`` on
    :func:`load_batch` images, with the same draws from ``rng`` in the same order (so resume and
    seeds give the same crops), but the crop/resize/flip run per image in MindSpore's C++ ops on
    uint8 (OpenCV-style bilinear with half-pixel centres, as the numpy transform) and the images
    are normalised once per batch. ``augment``: ``imagenet`` (RandomResizedCrop + flip),
    ``flip_crop`` (random crop + flip), ``flip_translate`` (Dassl's flip + translation: a flipped or
    plain image, resized to 1.125x and cropped back with p 0.5; images decoded at ``size``),
    ``none`` / ``center_crop`` (centre crop). A box is ``(top, left, height, width, flip, enlarge)``:
    crop of the decoded image (first resized to ``enlarge`` x ``enlarge`` where that is not 0), flipped.
    """

    AUGMENTS = ("imagenet", "flip_crop", "flip_translate", "none", "center_crop")

    def __init__(self, augment, size, mean, std, bgr=False):
        if augment not in self.AUGMENTS:
            raise ValueError(f"FileTrainPipeline: no C++ path for transform {augment!r}; valid: {self.AUGMENTS}")
        self.augment, self.size, self.bgr = augment, int(size), bool(bgr)
        std = np.asarray(std, np.float32)
        self.mean_255, self.std_255 = [255.0 * float(m) for m in mean], [255.0 * float(v) for v in std]  # C++ Normalize
        # (x / 255 - mean) / std == x * scale - shift, per channel
        self.scale = (1.0 / (255.0 * std)).astype(np.float32)
        self.shift = (np.asarray(mean, np.float32) / std).astype(np.float32)

    def draw(self, rng, n, resized):
        """Per-image ``(top, left, height, width, flip, enlarge)``: the numpy transform's draws, in its order."""
        s = self.size
        enlarge = np.zeros(n, int)  # only flip_translate resizes before its crop
        if self.augment == "imagenet":
            tops, lefts, heights, widths = _crop_boxes(rng, n, resized, resized)
            flips = rng.random(n) < 0.5
        elif self.augment == "flip_crop":
            tops = rng.integers(0, resized - s + 1, n)
            lefts = rng.integers(0, resized - s + 1, n)
            flips = rng.random(n) < 0.5
            heights = widths = np.full(n, s)
        elif self.augment == "flip_translate":  # transforms._flip_translate's draws, in its order
            flips = rng.random(n) < 0.5
            translate = rng.random(n) < 0.5
            big = int(round(s * 1.125))
            tops, lefts = np.zeros(n, int), np.zeros(n, int)
            tops[translate], lefts[translate] = rng.integers(0, big - s + 1, (2, int(translate.sum())))
            heights = widths = np.full(n, s)
            enlarge = np.where(translate, big, 0)
        else:
            tops = lefts = np.full(n, (resized - s) // 2)
            heights = widths = np.full(n, s)
            flips = np.zeros(n, bool)
        return [tuple(int(v) for v in box[:4]) + (bool(box[4]), int(box[5]))
                for box in zip(tops, lefts, heights, widths, flips, enlarge)]

    @staticmethod
    def flip_enlarge(image, flip, enlarge):
        """flip_translate: the (flipped) image resized to ``enlarge`` x ``enlarge``, before its crop."""
        image = np.ascontiguousarray(image[:, ::-1]) if flip else image
        return _vision().Resize((enlarge, enlarge), _vision().Inter.LINEAR)(image)

    def crop(self, image, box):
        vision = _vision()
        top, left, height, width, flip, enlarge = box
        if enlarge:
            return self.flip_enlarge(image, flip, enlarge)[top:top + height, left:left + width]
        if (height, width) == (self.size, self.size):
            if (height, width) != image.shape[:2]:
                image = vision.Crop((top, left), (height, width))(image)
        else:
            image = vision.ResizedCrop(top, left, height, width, (self.size, self.size), vision.Inter.LINEAR)(image)
        return vision.HorizontalFlip()(image) if flip else image

    def normalize(self, images):
        """NHWC uint8 -> NCHW float32 ``(x / 255 - mean) / std``, channels reversed under ``bgr``."""
        out = np.empty((len(images), 3, self.size, self.size), np.float32)
        for c in range(3):
            np.multiply(images[..., 2 - c if self.bgr else c], self.scale[c], out=out[:, c], dtype=np.float32)
            out[:, c] -= self.shift[c]
        return out

    def stream(self, domain, plans, batch_size):
        """``plans``: ``(indices, rng)`` per batch of ``batch_size`` -> iterator of ``(x NCHW float32, indices)``.

        The same batches as ``self(domain, indices, rng)`` for each plan in turn (within float
        rounding), but every per-image step runs in ``mindspore.dataset``'s worker threads
        (``num_workers`` of them): C++ decode and resize to ``domain.size``, the host-drawn crop and
        flip (a numpy view per image, the only Python step), then C++ ``Resize``, ``Normalize`` and
        ``HWC2CHW``, and the engine's own batching. The consumer only receives finished batches.
        Only for domains that are :attr:`FileDomain.streamable` (checked JPEGs: the C++ decoder
        crashes on broken ones). Close the returned generator to stop the engine's threads.
        """
        import mindspore.dataset as ds

        vision = _vision()
        workers = max(1, domain.num_workers)

        def samples():
            for indices, rng in plans:
                indices = np.asarray(indices).reshape(-1)
                for index, box in zip(indices, self.draw(rng, len(indices), domain.size)):
                    yield np.fromfile(domain.paths[index], np.uint8), np.array(box, np.int32), np.int64(index)

        def crop_flip(image, box):  # views: the copy is the only work done holding the GIL
            top, left, height, width, flip, enlarge = (int(v) for v in box)
            if enlarge:  # flip_translate's translation: flip, C++ resize to 1.125x, crop
                return np.ascontiguousarray(self.flip_enlarge(image, flip, enlarge)[top:top + height, left:left + width])
            view = image[top:top + height, left:left + width]
            return np.ascontiguousarray(view[:, ::-1] if flip else view)

        # flipping before the bilinear resize equals flipping after it: half-pixel centres are symmetric
        ops = [crop_flip] + ([vision.Resize((self.size, self.size), vision.Inter.LINEAR)]
                             if self.augment == "imagenet" else [])
        ops += [vision.Normalize(self.mean_255, self.std_255), vision.HWC2CHW()]
        if self.bgr:
            ops.insert(-2, vision.ConvertColor(vision.ConvertMode.COLOR_RGB2BGR))
        source = ds.GeneratorDataset(samples, ["image", "box", "index"], shuffle=False, num_parallel_workers=1,
                                     python_multiprocessing=False)
        # streamable domains hold no image smaller than domain.size: every resize shrinks (or keeps)
        source = source.map([vision.Decode()] + resize_ops(domain.size, shrink=True),
                            input_columns="image", num_parallel_workers=workers)
        source = source.map(ops, input_columns=["image", "box"], output_columns=["image"],
                            num_parallel_workers=workers)
        source = source.batch(batch_size, num_parallel_workers=1)
        iterator = source.create_tuple_iterator(output_numpy=True, num_epochs=1, do_copy=False)
        try:
            for images, indices in iterator:
                yield images, np.array(indices)
        finally:
            iterator.stop()

    def __call__(self, domain, indices, rng):
        indices = np.asarray(indices).reshape(-1)
        if domain.size < self.size:
            raise ValueError(f"data.resize_size {domain.size} is smaller than data.image_size {self.size}")
        drawer = self if rng is not None else FileTrainPipeline("none", self.size, 0, 1)  # eval: centre crop
        boxes = drawer.draw(rng, len(indices), domain.size)
        jobs = [(domain.paths[i], box) for i, box in zip(indices, boxes)]
        return self.normalize(np.stack(_map(lambda job: self.crop(decode_resized(job[0], domain.size), job[1]), jobs,
                                            domain.num_workers)))


# --------------------------------------------------------------------------- up-front check
def cache_dir():
    """Where per-user caches go: ``$DA_CACHE_DIR``, else ``$XDG_CACHE_HOME/da-mindspore``, else ``~/.cache/...``."""
    return os.environ.get("DA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "da-mindspore")


def _file_key(path):
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def _checked_size(path):
    """``[w, h]`` when ``path`` decodes, else why not. JPEGs decode at 1/8 scale (Pillow ``draft``):
    the whole entropy-coded stream is still read, so truncated or corrupt data still fails."""
    try:
        with Image.open(path) as img:
            size = list(img.size)
            img.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            img.convert("RGB")
        return size
    except _UNDECODABLE as err:
        return _reason(err)


def check_images(paths, workers=2, source="", show=20, skip_bad=False):
    """Decode every file once; ONE :class:`DatasetMissingError` lists all that fail, else ``[(w, h)]``.

    ``skip_bad``: no error; files that fail get ``None`` in the returned list (the caller leaves them out).

    The check decodes with Pillow, independently of the C++ decoder (which must only see files that
    decode). Files that decoded are recorded with their byte size, mtime and pixel size in
    ``<cache_dir()>/image_check.json`` and not decoded again while size and mtime are unchanged.
    """
    cache_file = os.path.join(cache_dir(), "image_check.json")
    try:
        with open(cache_file, encoding="utf-8") as handle:
            known = json.load(handle)
    except (OSError, ValueError):
        known = {}
    paths = [os.path.abspath(p) for p in paths]
    keys, todo = {}, []
    for path in paths:
        try:
            keys[path] = _file_key(path)
        except OSError:
            keys[path] = None
        entry = known.get(path)
        if keys[path] is None or not entry or len(entry) != 4 or entry[:2] != keys[path]:
            todo.append(path)

    results = _map(_checked_size, todo, workers)
    bad = [f"{path} ({why})" for path, why in zip(todo, results) if isinstance(why, str)]
    good = {path: keys[path] + wh for path, wh in zip(todo, results) if not isinstance(wh, str)}
    if good:
        known.update(good)
        try:
            os.makedirs(os.path.dirname(cache_file), exist_ok=True)
            tmp = f"{cache_file}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(known, handle)
            os.replace(tmp, cache_file)  # atomic: other ranks may read or write it at the same time
        except OSError:
            pass  # a read-only home only costs the re-check next time
    if bad and not skip_bad:
        more = f" and {len(bad) - show} more" if len(bad) > show else ""
        where = f" of {source}" if source else ""
        raise DatasetMissingError(f"{len(bad)} of {len(paths)} image file(s){where} cannot be decoded: "
                                  f"{', '.join(bad[:show])}{more}; re-extract them or remove them from the image list")
    return [tuple(known[p][2:4]) if p in known and known[p][:2] == keys[p] else None for p in paths]


class FileDomain(ImageDomain):
    """Labelled image files; ``load(i)`` decodes one, ``batch_loader(domain, idx)`` many at once."""

    batch_loader = staticmethod(load_batch)  # engine.data calls ``loader(domain, idx)``

    def __init__(self, paths, labels, class_names, size, num_workers=2, pixel_sizes=None):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.class_names = tuple(class_names)
        self.size, self.num_workers = int(size), int(num_workers)
        self.pixel_sizes = list(pixel_sizes) if pixel_sizes is not None else None  # [(w, h)] from check_images
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    @property
    def streamable(self):
        """Checked JPEGs, none smaller than ``size``: the dataset engine may decode them (see ``stream``)."""
        return self.pixel_sizes is not None and all(p.lower().endswith((".jpg", ".jpeg")) for p in self.paths) \
            and all(w >= self.size and h >= self.size for w, h in self.pixel_sizes)

    def load(self, index):
        return decode_image(self.paths[index], self.size)

    def train_pipeline(self, augment, size, channels, mean, std, bgr=False):
        """The C++ batch pipeline for ``augment``, or None where only the numpy transform exists."""
        if channels != 3 or augment not in FileTrainPipeline.AUGMENTS or (augment == "flip_translate" and self.size != size):
            return None  # (flip_translate's C++ path starts from images decoded at the crop size)
        return FileTrainPipeline(augment, size, mean, std, bgr)

    def subset(self, indices):
        indices = np.asarray(indices).reshape(-1)
        return FileDomain([self.paths[i] for i in indices], self.labels[indices], self.class_names,
                          self.size, self.num_workers,
                          None if self.pixel_sizes is None else [self.pixel_sizes[i] for i in indices])


# --------------------------------------------------------------------------- discovery
def resolve_domain(spec, name):
    key = str(name or "").lower()
    for domain, aliases in spec.domains.items():
        if key == domain or key in aliases:
            return domain
    valid = ", ".join(f"{d} ({'/'.join(a)})" for d, a in spec.domains.items())
    raise ValueError(f"{spec.name}: unknown domain {name!r}; valid: {valid}")


def read_image_list(list_path, root, num_classes):
    """TLlib ``path label`` lines -> (absolute paths, labels); every file must exist."""
    paths, labels = [], []
    with open(list_path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(None, 1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{list_path}:{line_no}: expected 'relative/path.jpg label', got {line.strip()!r}")
            label = int(parts[1])
            if not 0 <= label < num_classes:
                raise ValueError(f"{list_path}:{line_no}: label {label} outside 0..{num_classes - 1}")
            paths.append(os.path.join(root, parts[0]))
            labels.append(label)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise DatasetMissingError(f"{list_path} lists {len(missing)} missing file(s), first {min(len(missing), 20)}: "
                                  f"{', '.join(missing[:20])}{more}; the list paths must be relative to the dataset "
                                  "root")
    return paths, labels


def scan_class_folders(image_dir, classes):
    """``<image_dir>/<class>/*`` in the fixed class order, files sorted by name."""
    unknown = sorted(set(os.listdir(image_dir)) - set(classes))
    unknown = [d for d in unknown if os.path.isdir(os.path.join(image_dir, d))]
    if unknown:
        raise ValueError(f"{image_dir}: unexpected class folder(s) {', '.join(unknown[:3])}; "
                         f"expected only the {len(classes)} class names")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        folder = os.path.join(image_dir, cls)
        if os.path.isdir(folder):
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
            paths += [os.path.join(folder, n) for n in names]
            labels += [label] * len(names)
    return paths, labels


def find_list(spec, cfg, domain, root):
    """The explicit ``cfg.image_list`` or the first standard list file that exists (else None)."""
    if cfg.image_list:
        for candidate in (cfg.image_list, os.path.join(root, cfg.image_list)):
            if os.path.isfile(candidate):
                return candidate
        raise DatasetMissingError(f"image_list {cfg.image_list} not found (looked in the working directory "
                                  f"and in {root})")
    for pattern in spec.list_files:
        candidate = os.path.join(root, pattern.format(domain=domain))
        if os.path.isfile(candidate):
            return candidate
    return None


def build_file_domain(spec, cfg, data_cfg):
    domain = resolve_domain(spec, cfg.domain)
    root = cfg.root
    image_dir = os.path.join(root, spec.image_dir.format(domain=domain))
    layout = f"{spec.image_dir.format(domain=domain)}/<class>/*.jpg" if spec.class_folders else \
        f"{spec.image_dir.format(domain=domain)}/ + {' or '.join(spec.list_files).format(domain=domain)}"
    if not os.path.isdir(image_dir):
        raise DatasetMissingError(f"{spec.name} domain {domain!r} not found: expected {image_dir} "
                                  f"(layout <root>/{layout}, root={root!r}); {spec.where}")
    list_path = find_list(spec, cfg, domain, root)
    if list_path is not None:
        paths, labels = read_image_list(list_path, root, len(spec.classes))
    elif spec.class_folders:
        paths, labels = scan_class_folders(image_dir, spec.classes)
    else:
        raise DatasetMissingError(f"{spec.name} domain {domain!r} needs an image list: none of "
                                  f"{', '.join(os.path.join(root, p.format(domain=domain)) for p in spec.list_files)} "
                                  f"exists; {spec.where}")
    source = list_path or image_dir
    if not paths:
        raise DatasetMissingError(f"{spec.name} domain {domain!r}: no images found in {source}")
    if cfg.verify_counts:
        n_classes = len(set(labels))
        if len(paths) != spec.counts[domain] or n_classes != len(spec.classes):
            raise ValueError(f"{spec.name} domain {domain!r} has {len(paths)} images in {n_classes} classes at "
                             f"{source}, expected {spec.counts[domain]} in {len(spec.classes)}; the copy is "
                             "incomplete or a different version (set verify_counts: false to use it anyway)")
    pixel_sizes = check_images(paths, data_cfg.num_workers, source)
    size = data_cfg.resize_size or data_cfg.image_size
    return FileDomain(paths, labels, spec.classes, size, data_cfg.num_workers, pixel_sizes)


@DATASETS.register("office31")
def office31(cfg, split, data_cfg):
    """Office-31 domain ``cfg.domain`` (train and test splits are the same full domain)."""
    return build_file_domain(OFFICE31, cfg, data_cfg)


@DATASETS.register("imageclef")
def imageclef(cfg, split, data_cfg):
    """ImageCLEF-DA domain ``cfg.domain`` (train and test splits are the same full domain)."""
    return build_file_domain(IMAGECLEF, cfg, data_cfg)
