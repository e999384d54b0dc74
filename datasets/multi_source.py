"""Several labelled domains trained on as one source: multi-source DA and domain generalisation.

:func:`concat_domains` joins domains that share a label space into one domain with a
``domain_ids`` array; :class:`DomainBalancedStream` draws every batch across them in fixed shares
(``batch_size`` split as evenly as possible, the first domains taking the remainder: 64 over three
domains is 22 + 21 + 21), as Dassl's ``SeqDomainSampler`` does, instead of in proportion to their
sizes. Each domain is walked through its own per-epoch permutation, seeded like
:class:`datasets.base.BatchStream`, so a batch is still a pure function of ``(seed, stream, iteration,
shard)`` and resume is exact; an epoch ends when the smallest share runs out.
"""
import numpy as np

from datasets.base import ArrayDomain, BatchStream


def concat_domains(domains):
    """One domain holding ``domains`` one after another, with ``domain_ids`` (int32, the position in the list)."""
    names = {tuple(d.class_names) for d in domains}
    if len(names) != 1:
        raise ValueError("the source domains have different classes; multi-source training needs one label space")
    ids = np.concatenate([np.full(len(d), k, np.int32) for k, d in enumerate(domains)])
    if all(isinstance(d, ArrayDomain) for d in domains):
        joined = ArrayDomain(np.concatenate([d.images for d in domains]), np.concatenate([d.labels for d in domains]),
                             domains[0].class_names)
    elif all(hasattr(d, "paths") for d in domains):
        from datasets.office import FileDomain

        sizes = [d.pixel_sizes for d in domains]
        joined = FileDomain([p for d in domains for p in d.paths], np.concatenate([d.labels for d in domains]),
                            domains[0].class_names, domains[0].size, domains[0].num_workers,
                            None if any(s is None for s in sizes) else [wh for s in sizes for wh in s])
    else:
        raise ValueError("multi-source: the source domains must all be in-memory or all be image files")
    joined.domain_ids = ids
    return joined


def domain_shares(batch_size, num_domains):
    """Images per domain in a batch: ``batch_size`` split as evenly as possible, the first domains take the rest."""
    base, rest = divmod(batch_size, num_domains)
    return [base + (k < rest) for k in range(num_domains)]


class DomainBalancedStream(BatchStream):
    """A :class:`BatchStream` whose batches take fixed shares from each domain of ``domain.domain_ids``.

    Batch ``it`` holds, for every domain k in order, ``shares[k]`` images from domain k's permutation
    of epoch ``it // per_epoch`` (seeded by ``(seed, stream_id, epoch, k)``), at the slot of shard
    ``shard_id``. Everything else (transforms, strong views, loaders, engine pipelines) is the base's.
    """

    def __init__(self, domain, batch_size, seed, stream_id, *args, **kwargs):
        ids = np.asarray(domain.domain_ids)
        self.members = [np.flatnonzero(ids == k) for k in range(int(ids.max()) + 1)]
        self.shares = domain_shares(batch_size, len(self.members))
        if min(self.shares) < 1:
            raise ValueError(f"data.batch_size {batch_size} is smaller than the {len(self.members)} source domains")
        super().__init__(domain, batch_size, seed, stream_id, *args, **kwargs)
        per_epoch = [len(m) // (share * self.num_shards) for m, share in zip(self.members, self.shares)]
        if min(per_epoch) < 1:
            small = int(np.argmin(per_epoch))
            raise ValueError(f"source domain {small} has {len(self.members[small])} images, fewer than its share of one "
                             f"global batch ({self.shares[small]} x {self.num_shards} cards); lower data.batch_size")
        self.per_epoch = min(per_epoch)

    def indices(self, it):
        epoch, k = divmod(it, self.per_epoch)
        cached_epoch, perms = self._perm
        if epoch != cached_epoch:
            perms = [members[np.random.default_rng([self.seed, self.stream_id, epoch, d]).permutation(len(members))]
                     for d, members in enumerate(self.members)]
            self._perm = (epoch, perms)
        slot = k * self.num_shards + self.shard_id
        return np.concatenate([perm[slot * share:(slot + 1) * share] for perm, share in zip(perms, self.shares)])
