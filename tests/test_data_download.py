"""Download of official-style zips from an HTTP server the test starts on 127.0.0.1 (no internet)."""

import functools
import hashlib
import http.server
import threading

import pytest

from data_loaders import download_movielens, load_movielens, verify_checksum
from data_loaders.synthetic import synthetic_ratings, write_movielens


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(base URL, served folder holding ml-100k.zip, request log); proxies are disabled for 127.0.0.1."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    served = tmp_path / "served"
    frame = synthetic_ratings(200, 20, 30, seed=2)
    write_movielens(served, "100k", frame, as_zip=True)
    log = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            log.append(self.path)

    handler = functools.partial(Handler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, log
    httpd.shutdown()
    httpd.server_close()


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_load_with_download_and_checksum(server, tmp_path):
    base, served, log = server
    digest = _sha256(served / "ml-100k.zip")
    cache = tmp_path / "cache"
    ds = load_movielens("100k", root=cache, download=True, base_url=base, checksum=f"sha256:{digest}",
                        progress=False)
    assert len(ds) == 200 and (cache / "ml-100k.zip").is_file()
    assert not list(cache.glob("*.part"))
    assert len(log) == 1
    load_movielens("100k", root=cache, download=True, base_url=base, progress=False)  # cached: no request
    assert len(log) == 1


def test_download_to_cache_dir_with_md5_and_progress(server, tmp_path):
    base, served, _ = server
    md5 = hashlib.md5((served / "ml-100k.zip").read_bytes()).hexdigest()
    path = download_movielens("ml-100k", cache_dir=tmp_path / "c", base_url=base, checksum=md5, progress=True)
    assert path == tmp_path / "c" / "ml-100k.zip" and _sha256(path) == _sha256(served / "ml-100k.zip")


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    base, _, _ = server
    with pytest.raises(ValueError, match="sha256 checksum mismatch"):
        download_movielens("100k", cache_dir=tmp_path / "c", base_url=base, checksum="sha256:" + "0" * 64,
                           progress=False)
    assert list((tmp_path / "c").iterdir()) == []


def test_corrupt_cached_file_is_fetched_again(server, tmp_path):
    base, served, log = server
    (tmp_path / "ml-100k.zip").write_bytes(b"garbage")
    path = download_movielens("100k", cache_dir=tmp_path, base_url=base,
                              checksum=_sha256(served / "ml-100k.zip"), progress=False)
    assert _sha256(path) == _sha256(served / "ml-100k.zip") and len(log) == 1


def test_missing_remote_file(server, tmp_path):
    base, _, _ = server
    with pytest.raises(OSError, match=r"ml-1m\.zip.*404"):
        download_movielens("1m", cache_dir=tmp_path / "c", base_url=base, progress=False)
    assert list((tmp_path / "c").iterdir()) == []


def test_local_path_needs_no_network(tmp_path):
    write_movielens(tmp_path, "100k", synthetic_ratings(50, 5, 20), as_zip=True)
    # an unroutable base URL proves nothing is fetched when the zip is already there
    assert len(load_movielens("100k", root=tmp_path, download=True, base_url="http://0.0.0.0:9/")) == 50


def test_verify_checksum_formats(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    verify_checksum(path, hashlib.sha256(b"abc").hexdigest().upper())
    verify_checksum(path, "md5:" + hashlib.md5(b"abc").hexdigest())
    with pytest.raises(ValueError, match="expected 'sha256"):
        verify_checksum(path, "crc:1234")
