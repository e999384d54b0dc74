"""datasets/cifar.py on tiny fixtures in the real formats: CIFAR-10 binary records (label byte + R, G, B
planes), CIFAR-10-C's severity row blocks, the one-line missing-file error, and the checksummed
download + unpack from a local HTTP server on 127.0.0.1 (no other address is contacted)."""
import dataclasses
import functools
import hashlib
import http.server
import io
import os
import tarfile
import threading
from types import SimpleNamespace

import numpy as np
import pytest

import engine  # noqa: F401  (runtime settings first)
from datasets import cifar
from datasets.base import DatasetMissingError
from datasets.download import Resource


def domain_cfg(root, domain=None, download=False, verify=False):
    return SimpleNamespace(root=str(root), domain=domain, download=download, verify_counts=verify)


def planar_record(label, image):
    """One CIFAR-10 binary record written from the format description: label, then the R, G, B planes."""
    return bytes([label]) + b"".join(image[:, :, c].tobytes() for c in range(3))


def write_cifar10(root, rng):
    images, labels = {}, {}
    os.makedirs(root / cifar.BIN_DIR, exist_ok=True)
    for split, names in cifar.BIN_FILES.items():
        imgs, labs = [], []
        for name in names:
            batch = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
            lab = rng.integers(0, 10, 3)
            (root / cifar.BIN_DIR / name).write_bytes(b"".join(planar_record(int(y), x) for x, y in zip(batch, lab)))
            imgs.append(batch)
            labs.append(lab)
        images[split], labels[split] = np.concatenate(imgs), np.concatenate(labs)
    return images, labels


def write_cifar10_c(root, per_severity=3):
    """<corruption>.npy whose row r is filled with r (so every row says where it came from), labels r % 10."""
    os.makedirs(root / cifar.C_DIR, exist_ok=True)
    rows = 5 * per_severity
    for name in ("gaussian_noise", "contrast"):
        data = np.broadcast_to(np.arange(rows, dtype=np.uint8)[:, None, None, None], (rows, 32, 32, 3))
        np.save(root / cifar.C_DIR / f"{name}.npy", np.ascontiguousarray(data))
    np.save(root / cifar.C_DIR / "labels.npy", (np.arange(rows) % 10).astype(np.int64))


def test_cifar10_binary_records_decode_to_nhwc(tmp_path):
    cifar._cifar10.cache_clear()
    images, labels = write_cifar10(tmp_path, np.random.default_rng(0))
    for split, count in (("train", 15), ("test", 3)):
        domain = cifar.cifar10(domain_cfg(tmp_path), split)
        assert domain.images.shape == (count, 32, 32, 3)
        np.testing.assert_array_equal(domain.labels, labels[split])
        np.testing.assert_allclose(domain.images, images[split] / 255.0, atol=1e-7)
    with pytest.raises(ValueError, match="expected 30730000"):  # the published record count is checked
        cifar.read_binary_batches([str(tmp_path / cifar.BIN_DIR / "test_batch.bin")], verify=True)


def test_cifar10_c_severity_rows(tmp_path):
    write_cifar10_c(tmp_path, per_severity=3)
    for severity in (1, 3, 5):
        domain = cifar.cifar10_c(domain_cfg(tmp_path, f"contrast-{severity}"), "test")
        rows = np.arange((severity - 1) * 3, severity * 3)
        np.testing.assert_array_equal(domain.images[:, 0, 0, 0] * 255.0, rows)  # rows (s-1) n .. s n
        np.testing.assert_array_equal(domain.labels, rows % 10)
    assert len(cifar.c_sets()) == 75 and cifar.c_sets()[4] == "gaussian_noise-5"
    with pytest.raises(ValueError, match=r"expected uint8 \(50000, 32, 32, 3\)"):  # published size checked
        cifar.cifar10_c(domain_cfg(tmp_path, "contrast-1", verify=True), "test")
    with pytest.raises(ValueError, match="corruption one of"):
        cifar.cifar10_c(domain_cfg(tmp_path, "contrast-6"), "test")


def test_missing_files_are_one_line_errors(tmp_path):
    cifar._cifar10.cache_clear()
    for call, needle in ((lambda: cifar.cifar10(domain_cfg(tmp_path), "train"), "data_batch_1.bin is missing"),
                         (lambda: cifar.cifar10_c(domain_cfg(tmp_path, "fog-2"), "test"), "fog.npy is missing")):
        with pytest.raises(DatasetMissingError) as err:
            call()
        message = str(err.value)
        assert needle in message and "download=true" in message and "\n" not in message


@pytest.fixture
def file_server(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr("datasets.download.TIMEOUT_S", 5)
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _tar(path, source_root, members, extra=()):
    with tarfile.open(path, "w") as tar:
        for name in members:
            tar.add(source_root / name, arcname=name)
        for name, payload in extra:  # a member the loader must not write
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_download_checks_the_archive_and_unpacks_only_the_expected_members(tmp_path, file_server, monkeypatch):
    served, url = file_server
    fixture = tmp_path / "fixture"
    write_cifar10_c(fixture, per_severity=2)
    members = [f"{cifar.C_DIR}/{n}.npy" for n in ("gaussian_noise", "contrast", "labels")]
    _tar(served / "CIFAR-10-C.tar", fixture, members, extra=[("../evil.txt", b"x")])
    payload = (served / "CIFAR-10-C.tar").read_bytes()
    good = Resource("CIFAR-10-C.tar", url + "CIFAR-10-C.tar", hashlib.md5(payload).hexdigest(), len(payload))
    root = tmp_path / "data"
    monkeypatch.setitem(cifar.ARCHIVES, "cifar10_c", dataclasses.replace(good, checksum="0" * 32))
    with pytest.raises(DatasetMissingError, match="could not download"):  # wrong checksum: nothing unpacked
        cifar.cifar10_c(domain_cfg(root, "gaussian_noise-2", download=True), "test")
    assert not (root / cifar.C_DIR).exists()
    monkeypatch.setitem(cifar.ARCHIVES, "cifar10_c", good)
    domain = cifar.cifar10_c(domain_cfg(root, "gaussian_noise-2", download=True), "test")
    np.testing.assert_array_equal(domain.images[:, 0, 0, 0] * 255.0, [2, 3])
    assert sorted(os.listdir(root / cifar.C_DIR)) == ["gaussian_noise.npy", "labels.npy"]  # what was asked for
    assert not (tmp_path / "evil.txt").exists()
    cifar.cifar10_c(domain_cfg(root, "contrast-1", download=True), "test")  # from the verified archive
    assert sorted(os.listdir(root / cifar.C_DIR)) == ["contrast.npy", "gaussian_noise.npy", "labels.npy"]
