"""datasets.download against a local HTTP server on 127.0.0.1 (no other address is contacted)."""
import hashlib
import http.server
import os
import threading

import pytest

import engine  # noqa: F401  (runtime settings first)
from datasets.base import DatasetMissingError
from datasets.download import DownloadError, Resource, ensure

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    """``/good`` honours Range, ``/norange`` ignores it, ``/short`` sends half its body, else 404."""

    def do_GET(self):  # noqa: N802 (http.server API)
        self.server.requests.append((self.path, self.headers.get("Range")))
        if self.path not in ("/good", "/norange", "/short"):
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and self.path == "/good":
            start = int(rng.split("=")[1].split("-")[0])
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if self.path == "/short" else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "*")  # never route loopback through a proxy
    monkeypatch.setattr("datasets.download.TIMEOUT_S", 5)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def test_download_and_verify(server, tmp_path):
    paths = ensure([Resource("f.bin", server.url + "/good", MD5, size=len(PAYLOAD))], str(tmp_path), True, "toy")
    assert read(paths["f.bin"]) == PAYLOAD
    assert not os.path.exists(paths["f.bin"] + ".part")
    server.requests.clear()
    ensure([Resource("f.bin", server.url + "/good", MD5)], str(tmp_path), False, "toy")  # present: no request
    assert server.requests == []


def test_sha256(server, tmp_path):
    res = Resource("f.bin", server.url + "/good", hashlib.sha256(PAYLOAD).hexdigest(), algo="sha256")
    assert read(ensure([res], str(tmp_path), True, "toy")["f.bin"]) == PAYLOAD


def test_truncated_download_raises_and_leaves_no_file(server, tmp_path):
    with pytest.raises(DownloadError, match="truncated") as err:
        ensure([Resource("f.bin", server.url + "/short", MD5)], str(tmp_path), True, "toy")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "f.bin").exists()


def test_wrong_checksum_raises_and_leaves_no_file(server, tmp_path):
    with pytest.raises(DownloadError, match="0" * 32):
        ensure([Resource("f.bin", server.url + "/good", "0" * 32)], str(tmp_path), True, "toy")
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()


def test_wrong_size_raises(server, tmp_path):
    with pytest.raises(DownloadError, match="expected 9"):
        ensure([Resource("f.bin", server.url + "/good", MD5, size=9)], str(tmp_path), True, "toy")
    assert not (tmp_path / "f.bin").exists()


def test_resume_uses_range(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:3000])
    path = ensure([Resource("f.bin", server.url + "/good", MD5)], str(tmp_path), True, "toy")["f.bin"]
    assert server.requests == [("/good", "bytes=3000-")]
    assert read(path) == PAYLOAD


def test_server_ignoring_range_restarts(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(b"x" * 3000)
    path = ensure([Resource("f.bin", server.url + "/norange", MD5)], str(tmp_path), True, "toy")["f.bin"]
    assert server.requests == [("/norange", "bytes=3000-")]
    assert read(path) == PAYLOAD


def test_truncated_then_resumed_from_mirror(server, tmp_path):
    res = Resource("f.bin", [server.url + "/short", server.url + "/good"], MD5)
    assert read(ensure([res], str(tmp_path), True, "toy")["f.bin"]) == PAYLOAD
    assert server.requests[1] == ("/good", f"bytes={len(PAYLOAD) // 2}-")


def test_mirror_fallback(server, tmp_path):
    res = Resource("f.bin", [server.url + "/gone", server.url + "/good"], MD5)
    assert read(ensure([res], str(tmp_path), True, "toy")["f.bin"]) == PAYLOAD
    assert [path for path, _ in server.requests] == ["/gone", "/good"]


def test_all_mirrors_fail_one_line(server, tmp_path):
    res = Resource("f.bin", [server.url + "/gone", server.url + "/missing"], MD5)
    with pytest.raises(DownloadError) as err:
        ensure([res], str(tmp_path), True, "toy")
    message = str(err.value)
    assert "\n" not in message and "HTTP 404" in message and "/missing" in message


def test_missing_without_download_names_path_checksum_url(tmp_path):
    res = Resource("f.bin", "http://127.0.0.1:9/f.bin", MD5)
    with pytest.raises(DatasetMissingError) as err:
        ensure([res], str(tmp_path), False, "toy")
    message = str(err.value)
    assert "\n" not in message
    for part in (str(tmp_path / "f.bin"), MD5, "http://127.0.0.1:9/f.bin", "data.source.download=true",
                 "data.target.download=true"):
        assert part in message


def test_corrupt_file_without_download_is_reported(tmp_path):
    (tmp_path / "f.bin").write_bytes(b"junk")
    with pytest.raises(DatasetMissingError, match="corrupt or partial"):
        ensure([Resource("f.bin", "http://127.0.0.1:9/f.bin", MD5)], str(tmp_path), False, "toy")


def test_corrupt_file_is_replaced_on_download(server, tmp_path):
    (tmp_path / "f.bin").write_bytes(b"junk")
    ensure([Resource("f.bin", server.url + "/good", MD5)], str(tmp_path), True, "toy")
    assert read(tmp_path / "f.bin") == PAYLOAD
