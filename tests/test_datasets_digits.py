"""Digit loaders on tiny fixtures written in the real on-disk formats, and the DTN backbone."""
import bz2
import gzip
import hashlib
import struct
import sys

import numpy as np
import pytest
import scipy.io
from PIL import Image

import engine  # noqa: F401  (runtime settings before MindSpore)
import datasets.mnist
import datasets.mnistm
import datasets.svhn
import datasets.usps
from datasets import download
from datasets.base import DatasetMissingError
from datasets.download import Resource
from engine.config import DataCfg, DomainCfg


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def domain_cfg(name, root, **kw):
    return DomainCfg(name=name, root=str(root), verify_counts=False, **kw)


def pin(monkeypatch, dataset, *paths):
    """Point the manifest of ``dataset`` at the fixture files (their real md5, an unreachable URL)."""
    monkeypatch.setitem(download.MANIFEST, dataset,
                        [Resource(p.name, "http://127.0.0.1:9/" + p.name, md5(p)) for p in paths])


def one_line(err):
    assert "\n" not in str(err.value)
    return str(err.value)


# --------------------------------------------------------------------------- MNIST
def mnist_arrays(n=5):
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        images[i, i, 2 * i] = 255
        images[i, 27, 27] = 51
    return images, np.arange(n, dtype=np.uint8)[::-1].copy()


def write_idx(path, array, gz):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with (gzip.open if gz else open)(path, "wb") as handle:
        handle.write(header + array.tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, monkeypatch, gz):
    images, labels = mnist_arrays()
    suffix = ".gz" if gz else ""
    files = [tmp_path / f"train-images-idx3-ubyte{suffix}", tmp_path / f"train-labels-idx1-ubyte{suffix}"]
    write_idx(files[0], images, gz)
    write_idx(files[1], labels, gz)
    if gz:
        pin(monkeypatch, "mnist", *files)
    dom = datasets.mnist.mnist(domain_cfg("mnist", tmp_path), "train", DataCfg(image_size=28))
    assert dom.images.shape == (5, 28, 28, 1) and dom.images.dtype == np.float32
    assert dom.images.min() == 0.0 and dom.images.max() == 1.0
    assert dom.images[3, 3, 6, 0] == 1.0 and dom.images[3, 27, 27, 0] == pytest.approx(0.2)
    assert dom.labels.tolist() == [4, 3, 2, 1, 0]
    big = datasets.mnist.mnist(domain_cfg("mnist", tmp_path), "train", DataCfg(image_size=32))
    assert big.images.shape == (5, 32, 32, 1) and 0.0 <= big.images.min() <= big.images.max() <= 1.0


def test_mnist_rejects_non_idx_and_wrong_counts(tmp_path):
    images, labels = mnist_arrays()
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, gz=False)
    with pytest.raises(ValueError, match="published set has 10000") as err:
        datasets.mnist.mnist(DomainCfg(root=str(tmp_path)), "test", DataCfg())
    one_line(err)
    bad = tmp_path / "bad"  # decoded arrays are cached per path: use fresh ones
    bad.mkdir()
    write_idx(bad / "t10k-images-idx3-ubyte", images, gz=False)
    (bad / "t10k-labels-idx1-ubyte").write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="not an idx ubyte file") as err:
        datasets.mnist.mnist(domain_cfg("mnist", bad), "test", DataCfg())
    one_line(err)


def test_mnist_missing_file_message(tmp_path):
    with pytest.raises(DatasetMissingError) as err:
        datasets.mnist.mnist(domain_cfg("mnist", tmp_path), "train", DataCfg())
    message = one_line(err)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in message
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in message and "download=true" in message
    assert "ossci-datasets.s3.amazonaws.com" in message


# --------------------------------------------------------------------------- USPS
def write_usps(path, labels, features, sparse_last=False):
    lines = []
    for k, (label, feats) in enumerate(zip(labels, features)):
        pairs = [(j + 1, v) for j, v in enumerate(feats) if not (sparse_last and k == len(labels) - 1 and v == 0)]
        lines.append(f"{label} " + " ".join(f"{j}:{v:g}" for j, v in pairs))
    with bz2.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")


def test_usps_libsvm(tmp_path, monkeypatch):
    labels = np.arange(1, 11)
    features = np.full((10, 256), -1.0)
    features[:, 16 * 2 + 5] = 1.0   # pixel (2, 5) white
    features[:, 16 * 15 + 0] = 0.0  # pixel (15, 0) mid grey (omitted from the sparse last line)
    write_usps(tmp_path / "usps.t.bz2", labels, features, sparse_last=True)
    pin(monkeypatch, "usps", tmp_path / "usps.t.bz2")
    dom = datasets.usps.usps(domain_cfg("usps", tmp_path), "test", DataCfg(image_size=16))
    assert dom.images.shape == (10, 16, 16, 1)
    assert dom.labels.tolist() == list(range(10))
    assert dom.images[4, 2, 5, 0] == 1.0 and dom.images[4, 0, 0, 0] == 0.0
    assert dom.images[:, 15, 0, 0] == pytest.approx(np.full(10, 0.5))
    resized = datasets.usps.usps(domain_cfg("usps", tmp_path), "test", DataCfg(image_size=28))
    assert resized.images.shape == (10, 28, 28, 1) and 0.0 <= resized.images.min() <= resized.images.max() <= 1.0


