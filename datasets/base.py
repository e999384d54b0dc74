"""Domains (labelled image sets) and deterministic, resumable batch streams over them.

A *domain* is random-access: ``len(d)``, ``d.labels`` (int array), ``d.num_classes``,
``d.class_names`` and ``d.load(i) -> HWC uint8 or float32 [0, 1] image``. In-memory sets
(:class:`ArrayDomain`) also expose ``d.images`` so batches are built vectorised.

A :class:`BatchStream` turns a domain into an infinite stream of fixed-size batches whose
content at iteration ``it`` is a pure function of ``(seed, stream_id, it)``: per-epoch
permutations seeded by ``(seed, stream_id, epoch)`` and per-batch augmentation seeded by
``(seed, stream_id, it)``. Resuming at iteration ``it`` therefore replays exactly the batches an
uninterrupted run would have seen, and each data-parallel rank reads its own shard.
"""
import copy

import numpy as np


class DatasetMissingError(FileNotFoundError):
    """A dataset file is absent or corrupt; the message says which and where to put it."""


class ImageDomain:
    class_names = ()

    @property
    def num_classes(self):
        return len(self.class_names)

    def __len__(self):
        return len(self.labels)

    def load(self, index):  # pragma: no cover - interface
        raise NotImplementedError


class ArrayDomain(ImageDomain):
    """Images held in memory as float32 NHWC in [0, 1]."""

    def __init__(self, images, labels, class_names=None):
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        self.images = images.astype(np.float32, copy=False)
        self.labels = np.asarray(labels, dtype=np.int32)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        n_cls = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.class_names = tuple(class_names) if class_names is not None else tuple(str(c) for c in range(n_cls))

    def load(self, index):
        return self.images[index]

    def subset(self, indices):
        return ArrayDomain(self.images[indices], self.labels[indices], self.class_names)


def stratified_split(labels, fraction, seed):
    """Indices (first, second) with ``fraction`` of every class in ``second``; deterministic."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction))
        second.extend(idx[:k])
        first.extend(idx[k:])
    return np.sort(np.array(first, dtype=np.int64)), np.sort(np.array(second, dtype=np.int64))


class BatchStream:
    """Infinite, seekable stream of ``(x NCHW float32, y int32[, x_strong])`` batches.

    ``transform(images NHWC, rng) -> NHWC`` is applied per batch (vectorised for in-memory
    domains); ``strong_views`` > 0 adds that many views of the same images made by ``strong``,
    stacked view-major into one (V*N, C, H, W) array.
    ``num_shards/shard_id`` give each data-parallel rank a disjoint slice of every epoch.
    Segmentation domains give label maps as ``y``; ``joint`` augments images and maps together.
    ``pipeline(domain, indices, rng) -> NCHW float32``, when given, replaces ``loader`` +
    ``transform`` for ``x`` (file domains decode and augment in C++ ops with the same draws).
    """

    def __init__(self, domain, batch_size, seed, stream_id, transform, strong=None,
                 num_shards=1, shard_id=0, loader=None, strong_views=0, joint=None, pipeline=None):
        if len(domain) < batch_size * num_shards:
            raise ValueError(f"domain has {len(domain)} images, fewer than one global batch "
                             f"({batch_size} x {num_shards} cards); lower data.batch_size")
        self.domain, self.batch_size, self.seed, self.stream_id = domain, batch_size, seed, stream_id
        self.transform, self.strong, self.strong_views = transform, strong, strong_views
        self.num_shards, self.shard_id = num_shards, shard_id
        self.loader = loader  # parallel image decoder for file-backed domains
        self.joint = joint    # segmentation: fn(images, labels, rng) -> (images, labels), before ``transform``
        self.pipeline = pipeline if joint is None else None
        self.per_epoch = len(domain) // (batch_size * num_shards)
        self._perm = (None, None)  # (epoch, permutation), replaced as one: a producer thread may read it

    def with_shard(self, shard_id):
        """The same stream reading shard ``shard_id`` of every epoch (gradient accumulation)."""
        other = copy.copy(self)
        other.shard_id = shard_id
        return other

    def indices(self, it):
        epoch, k = divmod(it, self.per_epoch)
        cached_epoch, perm = self._perm
        if epoch != cached_epoch:
            perm = np.random.default_rng([self.seed, self.stream_id, epoch]).permutation(len(self.domain))
            self._perm = (epoch, perm)
        start = (k * self.num_shards + self.shard_id) * self.batch_size
        return perm[start:start + self.batch_size]

    def batch(self, it):
        idx = self.indices(it)
        rng = self._rng(it)
        if self.pipeline is not None:
            out = [self.pipeline(self.domain, idx, rng), self.domain.labels[idx]]
            if self.strong_views:  # the strong views are numpy transforms of the float images
                images = self.loader(self.domain, idx)
                out.append(np.concatenate([to_nchw(self.strong(images, rng)) for _ in range(self.strong_views)]))
            return out
        if self.loader is not None:
            images = self.loader(self.domain, idx)
        else:
            images = self.domain.images[idx]
        labels = self.domain.labels[idx]
        if self.joint is not None:
            images, labels = self.joint(images, labels, rng)
        out = [to_nchw(self.transform(images, rng)), labels]
        if self.strong_views:
            out.append(np.concatenate([to_nchw(self.strong(images, rng)) for _ in range(self.strong_views)]))
        return out


    def batches(self, first, last):
        """``[self.batch(it) for it in range(first, last)]`` as an iterator (close it to stop early).

        :attr:`engine_fed` streams decode, augment (with the host-drawn parameters) and batch in
        ``mindspore.dataset``'s threads: the same batches, produced faster.
        """
        if not self.engine_fed:
            for it in range(first, last):
                yield self.batch(it)
            return
        plans = ((self.indices(it), self._rng(it)) for it in range(first, last))
        for x, idx in self.pipeline.stream(self.domain, plans, self.batch_size):
            yield [x, self.domain.labels[idx]]

    @property
    def engine_fed(self):
        """:meth:`batches` comes from a ``mindspore.dataset`` pipeline, which prepares batches ahead in its own threads."""
        return getattr(self.pipeline, "stream", None) is not None and not self.strong_views \
            and getattr(self.domain, "streamable", False)

    def _rng(self, it):
        return np.random.default_rng([self.seed, self.stream_id, 1_000_003, it, self.shard_id])


def to_nchw(images):
    return np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2)), dtype=np.float32)


def iterate_eval(domain, batch_size, transform, loader=None):
    """Ordered, non-random pass over a domain in batches (last batch may be short)."""
    for start in range(0, len(domain), batch_size):
        idx = np.arange(start, min(start + batch_size, len(domain)))
        images = loader(domain, idx) if loader is not None else domain.images[idx]
        yield to_nchw(transform(images, None)), domain.labels[idx]
