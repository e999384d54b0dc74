"""GTA5 and Cityscapes, the GTA5 -> Cityscapes segmentation benchmark, as AdaptSegNet reads them.

Both downloads are manual (registration / large archives) and are read from ``data.*.root``:

* ``cityscapes`` (Cordts et al., CVPR 2016): ``<root>/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png``
  and ``<root>/gtFine/{train,val}/<city>/*_gtFine_labelIds.png`` (leftImg8bit_trainvaltest.zip +
  gtFine_trainvaltest.zip from cityscapes-dataset.com). Split ``train`` -> ``train`` (2975 images),
  ``test`` -> ``val`` (500). Images are resized bicubically to ``domain_cfg.resize`` (default
  1024x512, AdaptSegNet's ``--input-size-target``); train labels with nearest neighbour to the same
  size, val labels stay at 2048x1024 because evaluation upsamples the logits to full resolution
  (AdaptSegNet ``evaluate_cityscapes.py``). The train split is unlabelled (every pixel ignored) when
  ``gtFine/train`` is absent, as adaptation never reads target labels; when present, every image
  needs its label. ``domain_cfg.image_list`` (AdaptSegNet's ``dataset/cityscapes_list/*.txt``:
  ``<city>/<name>_leftImg8bit.png`` per line, relative to ``leftImg8bit/<split>``) replaces the scan.
* ``gta5`` ("Playing for Data", Richter et al., ECCV 2016): ``<root>/images/*.png`` and
  ``<root>/labels/*.png`` holding Cityscapes label ids. By default every image (24,966, as
  AdaptSegNet's ``gta5_list/train.txt``); ``domain_cfg.image_list`` (one file name per line) or
  ``domain_cfg.domain`` = ``train`` | ``val`` | ``test`` (the standard split in ``<root>/split.mat``,
  1-based image numbers under ``trainIds`` / ``valIds`` / ``testIds``) select a subset. Images and
  labels are resized to ``resize`` (default 1280x720).

Label ids map to the 19 train ids through a lookup table built from ``cityscapesscripts.helpers.labels``
(the benchmark's own table); every other id (train id 255 or -1, ids not in the table) becomes 255.
Pairs are validated up front from the file headers; ``verify_counts: false`` accepts incomplete
copies and image/label size mismatches (both are then resized, as AdaptSegNet does implicitly).
"""
import glob
import os

import numpy as np
from cityscapesscripts.helpers.labels import labels as CS_LABELS

from datasets.base import DatasetMissingError
from datasets.image_utils import check_count
from datasets.segmentation import IGNORE_INDEX, SegFileDomain, check_pairs, read_name_list
from engine.registry import DATASETS


def _train_labels():
    """Cityscapes labels that are trained and evaluated on, in train-id order."""
    trained = sorted((lab for lab in CS_LABELS if 0 <= lab.trainId < IGNORE_INDEX), key=lambda lab: lab.trainId)
    assert [lab.trainId for lab in trained] == list(range(len(trained))), "train ids must be 0..K-1"
    return trained


_TRAINED = _train_labels()
CITYSCAPES_CLASSES = tuple(lab.name for lab in _TRAINED)
CITYSCAPES_PALETTE = np.array([lab.color for lab in _TRAINED], np.uint8)
TRAIN_ID_TO_ID = np.array([lab.id for lab in _TRAINED], np.uint8)  # writing predictions as label ids
ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, np.uint8)
for _lab in _TRAINED:
    ID_TO_TRAIN_ID[_lab.id] = _lab.trainId

CITYSCAPES_COUNTS = {"train": 2975, "val": 500}
GTA5_COUNTS = {"all": 24966, "train": 12403, "val": 6382, "test": 6181}  # split.mat of Richter et al.
CITYSCAPES_SIZE, GTA5_SIZE = (1024, 512), (1280, 720)  # AdaptSegNet's input sizes (w, h)

CITYSCAPES_WHERE = ("download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
                    "https://www.cityscapes-dataset.com (registration required) and unzip both into the root, "
                    "giving <root>/leftImg8bit/{train,val}/<city>/ and <root>/gtFine/{train,val}/<city>/")
GTA5_WHERE = ("download the 'Playing for Data' images and labels (Richter et al., ECCV 2016) from "
              "https://download.visinf.tu-darmstadt.de/data/from_games/ and unzip them into <root>/images/ and "
              "<root>/labels/")


def id_to_train_id(ids):
    """Cityscapes label ids (any integer array) -> uint8 train ids, 255 for everything not trained on."""
    ids = np.asarray(ids)
    if ids.dtype == np.uint8:
        return ID_TO_TRAIN_ID[ids]
    inside = (ids >= 0) & (ids < 256)
    return np.where(inside, ID_TO_TRAIN_ID[np.where(inside, ids, 0).astype(np.intp)], IGNORE_INDEX).astype(np.uint8)


def resize_of(cfg, default):
    """``domain_cfg.resize`` as (w, h), or ``default`` when unset."""
    size = getattr(cfg, "resize", None)
    if size is None:
        return default
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ValueError(f"resize must be [width, height] in pixels, got {size!r}")
    return int(size[0]), int(size[1])


