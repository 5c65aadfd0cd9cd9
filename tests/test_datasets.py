"""Kodak download and data set resolution, against a local HTTP server (no internet).

The test makes its own "Kodak set": 24 small PNG files named like the real ones, whose SHA-256
digests replace dqcodec.evaluation.datasets.KODAK_SHA256 for the test, so the download,
verification and cache code runs unchanged on any machine. Any request to a host other than
127.0.0.1 fails the test.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import threading
import urllib.request
from functools import partial
from pathlib import Path

import pytest

from dqcodec.errors import DQError
from dqcodec.evaluation import datasets
from dqcodec.evaluation.datasets import (
    DatasetError,
    default_cache_dir,
    kodak_dir,
    resolve_dataset,
)
from dqcodec.testing import photo

NAMES = [f"kodim{i:02d}.png" for i in range(1, 25)]
# read before any test replaces them
SHIPPED_SHA256 = dict(datasets.KODAK_SHA256)
SHIPPED_URL = datasets.KODAK_URL


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 small, distinct PNG images named like the Kodak files."""
    folder = tmp_path_factory.mktemp("kodak-source")
    for i, name in enumerate(NAMES):
        photo(24 + i, 16, seed=i).save(folder / name)
    return folder


@pytest.fixture(autouse=True)
def kodak(source: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The checksums of the test's images stand in for the real ones.

    No request leaves 127.0.0.1.
    """
    digests = {name: sha256(source / name) for name in NAMES}
    assert len(set(digests.values())) == len(NAMES)
    monkeypatch.setattr(datasets, "KODAK_SHA256", digests)
    real_urlopen = urllib.request.urlopen

    def local_only(url, *args, **kwargs):
        target = url if isinstance(url, str) else url.full_url
        assert target.startswith("http://127.0.0.1:"), f"the test tried to reach {target}"
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)
    return digests


def test_shipped_checksum_table() -> None:
    """The real table, as the module defines it: 24 files in order, distinct SHA-256 digests."""
    assert list(SHIPPED_SHA256) == NAMES
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in SHIPPED_SHA256.values())
    assert len(set(SHIPPED_SHA256.values())) == 24
    assert (
        SHIPPED_SHA256["kodim01.png"]
        == "a56e27cbf5f843c048b6af1d6e090760e9c92fadba88b7dee0205918a37523bd"
    )
    assert (
        SHIPPED_SHA256["kodim24.png"]
        == "1071c68372cc5a01435c2c225a5cf7d4bb803846ec08bb6b3d6721b156d7cb96"
    )
    assert SHIPPED_URL == "http://r0k.us/graphics/kodak/kodak/"


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 serving `root`, recording the paths requested."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(Handler, directory=str(root))
        )
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        host, port = self.httpd.server_address[:2]
        self.url = f"http://{host}:{port}/kodak/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def serve_root(tmp_path: Path) -> Path:
    root = tmp_path / "www" / "kodak"
    root.mkdir(parents=True)
    return root


@pytest.fixture
def server(serve_root: Path):
    srv = Server(serve_root.parent)
    yield srv
    srv.close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("DQCODEC_DATA", str(root))
    return root / "kodak"


def publish(serve_root: Path, source: Path, names=None) -> None:
    for name in names if names is not None else NAMES:
        shutil.copyfile(source / name, serve_root / name)


def assert_complete(folder: Path, source: Path) -> None:
    """Exactly the 24 files (no temporary file left), each byte-identical to the source."""
    assert sorted(p.name for p in folder.iterdir()) == NAMES
    for name in NAMES:
        assert (folder / name).read_bytes() == (source / name).read_bytes(), name


def fill(cache: Path, source: Path, names=None) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    for name in names if names is not None else NAMES:
        shutil.copyfile(source / name, cache / name)


def test_download_into_empty_cache(
    server: Server, serve_root: Path, source: Path, cache: Path
) -> None:
    publish(serve_root, source)
    folder = kodak_dir(base_url=server.url, progress=False)
    assert folder == cache
    assert_complete(folder, source)
    assert sorted(server.requests) == [f"/kodak/{name}" for name in NAMES]


def test_second_call_downloads_nothing(
    server: Server, serve_root: Path, source: Path, cache: Path
) -> None:
    publish(serve_root, source)
    kodak_dir(base_url=server.url, progress=False)
    server.requests.clear()
    assert kodak_dir(base_url=server.url, progress=False) == cache
    assert server.requests == []
    assert_complete(cache, source)


def test_corrupted_file_is_downloaded_again(
    server: Server, serve_root: Path, source: Path, cache: Path
) -> None:
    publish(serve_root, source)
    fill(cache, source)
    (cache / "kodim07.png").write_bytes(b"not a png")
    (cache / "kodim11.png").unlink()
    kodak_dir(base_url=server.url, progress=False)
    assert sorted(server.requests) == ["/kodak/kodim07.png", "/kodak/kodim11.png"]
    assert_complete(cache, source)


def test_wrong_file_raises_and_leaves_nothing(
    server: Server, serve_root: Path, source: Path, cache: Path, kodak: dict[str, str]
) -> None:
    others = [n for n in NAMES if n != "kodim05.png"]
    fill(cache, source, others)
    publish(serve_root, source, others)
    shutil.copyfile(
        source / "kodim06.png", serve_root / "kodim05.png"
    )  # a valid PNG, the wrong one
    with pytest.raises(DatasetError) as info:
        kodak_dir(base_url=server.url, progress=False)
    message = str(info.value)
    assert "checksum mismatch" in message
    assert "kodim05.png" in message and server.url + "kodim05.png" in message
    assert kodak["kodim05.png"] in message and kodak["kodim06.png"] in message  # expected, got
    assert "\n" not in message
    assert server.requests == ["/kodak/kodim05.png"]
    # the rejected download was neither put in place nor left behind as a temporary file
    assert sorted(p.name for p in cache.iterdir()) == others


def test_checksum_is_checked_against_the_table(
    server: Server,
    serve_root: Path,
    source: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    kodak: dict[str, str],
) -> None:
    """The same bytes are refused once the table expects other ones."""
    publish(serve_root, source)
    monkeypatch.setitem(kodak, "kodim03.png", "0" * 64)
    with pytest.raises(DatasetError, match="checksum mismatch for kodim03.png"):
        kodak_dir(base_url=server.url, progress=False)
    assert server.requests == ["/kodak/kodim01.png", "/kodak/kodim02.png", "/kodak/kodim03.png"]
    assert sorted(p.name for p in cache.iterdir()) == ["kodim01.png", "kodim02.png"]


def test_http_404_raises(server: Server, cache: Path) -> None:
    with pytest.raises(DatasetError) as info:
        kodak_dir(base_url=server.url, progress=False)
    message = str(info.value)
    assert "404" in message and server.url + "kodim01.png" in message
    assert "\n" not in message
    assert isinstance(info.value, DQError)
    assert list(cache.iterdir()) == []


def test_truncated_response_raises(cache: Path) -> None:
    class Truncating(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Truncating)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        with pytest.raises(DatasetError, match="kodim01.png"):
            kodak_dir(base_url=url, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert list(cache.iterdir()) == []


def test_no_download_when_disabled(source: Path, cache: Path) -> None:
    with pytest.raises(DatasetError, match="24 of 24 Kodak images missing"):
        kodak_dir(download=False, progress=False)
    fill(cache, source)
    assert kodak_dir(download=False, progress=False) == cache
    (cache / "kodim24.png").write_bytes(b"corrupt")
    with pytest.raises(DatasetError, match="1 of 24 Kodak images missing or corrupt .*kodim24.png"):
        kodak_dir(download=False, progress=False)
    assert (cache / "kodim24.png").read_bytes() == b"corrupt"  # nothing touched


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DQCODEC_DATA", str(tmp_path / "data"))
    assert default_cache_dir() == tmp_path / "data"
    monkeypatch.delenv("DQCODEC_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "dqcodec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "dqcodec"


def test_resolve_kodak_from_cache(source: Path, cache: Path) -> None:
    fill(cache, source)
    paths = resolve_dataset("kodak", None)  # everything cached: no network needed
    assert paths == [cache / f"kodim{i:02d}.png" for i in range(1, 25)]


def test_resolve_data_dir(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ["b.PNG", "a.jpg", "c.webp", "notes.txt", ".hidden.png"]:
        (folder / name).write_bytes(b"")
    (folder / "sub.png").mkdir()
    expected = [folder / "a.jpg", folder / "b.PNG", folder / "c.webp"]
    assert resolve_dataset("anything", folder) == expected
    assert resolve_dataset("kodak", folder) == expected
    assert kodak_dir(folder) == folder


def test_resolve_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown data set"):
        resolve_dataset("imagenet", None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no images"):
        resolve_dataset("kodak", empty)
    with pytest.raises(DatasetError, match="no images"):
        kodak_dir(empty)
    with pytest.raises(DatasetError, match="not a directory"):
        resolve_dataset("x", tmp_path / "missing")
