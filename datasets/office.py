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
"""
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Tuple

import numpy as np
from PIL import Image

from datasets.base import DatasetMissingError, ImageDomain
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
def decode_image(path, size):
    """RGB float32 HWC in [0, 1], resized to ``size`` x ``size`` (bilinear, PIL antialiasing)."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((size, size), Image.BILINEAR)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetMissingError(f"cannot decode image {path} ({str(err).splitlines()[0]}); "
                                  "re-extract it or remove it from the image list") from None
    return np.asarray(img, dtype=np.float32) / 255.0


@lru_cache(maxsize=None)
def _pool(workers):
    return ThreadPoolExecutor(workers, thread_name_prefix="decode")


def load_batch(domain, indices):
    """NHWC float32 images of ``domain[indices]`` in the order given, decoded on a thread pool.

    Pillow releases the GIL while decoding and resizing, so threads scale across cores; each
    image is decoded independently, so the result does not depend on the number of workers.
    """
    paths = [domain.paths[i] for i in np.asarray(indices).reshape(-1)]
    if domain.num_workers > 1 and len(paths) > 1:
        images = list(_pool(domain.num_workers).map(decode_image, paths, [domain.size] * len(paths)))
    else:
        images = [decode_image(p, domain.size) for p in paths]
    out = np.empty((len(paths), domain.size, domain.size, 3), np.float32)
    for k, image in enumerate(images):
        out[k] = image
    return out


class FileDomain(ImageDomain):
    """Labelled image files; ``load(i)`` decodes one, ``batch_loader(domain, idx)`` many at once."""

    batch_loader = staticmethod(load_batch)  # engine.data calls ``loader(domain, idx)``

    def __init__(self, paths, labels, class_names, size, num_workers=2):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.class_names = tuple(class_names)
        self.size, self.num_workers = int(size), int(num_workers)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def load(self, index):
        return decode_image(self.paths[index], self.size)

    def subset(self, indices):
        indices = np.asarray(indices).reshape(-1)
        return FileDomain([self.paths[i] for i in indices], self.labels[indices], self.class_names,
                          self.size, self.num_workers)


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
        raise DatasetMissingError(f"{list_path} lists {len(missing)} missing file(s), first {missing[0]}; "
                                  "the list paths must be relative to the dataset root")
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
    size = data_cfg.resize_size or data_cfg.image_size
    return FileDomain(paths, labels, spec.classes, size, data_cfg.num_workers)


@DATASETS.register("office31")
def office31(cfg, split, data_cfg):
    """Office-31 domain ``cfg.domain`` (train and test splits are the same full domain)."""
    return build_file_domain(OFFICE31, cfg, data_cfg)


@DATASETS.register("imageclef")
def imageclef(cfg, split, data_cfg):
    """ImageCLEF-DA domain ``cfg.domain`` (train and test splits are the same full domain)."""
    return build_file_domain(IMAGECLEF, cfg, data_cfg)
