"""Builds the train streams and evaluation sets of a config (source, target, held-out source)."""
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np

from datasets.base import BatchStream, ImageDomain, stratified_split
from datasets.class_split import apply_class_split
from datasets.multi_source import DomainBalancedStream, concat_domains
from datasets.transforms import (CAFFE_BGR_MEAN, CAFFE_BGR_STD, IMAGENET_MEAN, IMAGENET_STD, build_transform,
                                 match_channels)
from engine.registry import DATASETS

SOURCE_STREAM, TARGET_STREAM = 0, 1
TARGET_LABELED_STREAM = 2  # SSDA: the few-shot labelled target images (datasets/few_shot.py)


@dataclass
class DataBundle:
    source: BatchStream
    target: BatchStream
    target_test: ImageDomain
    source_val: Optional[ImageDomain]
    eval_transform: Callable
    num_classes: int
    loader: Optional[Callable] = None
    target_labeled: Optional[BatchStream] = None  # SSDA: few-shot labelled target stream (data.target_labeled_per_class)
    target_val: Optional[ImageDomain] = None       # SSDA: labelled target validation split (data.target_val_per_class)
    few_shot: Optional[object] = None              # SSDA: the datasets.few_shot.FewShotSplit, saved in the run dir


def build_domain(domain_cfg, split, data_cfg):
    """``DATASETS[name](domain_cfg, split, data_cfg) -> ImageDomain`` with split train | test."""
    return DATASETS.build(domain_cfg.name, domain_cfg, split, data_cfg)


def channel_stats(domain, channels, loader=None, limit=512):
    """Per-channel mean/std of (at most ``limit``, evenly spaced) images of ``domain``."""
    idx = np.linspace(0, len(domain) - 1, min(limit, len(domain))).astype(int)
    images = loader(domain, idx) if loader is not None else domain.images[idx]
    images = match_channels(np.asarray(images, np.float32), channels)
    return images.mean(axis=(0, 1, 2)), images.std(axis=(0, 1, 2)) + 1e-6


def build_seg_augment(options):
    """``data.seg_augment`` -> ``fn(images, labels, rng) -> (images, labels)`` (joint scale/crop/flip)."""
    from datasets.segmentation import seg_augment

    unknown = sorted(set(options) - {"scale", "crop", "flip"})
    if unknown:
        raise ValueError(f"data.seg_augment: unknown key(s) {', '.join(unknown)}; valid: scale, crop, flip")
    return lambda images, labels, rng: seg_augment(images, labels, rng, **options)


def build_source(d):
    """``(source training domain, its labelled validation split or None)``.

    A list in ``data.source.domain`` joins those domains into one (multi-source training, domain
    generalisation: ``datasets/multi_source.py``, batches drawn across them in fixed shares). A
    dataset with its own validation split (``"val"`` in its builder's ``splits``: PACS's crossval
    lists) gives it as the validation set, in place of a random held-out part.
    """
    names = d.source.domain if isinstance(d.source.domain, list) else [d.source.domain]
    with_val = "val" in getattr(DATASETS.get(d.source.name), "splits", ())
    parts = [build_domain(replace(d.source, domain=name), "train", d) for name in names]
    vals = [build_domain(replace(d.source, domain=name), "val", d) for name in names] if with_val else None
    if len(parts) == 1:
        return parts[0], vals[0] if vals else None
    return concat_domains(parts), concat_domains(vals) if vals else None


SOURCE_SAMPLERS = ("balanced", "random")


def resolve_epochs(cfg, global_batch):
    """``cfg`` with ``train.epochs`` turned into iterations: ``epochs x (source training images // global_batch)``
    (the source stream's epoch, as a drop-last loader over the joined source domains); ``optim.lr_step_every`` and
    ``train.log_every / eval_every / ckpt_every`` of 0 become one epoch's iterations. Unchanged when
    ``train.epochs`` is 0 (then those must be >= 1).
    """
    epochs, t = cfg.train.epochs, cfg.train
    per_epoch_keys = {"optim.lr_step_every": cfg.optim.lr_step_every, "train.log_every": t.log_every,
                      "train.eval_every": t.eval_every, "train.ckpt_every": t.ckpt_every}
    zero = [k for k, v in per_epoch_keys.items() if v == 0]
    if epochs < 0 or (epochs == 0 and zero):
        raise ValueError(f"train.epochs={epochs}: epochs must be >= 0, and {', '.join(zero)} 0 (one epoch) needs "
                         "train.epochs > 0")
    if epochs == 0:
        return cfg
    d = cfg.data
    source, source_val = build_source(d)
    size = len(source)
    if d.source_val_fraction > 0 and source_val is None:
        size = len(stratified_split(source.labels, d.source_val_fraction, seed=12345)[0])
    per_epoch = size // global_batch
    if per_epoch < 1:
        raise ValueError(f"train.epochs: {size} source images make no batch of {global_batch}; lower data.batch_size")
    train = replace(t, iters=epochs * per_epoch, log_every=t.log_every or per_epoch,
                    eval_every=t.eval_every or per_epoch, ckpt_every=t.ckpt_every or per_epoch)
    optim = replace(cfg.optim, lr_step_every=cfg.optim.lr_step_every or per_epoch)
    return replace(cfg, train=train, optim=optim)