def test_usps_h5_needs_h5py(tmp_path, monkeypatch):
    (tmp_path / "usps.h5").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install h5py") as err:
        datasets.usps.usps(domain_cfg("usps", tmp_path), "train", DataCfg())
    one_line(err)


def test_usps_missing_file_message(tmp_path):
    with pytest.raises(DatasetMissingError) as err:
        datasets.usps.usps(domain_cfg("usps", tmp_path), "train", DataCfg())
    message = one_line(err)
    assert str(tmp_path / "usps.bz2") in message and "ec16c51db3855ca6c91edd34d0e9b197" in message
    assert "usps.h5" in message


# --------------------------------------------------------------------------- SVHN
def test_svhn_mat(tmp_path, monkeypatch):
    x = np.zeros((32, 32, 3, 4), np.uint8)
    x[1, 2, 0, 3] = 255
    x[:, :, 2, 1] = 102
    y = np.array([[10], [1], [9], [5]], np.uint8)
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    pin(monkeypatch, "svhn", tmp_path / "train_32x32.mat")
    dom = datasets.svhn.svhn(domain_cfg("svhn", tmp_path), "train", DataCfg(image_size=32))
    assert dom.images.shape == (4, 32, 32, 3) and dom.images.dtype == np.float32
    assert dom.labels.tolist() == [0, 1, 9, 5]
    assert dom.images[3, 1, 2, 0] == 1.0 and dom.images[3, 1, 2, 1] == 0.0
    small = datasets.svhn.svhn(domain_cfg("svhn", tmp_path), "train", DataCfg(image_size=28))
    assert small.images.shape == (4, 28, 28, 3)
    assert small.images[1, ..., 2] == pytest.approx(np.full((28, 28), 0.4))  # a constant plane stays constant


def test_svhn_missing_file_message(tmp_path):
    with pytest.raises(DatasetMissingError) as err:
        datasets.svhn.svhn(domain_cfg("svhn", tmp_path), "test", DataCfg())
    message = one_line(err)
    assert str(tmp_path / "test_32x32.mat") in message and "eb5a983be6a315427106f1b68e2dd9c2" in message


# --------------------------------------------------------------------------- MNIST-M
@pytest.mark.parametrize("nested", [False, True])
def test_mnistm_png_folder(tmp_path, nested):
    root = tmp_path / "mnist_m" if nested else tmp_path
    (root / "mnist_m_train").mkdir(parents=True)
    lines = []
    for i in range(3):
        pixels = np.zeros((28, 28, 3), np.uint8)
        pixels[i, 1] = (255, 0, 51)
        Image.fromarray(pixels).save(root / "mnist_m_train" / f"{i:08d}.png")
        lines.append(f"{i:08d}.png {7 - i}")
    (root / "mnist_m_train_labels.txt").write_text("\n".join(lines) + "\n")
    dom = datasets.mnistm.mnistm(domain_cfg("mnistm", tmp_path), "train", DataCfg(image_size=28))
    assert dom.images.shape == (3, 28, 28, 3) and dom.labels.tolist() == [7, 6, 5]
    assert dom.images[2, 2, 1].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert datasets.mnistm.mnistm(domain_cfg("mnistm", tmp_path), "train", DataCfg(image_size=32)).images.shape \
        == (3, 32, 32, 3)
    with pytest.raises(ValueError, match="59001"):
        datasets.mnistm.mnistm(DomainCfg(root=str(tmp_path)), "train", DataCfg())


def test_mnistm_missing_message(tmp_path):
    with pytest.raises(DatasetMissingError) as err:
        datasets.mnistm.mnistm(domain_cfg("mnistm", tmp_path), "test", DataCfg())
    message = one_line(err)
    assert "mnist_m_test_labels.txt" in message and "9001" in message and "no published checksum" in message


def test_cached_arrays_are_read_only(tmp_path, monkeypatch):
    test_svhn_mat(tmp_path, monkeypatch)
    dom = datasets.svhn.svhn(domain_cfg("svhn", tmp_path), "train", DataCfg(image_size=32))
    with pytest.raises(ValueError):
        dom.images[0, 0, 0, 0] = 0.5


# --------------------------------------------------------------------------- DTN
def test_dtn_forward_graph_mode():
    import mindspore as ms
    import models.dtn

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        net = models.dtn.DTN(in_channels=3, image_size=32)
        net.set_train(False)
        out = net(ms.Tensor(np.random.default_rng(0).random((2, 3, 32, 32), np.float32)))
    finally:
        ms.set_context(mode=previous)
    assert out.shape == (2, 512) and net.out_features == 512


def test_dtn_takes_norm_plugins_after_its_first_two_blocks():
    import models.cnsn
    import models.dtn

    net = models.dtn.DTN(norm_plugins={"selfnorm": True, "positions": ["after_stem", "in_block"]})
    selfnorms = [name for name, cell in net.cells_and_names() if isinstance(cell, models.cnsn.SelfNorm)]
    assert len(selfnorms) == 2, selfnorms


def test_registered_names():
    from engine.registry import BACKBONES, DATASETS
    import models.dtn

    for name, module in (("mnist", datasets.mnist), ("usps", datasets.usps), ("svhn", datasets.svhn),
                         ("mnistm", datasets.mnistm)):
        assert DATASETS.get(name) is getattr(module, name)
    assert BACKBONES.get("dtn") is models.dtn.DTN
