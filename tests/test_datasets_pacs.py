"""PACS in Dassl's layout on a tiny tree, and the domain-balanced multi-source stream."""
import engine  # noqa: F401  (before MindSpore)

import warnings

import numpy as np
import pytest
from PIL import Image

from datasets.base import ArrayDomain, DatasetMissingError
from datasets.multi_source import DomainBalancedStream, concat_domains, domain_shares
from datasets.pacs import CLASSES, KNOWN_BROKEN, pacs
from engine.config import DataCfg, DomainCfg

PER_CLASS = 3


def make_pacs_tree(root, domains=("art_painting", "sketch")):
    """PER_CLASS images per class and domain (sketch: .png), the first image of each class in crossval;
    Dassl's known broken sketch listed and written as garbage."""
    images, splits = root / "pacs" / "images", root / "pacs" / "splits"
    splits.mkdir(parents=True)
    for domain in domains:
        ext = "png" if domain == "sketch" else "jpg"
        train, val = [], []
        for c, cls in enumerate(CLASSES):
            for k in range(PER_CLASS):
                rel = f"{domain}/{cls}/img_{k}.{ext}"
                (images / domain / cls).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (20, 16), (30 * c, 10 * k, 200)).save(images / rel)
                (val if k == 0 else train).append(f"{rel} {c + 1}")  # 1-based, as the real files
        if domain == "sketch":
            (images / KNOWN_BROKEN[0]).write_bytes(b"not a png")
            train.append(f"{KNOWN_BROKEN[0]} 1")
        (splits / f"{domain}_train_kfold.txt").write_text("\n".join(train) + "\n")
        (splits / f"{domain}_crossval_kfold.txt").write_text("\n".join(val) + "\n")
    return root


def load(root, domain, split):
    cfg = DomainCfg(name="pacs", domain=domain, root=str(root), verify_counts=False)
    return pacs(cfg, split, DataCfg(image_size=8, num_workers=1))