def build_data(cfg, seed, num_shards=1, shard_id=0, strong_views=0):
    d = cfg.data
    source, source_val = build_source(d)
    target = build_domain(d.target, "train", d)
    target_test = build_domain(d.target, "test", d)
    loader = getattr(source, "batch_loader", None)
    # open-set / partial / open-partial: the target adds an "unknown" label (datasets/class_split.py)
    source, target, target_test = apply_class_split(d, source, target, target_test)
    if getattr(target, "class_split", None) is None and source.num_classes != target.num_classes:
        raise ValueError(f"source has {source.num_classes} classes, target {target.num_classes}; "
                         "domains must share the label space")
    if source.num_classes != cfg.model.num_classes:
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but the data has {source.num_classes} "
                         f"classes; set model.num_classes={source.num_classes}")
    segmentation = getattr(source, "task", "classification") == "segmentation"
    if segmentation and d.train_transform != "identity":
        raise ValueError(f"data.train_transform={d.train_transform!r} resizes or crops images but not their label maps; "
                         "segmentation configs use train_transform: identity and data.seg_augment for joint "
                         "scale/crop/flip")
    if d.source_val_fraction > 0 and segmentation:
        raise ValueError("segmentation domains hold out no labelled source split; set data.source_val_fraction=0")
    if d.source_val_fraction > 0 and source_val is None:
        keep, held = stratified_split(source.labels, d.source_val_fraction, seed=12345)
        domain_ids = getattr(source, "domain_ids", None)
        source, source_val = source.subset(keep), source.subset(held)
        if domain_ids is not None:
            source.domain_ids = domain_ids[keep]

    if d.normalize == "source":
        mean, std = channel_stats(source, d.channels, loader)
    elif d.normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif d.normalize == "none":
        mean, std = (0.0,) * d.channels, (1.0,) * d.channels
    elif d.normalize == "center":  # x - 0.5
        mean, std = (0.5,) * d.channels, (1.0,) * d.channels
    elif d.normalize == "symmetric":  # (x - 0.5) / 0.5, inputs in [-1, 1] (issue #17's LeNet-BN recipes)
        mean, std = (0.5,) * d.channels, (0.5,) * d.channels
    elif d.normalize == "caffe":  # BGR 0-255 minus the Caffe ImageNet mean (DeepLab / AdaptSegNet weights)
        mean, std = CAFFE_BGR_MEAN, CAFFE_BGR_STD
    else:
        raise ValueError(f"unknown data.normalize {d.normalize!r}; "
                         "use source, imagenet, none, center, symmetric or caffe")
    bgr = d.normalize == "caffe"
    train_tf = build_transform(d.train_transform, d.image_size, d.channels, mean, std, bgr)
    eval_tf = train_tf  # every transform is deterministic when called with rng=None (e.g. centre crop)
    strong_tf = build_transform(d.strong_transform, d.image_size, d.channels, mean, std, bgr)
    joint = build_seg_augment(d.seg_augment) if segmentation and d.seg_augment else None

    def pipeline(dom):  # file domains decode and augment in C++ ops, with the numpy transform's draws
        make = getattr(dom, "train_pipeline", None)
        return make(d.train_transform, d.image_size, d.channels, mean, std, bgr) if make is not None else None

    if d.source_sampler not in SOURCE_SAMPLERS:
        raise ValueError(f"unknown data.source_sampler {d.source_sampler!r}; use {' or '.join(SOURCE_SAMPLERS)}")
    balanced = d.source_sampler == "balanced"
    streams = [(DomainBalancedStream if balanced and hasattr(dom, "domain_ids") else BatchStream)(
                   dom, d.batch_size, seed, sid, train_tf, strong_tf, num_shards, shard_id,
                   getattr(dom, "batch_loader", None), strong_views, joint, pipeline(dom))
               for sid, dom in ((SOURCE_STREAM, source), (TARGET_STREAM, target))]
    bundle = DataBundle(streams[0], streams[1], target_test, source_val, eval_tf, source.num_classes, loader)
    return add_few_shot(bundle, d, seed, num_shards, shard_id, train_tf, pipeline)


def add_few_shot(bundle, d, seed, num_shards, shard_id, train_tf, pipeline):
    """SSDA (``data.target_labeled_per_class > 0``): split the target train domain (datasets/few_shot.py).

    The unlabelled target stream loses the labelled images, a labelled-target stream of
    ``min(batch_size, labelled images)`` (MME's ``target_loader``) is added, the validation split
    becomes ``target_val`` and, where the test holds the train images (Office-31), the labelled and
    validation images leave the test.
    """
    if d.target_labeled_per_class <= 0:
        return bundle
    from datasets.few_shot import apply_split, make_split

    target_train = bundle.target.domain
    split = make_split(d, target_train, bundle.target_test)
    unlabelled, labeled, val, test = apply_split(split, target_train, bundle.target_test)
    old = bundle.target
    target = BatchStream(unlabelled, old.batch_size, seed, TARGET_STREAM, old.transform, old.strong, num_shards, shard_id,
                         old.loader, old.strong_views, old.joint, pipeline(unlabelled))
    labeled_batch = min(d.batch_size, len(labeled) // num_shards)
    labeled_stream = BatchStream(labeled, labeled_batch, seed, TARGET_LABELED_STREAM, train_tf, None, num_shards,
                                 shard_id, old.loader, 0, None, pipeline(labeled))
    return replace(bundle, target=target, target_test=test, target_labeled=labeled_stream, target_val=val,
                   few_shot=split)


def with_source_domain(data, domain):
    """``data`` with its source training stream reading ``domain`` instead (same batch size, seed, stream id,
    shard and transforms), for a phase that trains on another source set (a method's ``phase_source``:
    CyCADA's translated source). ``domain`` is an in-memory set (no file pipeline)."""
    old = data.source
    stream = BatchStream(domain, old.batch_size, old.seed, old.stream_id, old.transform, old.strong, old.num_shards,
                         old.shard_id, getattr(domain, "batch_loader", None), old.strong_views, old.joint)
    return replace(data, source=stream)
