import numpy as np

from datasets import optdigits
from datasets.base import BatchStream
from datasets.transforms import build_transform


def test_recipe_shapes_disjoint_halves_and_checksums():
    splits = optdigits.generate()
    assert splits["source_train"][0].shape == (898, 28, 28, 3)
    assert splits["target_train"][0].shape == (674, 28, 28, 3)
    assert splits["target_test"][0].shape == (225, 28, 28, 3)
    for images, labels in splits.values():
        assert images.dtype == np.float32 and 0.0 <= images.min() and images.max() <= 1.0
        assert set(np.unique(labels)) == set(range(10))
    # stratified 75/25 split of the target half: every class keeps its proportion
    train_counts = np.bincount(splits["target_train"][1])
    test_counts = np.bincount(splits["target_test"][1])
    np.testing.assert_allclose(test_counts / (train_counts + test_counts), 0.25, atol=0.02)
    # about half of the source digits are inverted: background bright instead of dark
    corner = splits["source_train"][0][:, 0, 0, 0]
    assert 0.4 < np.mean(corner > 0.5) < 0.6
    for split, digest in optdigits.CHECKSUMS.items():
        assert optdigits.checksum(split) == digest, split


def test_batch_stream_is_a_pure_function_of_iteration():
    domain = optdigits.optdigits(None, "train")
    tf = build_transform("digits_strong", 28, 3, (0.5,) * 3, (0.25,) * 3)
    a = BatchStream(domain, 64, seed=3, stream_id=0, transform=tf, strong=tf, strong_views=2)
    b = BatchStream(domain, 64, seed=3, stream_id=0, transform=tf, strong=tf, strong_views=2)
    for it in (0, 5, 13, 14, 30):  # 14 batches per epoch: crosses an epoch boundary
        xa, ya, sa = a.batch(it)
        xb, yb, sb = b.batch(it)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(sa, sb)
        assert sa.shape == (128, 3, 28, 28) and xa.shape == (64, 3, 28, 28)
    # one epoch visits distinct images; a different seed gives a different order
    seen = np.concatenate([a.indices(i) for i in range(a.per_epoch)])
    assert len(np.unique(seen)) == len(seen)
    c = BatchStream(domain, 64, seed=4, stream_id=0, transform=tf)
    assert not np.array_equal(a.indices(0), c.indices(0))


def test_shards_are_disjoint():
    domain = optdigits.optdigits(None, "train")
    tf = build_transform("none", 28, 3, (0.0,) * 3, (1.0,) * 3)
    shards = [BatchStream(domain, 32, 0, 0, tf, num_shards=2, shard_id=r) for r in (0, 1)]
    assert not set(shards[0].indices(3)) & set(shards[1].indices(3))