def _workers(data_cfg):
    return getattr(data_cfg, "num_workers", 2) if data_cfg is not None else 2


def _require_dir(path, dataset, where):
    if not os.path.isdir(path):
        raise DatasetMissingError(f"{dataset} not found: expected {path}; {where}")


@DATASETS.register("cityscapes")
def cityscapes(cfg, split, data_cfg=None):
    """Cityscapes ``train`` (split train) or ``val`` (split test) as a :class:`SegFileDomain`."""
    folders = {"train": "train", "test": "val"}
    if split not in folders:
        raise ValueError(f"cityscapes: unknown split {split!r}; use train or test (= val)")
    folder = folders[split]
    image_dir = os.path.join(cfg.root, "leftImg8bit", folder)
    label_dir = os.path.join(cfg.root, "gtFine", folder)
    _require_dir(image_dir, f"cityscapes {folder} images", CITYSCAPES_WHERE)
    if cfg.image_list:
        image_paths = [os.path.join(image_dir, name) for name in read_name_list(cfg.image_list, cfg.root)]
    else:
        image_paths = sorted(glob.glob(os.path.join(image_dir, "*", "*_leftImg8bit.png")))
        if not image_paths:
            raise DatasetMissingError(f"cityscapes: no <city>/*_leftImg8bit.png under {image_dir}; {CITYSCAPES_WHERE}")
    label_paths = None
    if split == "test" or os.path.isdir(label_dir):  # target train labels are optional (never used by UDA)
        _require_dir(label_dir, f"cityscapes {folder} labels", CITYSCAPES_WHERE)
        label_paths = []
        for path in image_paths:
            rel = os.path.relpath(path, image_dir)
            if not rel.endswith("_leftImg8bit.png"):
                raise ValueError(f"cityscapes image {path} is not named <city>_<seq>_<frame>_leftImg8bit.png")
            label_paths.append(os.path.join(label_dir, rel[:-len("_leftImg8bit.png")] + "_gtFine_labelIds.png"))
    check_pairs(image_paths, label_paths, same_size=cfg.verify_counts, workers=_workers(data_cfg))
    check_count("cityscapes", folder, len(image_paths), CITYSCAPES_COUNTS[folder], cfg.verify_counts)
    size = resize_of(cfg, CITYSCAPES_SIZE)
    return SegFileDomain(image_paths, label_paths, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, size=size,
                         label_size=size if split == "train" else None, label_map=ID_TO_TRAIN_ID,
                         num_workers=_workers(data_cfg))


def gta5_split_names(root, subset):
    """File names of the ``subset`` (train | val | test) images listed in ``<root>/split.mat``."""
    from scipy.io import loadmat

    path = os.path.join(root, "split.mat")
    if not os.path.isfile(path):
        raise DatasetMissingError(f"gta5 domain {subset!r} needs the standard split {path}; get split.mat from "
                                  "https://download.visinf.tu-darmstadt.de/data/from_games/ (or leave domain unset "
                                  "to use all images)")
    try:
        table = loadmat(path)
    except (OSError, ValueError) as err:
        raise DatasetMissingError(f"cannot read {path} ({err}); download split.mat again") from None
    key = f"{subset}Ids"
    if key not in table:
        raise ValueError(f"{path} has no {key!r}; expected keys trainIds, valIds, testIds")
    return [f"{int(i):05d}.png" for i in np.asarray(table[key]).reshape(-1)]


@DATASETS.register("gta5")
def gta5(cfg, split, data_cfg=None):
    """GTA5 images (all, a standard split or an image list) as a :class:`SegFileDomain`; ``split`` is unused."""
    image_dir, label_dir = os.path.join(cfg.root, "images"), os.path.join(cfg.root, "labels")
    _require_dir(image_dir, "gta5 images", GTA5_WHERE)
    _require_dir(label_dir, "gta5 labels", GTA5_WHERE)
    subset = str(cfg.domain or "all").lower()
    if subset not in GTA5_COUNTS:
        raise ValueError(f"gta5: unknown domain {cfg.domain!r}; use train, val, test (split.mat) or all")
    if cfg.image_list and subset != "all":
        raise ValueError("gta5: set either image_list or domain (a split.mat subset), not both")
    if cfg.image_list:
        names = read_name_list(cfg.image_list, cfg.root)
    elif subset != "all":
        names = gta5_split_names(cfg.root, subset)
    else:
        names = sorted(n for n in os.listdir(image_dir) if n.lower().endswith(".png"))
        if not names:
            raise DatasetMissingError(f"gta5: no *.png in {image_dir}; {GTA5_WHERE}")
    image_paths = [os.path.join(image_dir, n) for n in names]
    label_paths = [os.path.join(label_dir, n) for n in names]
    check_pairs(image_paths, label_paths, same_size=cfg.verify_counts, workers=_workers(data_cfg))
    check_count("gta5", subset, len(names), GTA5_COUNTS[subset], cfg.verify_counts)
    size = resize_of(cfg, GTA5_SIZE)
    return SegFileDomain(image_paths, label_paths, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, size=size,
                         label_size=size, label_map=ID_TO_TRAIN_ID, num_workers=_workers(data_cfg))
