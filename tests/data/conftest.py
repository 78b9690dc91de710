"""Fixtures for the data tests: a private cache, no internet, and a real local HTTP server."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .helpers import dead_url, gz, sha256, toy_mnist


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every data test gets its own empty cache, and the built-in mirrors are replaced by a
    dead local URL, so no test can reach the internet by accident."""
    cache = tmp_path / "vaekit-cache"
    monkeypatch.setenv("VAEKIT_DATA", str(cache))
    monkeypatch.setenv("VAEKIT_MIRROR", dead_url())
    monkeypatch.delenv("VAEKIT_MEMORY_LIMIT", raising=False)
    return cache


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.routes[path] = (behaviour, body)``; anything else is a 404.

    Behaviours: ``ok``; ``interrupt`` (promise the whole body, send half, hang up);
    ``unsized`` (no Content-Length: the body ends when the connection closes); ``drip``
    (one byte every ``DRIP_PAUSE`` seconds, like a mirror that barely answers); ``steady``
    (``STEADY_CHUNK`` bytes every ``STEADY_PAUSE`` seconds: slow, but it keeps coming)."""

    DRIP_PAUSE = 0.05
    STEADY_CHUNK, STEADY_PAUSE = 100, 0.02

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.requests.append(self.path)
        behaviour, body = self.server.routes.get(self.path, ("missing", b""))
        if behaviour == "missing":
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if behaviour != "unsized":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if behaviour == "interrupt":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if behaviour in ("drip", "steady"):
            size, pause = (1, self.DRIP_PAUSE) if behaviour == "drip" else (self.STEADY_CHUNK, self.STEADY_PAUSE)
            try:
                for i in range(0, len(body), size):
                    self.wfile.write(body[i : i + size])
                    self.wfile.flush()
                    time.sleep(pause)
            except OSError:  # the client gave up
                self.close_connection = True
            return
        try:
            self.wfile.write(body)
        except OSError:  # the client stopped reading (a refused download)
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 in a thread; ``.url``, ``.routes``, ``.requests``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.routes, server.requests = {}, []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def fake_mnist(monkeypatch, http_server):
    """'mnist' pinned to generated files served on 127.0.0.1 (the code path is the real one)."""
    from vaekit.app.data import download as dl
    from vaekit.app.data import mnist

    parts = toy_mnist()
    files = tuple(dl.RemoteFile(f"{name}.gz", sha256=sha256(body)) for name, body in parts.items())
    monkeypatch.setitem(mnist.REMOTE, "mnist", dl.RemoteDataset("mnist", files, mirrors=(http_server.url,)))
    for name, body in parts.items():
        http_server.routes[f"/{name}.gz"] = ("ok", gz(body))
    monkeypatch.delenv("VAEKIT_MIRROR")
    return parts
