"""Builds the train streams and evaluation sets of a config (source, target, held-out source)."""
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from datasets.base import BatchStream, ImageDomain, stratified_split
from datasets.transforms import (CAFFE_BGR_MEAN, CAFFE_BGR_STD, IMAGENET_MEAN, IMAGENET_STD, build_transform,
                                 match_channels)
from engine.registry import DATASETS

SOURCE_STREAM, TARGET_STREAM = 0, 1


@dataclass
class DataBundle:
    source: BatchStream
    target: BatchStream
    target_test: ImageDomain
    source_val: Optional[ImageDomain]
    eval_transform: Callable
    num_classes: int
    loader: Optional[Callable] = None


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


def build_data(cfg, seed, num_shards=1, shard_id=0, strong_views=0):
    d = cfg.data
    source = build_domain(d.source, "train", d)
    target = build_domain(d.target, "train", d)
    target_test = build_domain(d.target, "test", d)
    loader = getattr(source, "batch_loader", None)
    if source.num_classes != target.num_classes:
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
    source_val = None
    if d.source_val_fraction > 0 and segmentation:
        raise ValueError("segmentation domains hold out no labelled source split; set data.source_val_fraction=0")
    if d.source_val_fraction > 0:
        keep, held = stratified_split(source.labels, d.source_val_fraction, seed=12345)
        source, source_val = source.subset(keep), source.subset(held)

    if d.normalize == "source":
        mean, std = channel_stats(source, d.channels, loader)
    elif d.normalize == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif d.normalize == "none":
        mean, std = (0.0,) * d.channels, (1.0,) * d.channels
    elif d.normalize == "center":  # x - 0.5
        mean, std = (0.5,) * d.channels, (1.0,) * d.channels
    elif d.normalize == "caffe":  # BGR 0-255 minus the Caffe ImageNet mean (DeepLab / AdaptSegNet weights)
        mean, std = CAFFE_BGR_MEAN, CAFFE_BGR_STD
    else:
        raise ValueError(f"unknown data.normalize {d.normalize!r}; use source, imagenet, none, center or caffe")
    bgr = d.normalize == "caffe"
    train_tf = build_transform(d.train_transform, d.image_size, d.channels, mean, std, bgr)
    eval_tf = train_tf  # every transform is deterministic when called with rng=None (e.g. centre crop)
    strong_tf = build_transform(d.strong_transform, d.image_size, d.channels, mean, std, bgr)
    joint = build_seg_augment(d.seg_augment) if segmentation and d.seg_augment else None

    def pipeline(dom):  # file domains decode and augment in C++ ops, with the numpy transform's draws
        make = getattr(dom, "train_pipeline", None)
        return make(d.train_transform, d.image_size, d.channels, mean, std, bgr) if make is not None else None

    streams = [BatchStream(dom, d.batch_size, seed, sid, train_tf, strong_tf, num_shards, shard_id,
                           getattr(dom, "batch_loader", None), strong_views, joint, pipeline(dom))
               for sid, dom in ((SOURCE_STREAM, source), (TARGET_STREAM, target))]
    return DataBundle(streams[0], streams[1], target_test, source_val, eval_tf, source.num_classes, loader)
