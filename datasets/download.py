"""Checksummed, resumable, mirror-aware downloads and the manifest of every downloadable file.

``ensure(resources, root, download, dataset_name)`` returns ``{filename: path}`` for files
whose checksum matches. A missing or corrupt file is a one-line :class:`DatasetMissingError`
saying where to put it, its checksum and where to get it; with ``download=True`` it is fetched
over HTTP(S) (urllib only) into ``<file>.part`` (resumed with a ``Range`` header, restarted when
the server ignores it), checked for size and checksum, then renamed with ``os.replace``.
A failed download never leaves a file under the final name.
"""
import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from datasets.base import DatasetMissingError

log = logging.getLogger("da")
CHUNK = 1 << 20
TIMEOUT_S = 60
ENABLE_HINT = "set data.source.download=true (or data.target.download=true)"


class DownloadError(DatasetMissingError):
    """Every URL of a resource failed (HTTP error, truncated body, wrong size or checksum)."""


@dataclass(frozen=True)
class Resource:
    filename: str
    url: Union[str, Sequence[str]]  # one URL or mirrors tried in order
    checksum: str
    size: Optional[int] = None       # bytes, checked after download when known
    algo: str = "md5"                # md5 | sha256
    note: str = ""                   # extra manual step appended to the missing-file message

    @property
    def urls(self):
        return [self.url] if isinstance(self.url, str) else list(self.url)


def _mirrored(filename, bases, checksum, size=None, note=""):
    return Resource(filename, tuple(base + filename for base in bases), checksum, size, note=note)


MNIST_NOTE = "the unpacked file (without .gz) is accepted there too"
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
USPS_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/"
USPS_H5_NOTE = "Kaggle's usps.h5 in the same folder is read instead when present (needs h5py)"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
# md5 sums as used by torchvision; MNIST sizes from the official page.
MANIFEST = {
    "mnist": [
        _mirrored("train-images-idx3-ubyte.gz", MNIST_MIRRORS, "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9912422, MNIST_NOTE),
        _mirrored("train-labels-idx1-ubyte.gz", MNIST_MIRRORS, "d53e105ee54ea40749a09fcbcd1e9432", 28881, MNIST_NOTE),
        _mirrored("t10k-images-idx3-ubyte.gz", MNIST_MIRRORS, "9fb629c4189551a2d022fa330f9573f3", 1648877, MNIST_NOTE),
        _mirrored("t10k-labels-idx1-ubyte.gz", MNIST_MIRRORS, "ec29112dd5afa0611ce80d1b7f02629c", 4542, MNIST_NOTE),
    ],
    "usps": [
        _mirrored("usps.bz2", (USPS_URL,), "ec16c51db3855ca6c91edd34d0e9b197", note=USPS_H5_NOTE),
        _mirrored("usps.t.bz2", (USPS_URL,), "8ea070ee2aca1ac39742fdd1ef5ed118", note=USPS_H5_NOTE),
    ],
    "svhn": [
        _mirrored("train_32x32.mat", (SVHN_URL,), "e26dedcc434d2e4c54c9b2d4a06d8373"),
        _mirrored("test_32x32.mat", (SVHN_URL,), "eb5a983be6a315427106f1b68e2dd9c2"),
    ],
}
# Datasets without a stable official URL: what to do by hand ({root} is filled in).
MANUAL = {
    "mnistm": ("MNIST-M has no stable official download and no published checksum: obtain mnist_m.tar.gz "
               "(Ganin & Lempitsky, DANN) and extract it so that {root}/mnist_m_train/, {root}/mnist_m_test/ "
               "(PNG files) and {root}/mnist_m_train_labels.txt, {root}/mnist_m_test_labels.txt "
               "(lines 'filename label') exist; only their presence and the image counts "
               "(59001 train / 9001 test) are checked"),
}


def from_manifest(dataset, filenames):
    """The manifest entries of ``dataset`` named in ``filenames`` (read at call time, so patchable)."""
    by_name = {r.filename: r for r in MANIFEST[dataset]}
    return [by_name[name] for name in filenames]


_verified = {}  # (path, size, mtime_ns, algo) -> digest: hash each file once per process


def file_digest(path, algo="md5"):
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, algo)
    if key not in _verified:
        digest = hashlib.new(algo, usedforsecurity=False)
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                digest.update(chunk)
        _verified[key] = digest.hexdigest()
    return _verified[key]


def ensure(resources, root, download, dataset_name):
    """Return ``{filename: path}``; fetch missing/corrupt files when ``download`` else raise."""
    paths = {}
    for res in resources:
        path = os.path.join(root, res.filename)
        problem = _check(res, path)
        if problem and not download:
            note = f"; {res.note}" if res.note else ""
            raise DatasetMissingError(
                f"{dataset_name}: {path} {problem} (expected {res.algo} {res.checksum}); {ENABLE_HINT} to fetch it "
                f"from {' or '.join(res.urls)}, or download it by hand and put it at {path}{note}")
        if problem:
            fetch(res, path, dataset_name)
        paths[res.filename] = path
    return paths


def _check(res, path):
    """None when ``path`` holds the right bytes, else what is wrong with it."""
    if not os.path.isfile(path):
        return "is missing"
    digest = file_digest(path, res.algo)
    return None if digest == res.checksum else f"is corrupt or partial ({res.algo} {digest})"


def fetch(res, path, dataset_name="dataset"):
    """Download ``res`` to ``path`` trying each mirror in turn; one-line error when all fail."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    part = path + ".part"
    failures = []
    for url in res.urls:
        log.info("downloading %s -> %s", url, path)
        try:
            _fetch_part(url, part)
        except (OSError, ValueError, http.client.HTTPException) as err:
            failures.append(f"{url}: {_reason(err)}")
            continue  # a truncated .part is kept: the next URL or the next run resumes it
        size = os.path.getsize(part)
        digest = file_digest(part, res.algo)
        if res.size is not None and size != res.size:
            failures.append(f"{url}: got {size} bytes, expected {res.size}")
        elif digest != res.checksum:
            failures.append(f"{url}: {res.algo} {digest} != {res.checksum}")
        else:
            os.replace(part, path)
            return path
        os.remove(part)  # wrong content: resuming it cannot help
    kept = f" (the partial {part} is resumed then)" if os.path.exists(part) else ""
    raise DownloadError(f"{dataset_name}: could not download {res.filename} to {path} "
                        f"({'; '.join(failures)}); retry later{kept} or download it by hand and put it there")


def _fetch_part(url, part):
    """Append the rest of ``url`` to ``part`` (Range resume); raise ValueError on a short body."""
    start = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"User-Agent": "mindspore-da/1.0"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # the .part already holds the whole file
            return
        raise
    with resp:
        if start and resp.status != 206:
            start = 0  # server ignored Range: restart from scratch
        length = resp.headers.get("Content-Length")
        total = _range_total(resp.headers.get("Content-Range")) if start else None
        received = 0
        with open(part, "ab" if start else "wb") as out:
            for chunk in iter(lambda: resp.read(CHUNK), b""):
                out.write(chunk)
                received += len(chunk)
    if length is not None and received < int(length):
        raise ValueError(f"truncated: received {start + received} of {start + int(length)} bytes")
    if total is not None and start + received != total:
        raise ValueError(f"truncated: have {start + received} of {total} bytes")


def _reason(err):
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return str(err) or type(err).__name__


def _range_total(content_range):
    match = re.match(r"bytes \d+-\d+/(\d+)", content_range or "")
    return int(match.group(1)) if match else None
