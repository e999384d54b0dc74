"""Class-split settings: closed-set, partial, open-set and open-partial domain adaptation.

Category shift (Saito et al., "Universal Domain Adaptation through Self-Supervision", NeurIPS 2020;
official code VisionLearningGroup/DANCE ``utils/office_obda.py``, ``utils/office_opda.py``,
``utils/officehome_pada.py``): the source holds the shared classes plus its private ones, the target
the shared classes plus its private ones. With ``data.shared_classes``, ``data.source_private`` and
``data.target_private`` (class indices of the dataset):

* source: keeps shared + source-private images, relabelled ``0..K-1`` in that order
  (K = |shared| + |source-private|, the model's ``num_classes``); shared class ``shared[i]`` -> ``i``;
* target (train and test): keeps shared + target-private images; shared classes get the source's
  labels, every target-private class the one label ``K`` ("unknown"), as the official lists write
  ``len(source_list)`` for them.

The target domains are tagged with the evaluator's task (engine/evaluators.py): ``openset`` when
the target has private classes (open-set, open-partial: H-score), ``partial`` when only the source
has (accuracy over the shared classes), and carry ``known_classes`` (the shared labels
``0..|shared|-1``) and ``unknown_label`` (K, or None).
"""
from dataclasses import dataclass
from typing import Tuple

import numpy as np

UNKNOWN_NAME = "unknown"
FIELDS = ("shared_classes", "source_private", "target_private")


@dataclass(frozen=True)
class ClassSplit:
    shared: Tuple[int, ...]
    source_private: Tuple[int, ...] = ()
    target_private: Tuple[int, ...] = ()

    @property
    def num_known(self):
        """K: the classes the source labels (and the model predicts)."""
        return len(self.shared) + len(self.source_private)

    @property
    def task(self):
        if self.target_private:
            return "openset"
        return "partial" if self.source_private else "classification"

    @property
    def setting(self):
        return {(False, False): "closed", (True, False): "partial", (False, True): "open-set",
                (True, True): "open-partial"}[(bool(self.source_private), bool(self.target_private))]

    def source_labels(self, labels):
        """Dataset labels -> source labels 0..K-1, -1 for images the source drops."""
        return _lookup(labels, {c: i for i, c in enumerate(self.shared + self.source_private)})

    def target_labels(self, labels):
        """Dataset labels -> target labels: shared as in the source, target-private -> K, dropped -> -1."""
        table = {c: i for i, c in enumerate(self.shared)}
        table.update({c: self.num_known for c in self.target_private})
        return _lookup(labels, table)


def _lookup(labels, table):
    labels = np.asarray(labels)
    out = np.full(labels.shape, -1, np.int32)
    for old, new in table.items():
        out[labels == old] = new
    return out


def class_split_of(data_cfg, num_classes):
    """The :class:`ClassSplit` of ``data_cfg`` for a dataset of ``num_classes``, or None (closed set).

    One-line ValueError for a list that cannot be a split (out of range, repeated, overlapping).
    """
    lists = {name: getattr(data_cfg, name) for name in FIELDS}
    if all(v is None for v in lists.values()):
        return None
    if not lists["shared_classes"]:
        raise ValueError("data.source_private / data.target_private need data.shared_classes (the class indices "
                         "both domains hold), e.g. data.shared_classes=[0,1,2,3,4,5]")
    seen = {}
    for name, values in lists.items():
        for c in values or ():
            if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < num_classes:
                raise ValueError(f"data.{name}: class {c!r} is not a class index of this dataset "
                                 f"(0..{num_classes - 1})")
            if c in seen:
                where = "twice in" if seen[c] == name else f"in both data.{seen[c]} and"
                raise ValueError(f"data.{name}: class {c} appears {where} data.{name}; the lists must be disjoint")
            seen[c] = name
    return ClassSplit(tuple(lists["shared_classes"]), tuple(lists["source_private"] or ()),
                      tuple(lists["target_private"] or ()))


def _restrict(domain, labels, class_names, what):
    """``domain`` reduced to the images with ``labels >= 0``, relabelled, with ``class_names``."""
    keep = np.flatnonzero(labels >= 0)
    if len(keep) == 0:
        raise ValueError(f"the class split leaves the {what} domain without images; check data.shared_classes")
    if not hasattr(domain, "subset"):
        raise ValueError(f"the {what} domain ({type(domain).__name__}) cannot be split by class (no subset())")
    out = domain.subset(keep)
    out.labels = labels[keep].astype(np.int32)
    out.class_names = tuple(class_names)
    return out


def apply_class_split(data_cfg, source, target, target_test):
    """``(source, target, target_test)`` under the split of ``data_cfg`` (unchanged when there is none)."""
    split = class_split_of(data_cfg, source.num_classes)
    if split is None:
        return source, target, target_test
    if target.num_classes != source.num_classes:
        raise ValueError(f"a class split indexes one label space: source has {source.num_classes} classes, "
                         f"target {target.num_classes}")
    names = list(source.class_names)
    known_names = [names[c] for c in split.shared + split.source_private]
    target_names = known_names + ([UNKNOWN_NAME] if split.target_private else [])
    source = _restrict(source, split.source_labels(source.labels), known_names, "source")
    domains = []
    for dom, what in ((target, "target train"), (target_test, "target test")):
        dom = _restrict(dom, split.target_labels(dom.labels), target_names, what)
        dom.task = split.task
        dom.known_classes = tuple(range(len(split.shared)))
        dom.unknown_label = split.num_known if split.target_private else None
        dom.class_split = split
        domains.append(dom)
    return (source, *domains)

