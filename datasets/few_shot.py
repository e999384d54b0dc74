"""Few-shot target labels for semi-supervised domain adaptation (SSDA): a fixed, seeded split.

Saito et al., "Semi-supervised Domain Adaptation via Minimax Entropy", ICCV 2019 (MME), ship the
split as lists (VisionLearningGroup/SSDA_MME ``data/txt/office/labeled_target_images_<d>_<k>.txt``,
``validation_target_images_<d>_3.txt``, ``unlabeled_target_images_<d>_<k>.txt``): k labelled
images per class for training, 3 per class for validation, and the rest unlabelled; the
unlabelled list is also their test set. Here the split is drawn from the target *train* domain:

* per class, one permutation seeded by ``data.few_shot_seed`` only (not ``train.seed``, so every
  seed of a suite sees the same labels, as with MME's lists); its first ``target_val_per_class``
  images are the validation split and the next ``target_labeled_per_class`` the labelled split.
  The validation split is therefore the same for 1- and 3-shot, and the 1-shot images are
  among the 3-shot ones.
* the unlabelled training stream is the target train domain without the labelled images (MME:
  ``unlabeled_target_images`` excludes them; it keeps the validation images, and so does this).
* where the target test split holds the same images as target train (Office-31: both are the
  whole domain), the labelled *and* validation images are removed from it, so the test is
  disjoint from every image whose label the run may read. (MME's test list excludes the labelled
  images but keeps the validation ones; removing them too is the stricter choice.)

The indices are saved as ``few_shot_split.json`` in the run directory and checked on resume.
"""
import json
import os
from dataclasses import asdict, dataclass
from typing import List

import numpy as np

SPLIT_FILE = "few_shot_split.json"


class FewShotSplitError(ValueError):
    """The requested split cannot be drawn, or a saved one differs from the run's."""


@dataclass
class FewShotSplit:
    """Indices into the target *train* domain (sorted), and the test indices kept (None: the test is separate)."""
    seed: int
    labeled_per_class: int
    val_per_class: int
    num_target_train: int
    labeled: List[int]
    val: List[int]
    test_kept: object = None  # List[int] or None

    def to_json(self):
        return asdict(self)


def draw_split(labels, labeled_per_class, val_per_class, seed, num_classes=None):
    """``(labeled, val)`` index arrays: per class, ``val_per_class`` then ``labeled_per_class`` images.

    Deterministic in ``(labels, seed)``; every class must have enough images.
    """
    labels = np.asarray(labels)
    if labeled_per_class < 1:
        raise FewShotSplitError(f"data.target_labeled_per_class must be >= 1 to draw a split, got {labeled_per_class}")
    if val_per_class < 0:
        raise FewShotSplitError(f"data.target_val_per_class must be >= 0, got {val_per_class}")
    classes = range(int(num_classes) if num_classes is not None else int(labels.max()) + 1)
    need = labeled_per_class + val_per_class
    labeled, val = [], []
    for cls in classes:
        idx = np.flatnonzero(labels == cls)
        if len(idx) < need:
            raise FewShotSplitError(
                f"target class {cls} has {len(idx)} training image(s), fewer than data.target_labeled_per_class + "
                f"data.target_val_per_class = {need}; lower them")
        perm = np.random.default_rng([seed, 0x55DA, cls]).permutation(idx)
        val.extend(perm[:val_per_class])
        labeled.extend(perm[val_per_class:need])
    return np.sort(np.asarray(labeled, np.int64)), np.sort(np.asarray(val, np.int64))


def same_images(first, second):
    """Whether two domains hold the same images in the same order (file paths, or in-memory arrays)."""
    if len(first) != len(second):
        return False
    paths = getattr(first, "paths", None), getattr(second, "paths", None)
    if paths[0] is not None and paths[1] is not None:
        return list(paths[0]) == list(paths[1])
    images = getattr(first, "images", None), getattr(second, "images", None)
    if images[0] is not None and images[1] is not None:
        return images[0] is images[1] or np.array_equal(images[0], images[1])
    return False


def make_split(data_cfg, target, target_test):
    """The :class:`FewShotSplit` of ``data_cfg`` over the target train domain (and which test images stay)."""
    labeled, val = draw_split(target.labels, data_cfg.target_labeled_per_class, data_cfg.target_val_per_class,
                              data_cfg.few_shot_seed, target.num_classes)
    test_kept = None
    if same_images(target, target_test):
        used = np.zeros(len(target), bool)
        used[labeled] = used[val] = True
        test_kept = np.flatnonzero(~used).tolist()
    return FewShotSplit(data_cfg.few_shot_seed, data_cfg.target_labeled_per_class, data_cfg.target_val_per_class,
                        len(target), labeled.tolist(), val.tolist(), test_kept)


def apply_split(split, target, target_test):
    """``(unlabelled target, labelled target, target val, target test)`` domains of ``split``."""
    unlabelled = np.setdiff1d(np.arange(len(target)), split.labeled)
    test = target_test if split.test_kept is None else target_test.subset(np.asarray(split.test_kept, np.int64))
    return (target.subset(unlabelled), target.subset(np.asarray(split.labeled, np.int64)),
            target.subset(np.asarray(split.val, np.int64)), test)


def save_or_check(split, run_dir, write=True):
    """Write ``few_shot_split.json`` into ``run_dir``; if one is there (a resumed run), it must be identical."""
    path = os.path.join(run_dir, SPLIT_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            saved = json.load(handle)
        if saved != split.to_json():
            raise FewShotSplitError(f"{path} holds a different few-shot split than this run draws (the target data "
                                    "or data.few_shot_seed changed); resume with the same data or choose another "
                                    "train.output_dir")
        return path
    if write:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(split.to_json(), handle)
        os.replace(tmp, path)
    return path
