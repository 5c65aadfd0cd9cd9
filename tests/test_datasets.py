"""Kodak download and data set resolution, against a local HTTP server (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
from functools import partial
from pathlib import Path

import pytest

from dqcodec.datasets import (
    KODAK_SHA256,
    DatasetError,
    default_cache_dir,
    kodak_dir,
    resolve_dataset,
)
from dqcodec.errors import DQError

SOURCE = Path("/work/shared/data/kodak")

pytestmark = pytest.mark.skipif(
    not all((SOURCE / name).is_file() for name in KODAK_SHA256),
    reason=f"Kodak images not available under {SOURCE}",
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def publish(serve_root: Path, names=None) -> None:
    for name in names if names is not None else KODAK_SHA256:
        (serve_root / name).symlink_to(SOURCE / name)


def assert_complete(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(KODAK_SHA256)
    for name, digest in KODAK_SHA256.items():
        assert sha256(folder / name) == digest, name


def test_download_into_empty_cache(server: Server, serve_root: Path, cache: Path) -> None:
    publish(serve_root)
    folder = kodak_dir(base_url=server.url, progress=False)
    assert folder == cache
    assert_complete(folder)
    assert sorted(server.requests) == sorted(f"/kodak/{name}" for name in KODAK_SHA256)


def test_second_call_downloads_nothing(server: Server, serve_root: Path, cache: Path) -> None:
    publish(serve_root)
    kodak_dir(base_url=server.url, progress=False)
    server.requests.clear()
    assert kodak_dir(base_url=server.url, progress=False) == cache
    assert server.requests == []
    assert_complete(cache)


def test_corrupted_file_is_downloaded_again(server: Server, serve_root: Path, cache: Path) -> None:
    publish(serve_root)
    cache.mkdir(parents=True)
    for name in KODAK_SHA256:
        shutil.copyfile(SOURCE / name, cache / name)
    (cache / "kodim07.png").write_bytes(b"not a png")
    (cache / "kodim11.png").unlink()
    kodak_dir(base_url=server.url, progress=False)
    assert sorted(server.requests) == ["/kodak/kodim07.png", "/kodak/kodim11.png"]
    assert_complete(cache)


def test_wrong_file_raises_and_leaves_nothing(server: Server, serve_root: Path, cache: Path) -> None:
    cache.mkdir(parents=True)
    for name in KODAK_SHA256:
        if name != "kodim05.png":
            shutil.copyfile(SOURCE / name, cache / name)
    publish(serve_root, [n for n in KODAK_SHA256 if n != "kodim05.png"])
    (serve_root / "kodim05.png").symlink_to(SOURCE / "kodim06.png")
    with pytest.raises(DatasetError) as info:
        kodak_dir(base_url=server.url, progress=False)
    message = str(info.value)
    assert "kodim05.png" in message and server.url + "kodim05.png" in message
    assert "\n" not in message
    assert server.requests == ["/kodak/kodim05.png"]
    assert sorted(p.name for p in cache.iterdir()) == sorted(n for n in KODAK_SHA256 if n != "kodim05.png")


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
        url = "http://127.0.0.1:%d/" % httpd.server_address[1]
        with pytest.raises(DatasetError, match="kodim01.png"):
            kodak_dir(base_url=url, progress=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert list(cache.iterdir()) == []


def test_no_download_when_disabled(cache: Path) -> None:
    with pytest.raises(DatasetError, match="missing"):
        kodak_dir(download=False, progress=False)


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DQCODEC_DATA", str(tmp_path / "data"))
    assert default_cache_dir() == tmp_path / "data"
    monkeypatch.delenv("DQCODEC_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "dqcodec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "dqcodec"


def test_resolve_kodak_from_cache(cache: Path) -> None:
    cache.mkdir(parents=True)
    for name in KODAK_SHA256:
        shutil.copyfile(SOURCE / name, cache / name)
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
