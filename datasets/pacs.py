"""PACS (Li et al., "Deeper, Broader and Artier Domain Generalization", ICCV 2017) in Dassl's layout.

Domain generalisation: train on three domains, test on the fourth. Files, as Dassl.pytorch
(``dassl/data/datasets/dg/pacs.py``) and the official OCR code (Tongzhou-uestc/ocr-mindspore) read them::

    <root>/pacs/images/<domain>/<class>/<file>          # sketch images are .png, the others .jpg
    <root>/pacs/splits/<domain>_train_kfold.txt         # "art_painting/dog/pic_248.jpg 1": 1-based labels
    <root>/pacs/splits/<domain>_crossval_kfold.txt

Splits: ``train`` = the train list (what the source domains train on), ``val`` = the crossval list
(the source-validation set, used instead of a random held-out part), ``test`` = train + crossval,
the whole domain (the held-out target). Classes: dog, elephant, giraffe, guitar, horse, house,
person; domains art_painting 2048, cartoon 2344, photo 1670, sketch 3929 images
(``verify_counts`` checks train + crossval). Dassl drops ``sketch/dog/n02103406_4068-1.png`` as
broken; that file, and any other that does not decode, is left out with a warning naming it
instead of stopping the run. The download (a Google Drive archive) is manual.
"""
import os
import warnings

from datasets.base import DatasetMissingError
from datasets.office import FileDomain, check_images
from engine.registry import DATASETS

CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
DOMAINS = {"art_painting": ("a", "art"), "cartoon": ("c",), "photo": ("p",), "sketch": ("s",)}
COUNTS = {"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929}
KNOWN_BROKEN = ("sketch/dog/n02103406_4068-1.png",)  # Dassl's _error_paths
SPLIT_LISTS = {"train": ("train",), "val": ("crossval",), "test": ("train", "crossval")}
WHERE = ("download PACS manually (Dassl.pytorch's pacs.zip: Li et al. 2017, Google Drive id "
         "1m4X4fROCCXMO0lRLrr6Zz9Vb3974NWhE) and extract it so that <root>/pacs/images and <root>/pacs/splits exist")


def resolve_pacs_domain(name):
    key = str(name or "").lower()
    for domain, aliases in DOMAINS.items():
        if key == domain or key in aliases:
            return domain
    valid = ", ".join(f"{d} ({'/'.join(a)})" for d, a in DOMAINS.items())
    raise ValueError(f"pacs: unknown domain {name!r}; valid: {valid}")


def read_pacs_split(path):
    """``[(relative path, 0-based label)]`` of one split file (1-based labels in the file)."""
    items = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise ValueError(f"{path}:{line_no}: expected 'domain/class/file label', got {line.strip()!r}")
            label = int(parts[1])
            if not 1 <= label <= len(CLASSES):
                raise ValueError(f"{path}:{line_no}: label {label} outside 1..{len(CLASSES)} (PACS labels are 1-based)")
            items.append((parts[0], label - 1))
    return items


def pacs_items(root, domain, split):
    """``[(relative path, label)]`` of ``split`` (train | val | test) of ``domain``, with the published count checked
    by the caller; a missing split file is a one-line error."""
    split_dir = os.path.join(root, "pacs", "splits")
    items = []
    for part in SPLIT_LISTS[split]:
        path = os.path.join(split_dir, f"{domain}_{part}_kfold.txt")
        if not os.path.isfile(path):
            raise DatasetMissingError(f"pacs split file not found: {path}; {WHERE}")
        items += read_pacs_split(path)
    return items


def drop_broken(items, image_dir, workers):
    """``items`` without the files that do not decode (Dassl's known broken sketch included), with one warning."""
    known = [it for it in items if it[0] in KNOWN_BROKEN]
    items = [it for it in items if it[0] not in KNOWN_BROKEN]
    missing = [rel for rel, _ in items if not os.path.isfile(os.path.join(image_dir, rel))]
    if missing:
        raise DatasetMissingError(f"pacs: {len(missing)} listed image(s) missing under {image_dir}, first: "
                                  f"{', '.join(missing[:5])}; {WHERE}")
    sizes = check_images([os.path.join(image_dir, rel) for rel, _ in items], workers, "pacs", skip_bad=True)
    bad = [rel for (rel, _), size in zip(items, sizes) if size is None]
    dropped = [rel for rel, _ in known] + bad
    if dropped:
        warnings.warn(f"pacs: left out {len(dropped)} image(s) that do not decode: {', '.join(dropped[:5])}"
                      + (" (Dassl skips it too)" if known and not bad else ""), stacklevel=2)
    keep = [size is not None for size in sizes]
    return [it for it, k in zip(items, keep) if k], [s for s in sizes if s is not None]


@DATASETS.register("pacs")
def pacs(cfg, split, data_cfg):
    """PACS domain ``cfg.domain``: split ``train`` (train list), ``val`` (crossval list) or ``test`` (both)."""
    if split not in SPLIT_LISTS:
        raise ValueError(f"pacs: unknown split {split!r}; valid: {', '.join(SPLIT_LISTS)}")
    domain = resolve_pacs_domain(cfg.domain)
    image_dir = os.path.join(cfg.root, "pacs", "images")
    if not os.path.isdir(image_dir):
        raise DatasetMissingError(f"pacs not found: expected {image_dir} (root={cfg.root!r}); {WHERE}")
    items = pacs_items(cfg.root, domain, split)
    if cfg.verify_counts and split == "test" and len(items) != COUNTS[domain]:
        raise ValueError(f"pacs domain {domain!r} lists {len(items)} images, expected {COUNTS[domain]}; the copy is "
                         "incomplete or a different version (set verify_counts: false to use it anyway)")
    items, sizes = drop_broken(items, image_dir, data_cfg.num_workers)
    if not items:
        raise DatasetMissingError(f"pacs domain {domain!r}: no decodable images in the {split} split; {WHERE}")
    size = data_cfg.resize_size or data_cfg.image_size
    return FileDomain([os.path.join(image_dir, rel) for rel, _ in items], [label for _, label in items], CLASSES,
                      size, data_cfg.num_workers, sizes)


pacs.splits = tuple(SPLIT_LISTS)  # has a "val" split: engine.data uses it as the source validation set
