"""Downloads are checked against known digests before anything is read, and a failed download says where to
put the files. Only a local HTTP server (or a dead port) on 127.0.0.1 is ever contacted."""

import functools
import hashlib
import http.server
import re
import socket
import threading

import pytest

from data_loaders import (
    KNOWN_CHECKSUMS,
    ChecksumError,
    DownloadError,
    download_movielens,
    load_movielens,
    verify_checksum,
)
from data_loaders._movielens import SPECS
from data_loaders.synthetic import synthetic_ratings, write_movielens


@pytest.fixture
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server(tmp_path, no_proxy):
    """(base URL, served folder with tiny ml-100k.zip and ml-latest-small.zip, request log)."""
    served = tmp_path / "served"
    write_movielens(served, "100k", synthetic_ratings(30, 5, 10, seed=4), as_zip=True, folds=False)
    write_movielens(served, "latest-small", synthetic_ratings(20, 4, 10, seed=5, half_stars=True), as_zip=True)
    log = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            log.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, log
    httpd.shutdown()
    httpd.server_close()


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- digests
def test_every_fixed_archive_has_a_published_md5():
    assert set(KNOWN_CHECKSUMS) == {spec.zip_name for spec in SPECS.values()}
    fixed = {name: d for name, d in KNOWN_CHECKSUMS.items() if "latest" not in name}
    assert len(fixed) == 6 and all(re.fullmatch(r"md5:[0-9a-f]{32}", d) for d in fixed.values())
    assert KNOWN_CHECKSUMS["ml-100k.zip"] == "md5:0e33842e24a9c977be4e0107933c0723"
    assert KNOWN_CHECKSUMS["ml-latest.zip"] is None and KNOWN_CHECKSUMS["ml-latest-small.zip"] is None


def test_digest_checked_download_from_local_server(server, tmp_path):
    base, served, log = server
    md5 = _md5(served / "ml-100k.zip")
    ds = load_movielens("100k", root=tmp_path / "c", download=True, base_url=base, checksum=f"md5:{md5}",
                        progress=False)
    assert len(ds) == 30 and _md5(tmp_path / "c" / "ml-100k.zip") == md5 and log == ["/ml-100k.zip"]


def test_mismatch_names_file_expected_and_actual_digest(server, tmp_path):
    base, served, _ = server
    with pytest.raises(ChecksumError) as err:
        download_movielens("100k", cache_dir=tmp_path / "c", base_url=base, checksum="md5:" + "0" * 32,
                           progress=False)
    message = str(err.value)
    assert "\n" not in message and "ml-100k.zip downloaded from " + base in message
    assert f"md5 checksum mismatch: expected {'0' * 32}, actual {_md5(served / 'ml-100k.zip')}" in message
    assert list((tmp_path / "c").iterdir()) == []


def test_known_digest_is_checked_before_anything_is_read(server, tmp_path):
    # the served zip is synthetic, so the published ML-100K digest must refuse it
    base, served, _ = server
    with pytest.raises(ChecksumError, match=r"expected 0e33842e24a9c977be4e0107933c0723, actual "
                                            + _md5(served / "ml-100k.zip")):
        load_movielens("100k", root=tmp_path / "c", download=True, base_url=base, progress=False)
    assert list((tmp_path / "c").iterdir()) == []


def test_archive_without_known_digest_needs_checksum_or_opt_out(server, tmp_path):
    base, served, log = server
    with pytest.raises(ValueError, match=r"ml-latest-small\.zip: no known digest .* pass checksum='md5:<hex>' "
                                         r"\(published at .*ml-latest-small\.zip\.md5\) or allow_unverified=True"):
        load_movielens("latest-small", root=tmp_path / "a", download=True, base_url=base, progress=False)
    assert log == []  # refused before any request
    ds = load_movielens("latest-small", root=tmp_path / "b", download=True, base_url=base, progress=False,
                        allow_unverified=True)
    assert len(ds) == 20 and ds.rating_step == 0.5
    path = download_movielens("latest-small", cache_dir=tmp_path / "c", base_url=base, progress=False,
                              checksum=_md5(served / "ml-latest-small.zip"))
    assert path.is_file() and len(log) == 2


def test_verify_checksum_error_type(tmp_path):
    path = tmp_path / "f.zip"
    path.write_bytes(b"abc")
    with pytest.raises(ChecksumError, match=r"f\.zip: sha256 checksum mismatch: expected 0+, actual "
                                            + hashlib.sha256(b"abc").hexdigest()):
        verify_checksum(path, "sha256:" + "0" * 64)


# ---------------------------------------------------------------------------------------------- offline
def _check_offline_message(message, root):
    assert "\n" not in message
    assert "NASP_DATA_DIR" in message and "data.root" in message
    assert f"{root / 'ml-100k'}/" in message and "ml-100k.zip" in message


def test_offline_is_one_line_naming_where_to_put_files(tmp_path, no_proxy):
    root = tmp_path / "data"
    with pytest.raises(DownloadError) as err:
        load_movielens("100k", root=root, download=True, base_url=f"http://127.0.0.1:{_dead_port()}/",
                       progress=False)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, OSError)  # the CLI prints it
    assert "refused" in str(err.value).lower()
    _check_offline_message(str(err.value), root)
    assert not list(root.glob("*.part"))


def test_timeout_is_a_download_error(tmp_path, no_proxy):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        root = tmp_path / "data"
        with pytest.raises(DownloadError, match="timed out") as err:
            load_movielens("100k", root=root, download=True, progress=False, timeout=0.3,
                           base_url=f"http://127.0.0.1:{silent.getsockname()[1]}/")
    _check_offline_message(str(err.value), root)


def test_http_error_is_a_download_error(server, tmp_path):
    base, _, _ = server
    with pytest.raises(DownloadError, match=r"MovieLens 1m: download of .*/ml-1m\.zip to .* failed \(HTTP 404 "):
        load_movielens("1m", root=tmp_path / "d", download=True, base_url=base, progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_missing_without_download_names_env_and_key(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_movielens("100k", root=tmp_path)
    _check_offline_message(str(err.value), tmp_path)
    assert "download=True" in str(err.value)