def test_splits_labels_and_png_sketches(tmp_path, monkeypatch):
    monkeypatch.setenv("DA_CACHE_DIR", str(tmp_path / "cache"))
    make_pacs_tree(tmp_path)
    train, val, test = (load(tmp_path, "a", split) for split in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (7 * 2, 7, 7 * 3)
    # 1-based in the file, 0-based here; the label matches the class folder
    for dom in (train, val, test):
        assert all(CLASSES[label] == path.split("/")[-2] for path, label in zip(dom.paths, dom.labels))
    assert set(test.paths) == set(train.paths) | set(val.paths)
    image = load(tmp_path, "sketch", "val").load(0)
    assert image.shape == (8, 8, 3) and image.dtype == np.float32


def test_known_broken_sketch_is_reported_not_fatal(tmp_path, monkeypatch):
    monkeypatch.setenv("DA_CACHE_DIR", str(tmp_path / "cache"))
    make_pacs_tree(tmp_path)
    other = tmp_path / "pacs" / "images" / "sketch" / "house" / "img_1.png"
    other.write_bytes(other.read_bytes()[:20])  # a second, truncated file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = load(tmp_path, "sketch", "train")
    assert len(train) == 7 * 2 - 1 and not any(p.endswith(KNOWN_BROKEN[0]) for p in train.paths)
    text = " ".join(str(w.message) for w in caught)
    assert KNOWN_BROKEN[0] in text and "sketch/house/img_1.png" in text


def test_bad_split_files_say_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.setenv("DA_CACHE_DIR", str(tmp_path / "cache"))
    make_pacs_tree(tmp_path, domains=("photo",))
    with pytest.raises(DatasetMissingError, match="cartoon_train_kfold.txt"):
        load(tmp_path, "cartoon", "train")
    split = tmp_path / "pacs" / "splits" / "photo_crossval_kfold.txt"
    split.write_text("photo/dog/img_0.jpg 0\n")
    with pytest.raises(ValueError, match="1-based"):
        load(tmp_path, "photo", "val")
    with pytest.raises(ValueError, match="unknown domain 'quickdraw'"):
        load(tmp_path, "quickdraw", "train")
    cfg = DomainCfg(name="pacs", domain="photo", root=str(tmp_path), verify_counts=True)
    split.write_text("photo/dog/img_0.jpg 1\n")
    with pytest.raises(ValueError, match="expected 1670"):
        pacs(cfg, "test", DataCfg(image_size=8, num_workers=1))


def three_domains(sizes=(50, 40, 70)):
    domains = [ArrayDomain(np.full((n, 2, 2, 1), k, np.float32), np.arange(n) % 5, [str(c) for c in range(5)])
               for k, n in enumerate(sizes)]
    return concat_domains(domains)


def test_balanced_stream_shares_epochs_and_shards():
    assert domain_shares(64, 3) == [22, 21, 21] and domain_shares(16, 4) == [4, 4, 4, 4]
    joined = three_domains()
    ids = joined.domain_ids
    stream = DomainBalancedStream(joined, 9, seed=3, stream_id=0, transform=lambda x, rng: x)
    assert stream.per_epoch == 40 // 3  # the smallest share (40 images, 3 a batch) ends the epoch
    seen = [[] for _ in range(3)]
    for it in range(stream.per_epoch):
        idx = stream.indices(it)
        assert list(ids[idx]) == [0] * 3 + [1] * 3 + [2] * 3  # fixed shares, domain order
        for k in range(3):
            seen[k] += list(idx[ids[idx] == k])
        x, y = stream.batch(it)
        assert x.shape == (9, 1, 2, 2) and list(x[:, 0, 0, 0]) == list(ids[idx]) and list(y) == list(joined.labels[idx])
    assert all(len(s) == len(set(s)) for s in seen)  # no image twice in an epoch
    assert not np.array_equal(stream.indices(0), stream.indices(stream.per_epoch))  # a new permutation per epoch
    again = DomainBalancedStream(joined, 9, seed=3, stream_id=0, transform=lambda x, rng: x)
    assert np.array_equal(again.indices(17), stream.indices(17))  # pure function of (seed, stream, it): exact resume
    shards = [DomainBalancedStream(joined, 9, 3, 0, lambda x, rng: x, num_shards=2, shard_id=r) for r in (0, 1)]
    assert not set(shards[0].indices(2)) & set(shards[1].indices(2))


def test_balanced_stream_errors():
    with pytest.raises(ValueError, match="different classes"):
        concat_domains([ArrayDomain(np.zeros((4, 2, 2, 1)), [0, 1, 0, 1]), ArrayDomain(np.zeros((4, 2, 2, 1)), [0, 1, 2, 0])])
    with pytest.raises(ValueError, match="fewer than its share"):
        DomainBalancedStream(three_domains((50, 4, 70)), 30, 0, 0, lambda x, rng: x)


def test_build_data_joins_source_domains_with_their_crossval_splits(tmp_path, monkeypatch):
    from engine.config import Config, ModelCfg
    from engine.data import build_data

    monkeypatch.setenv("DA_CACHE_DIR", str(tmp_path / "cache"))
    make_pacs_tree(tmp_path, domains=("art_painting", "cartoon", "photo"))
    cfg = Config(data=DataCfg(source=DomainCfg(name="pacs", domain=["art_painting", "cartoon"], root=str(tmp_path),
                                               verify_counts=False),
                              target=DomainCfg(name="pacs", domain="photo", root=str(tmp_path), verify_counts=False),
                              batch_size=4, image_size=8, normalize="imagenet", num_workers=1),
                 model=ModelCfg(num_classes=7))
    data = build_data(cfg, seed=0)
    assert isinstance(data.source, DomainBalancedStream) and data.source.shares == [2, 2]
    ids = data.source.domain.domain_ids
    assert list(ids[data.source.indices(5)]) == [0, 0, 1, 1]
    assert len(data.source.domain) == 2 * 14 and len(data.source_val) == 2 * 7  # train lists / crossval lists
    assert len(data.target_test) == 21  # the held-out domain: train + crossval
    x, y = data.source.batch(0)
    assert x.shape == (4, 3, 8, 8)
