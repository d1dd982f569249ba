"""Local HTTP servers for the asset-layer tests, on 127.0.0.1 with a port the OS picks.

`AssetServer` serves files the test makes, and counts every request:
- `/files/<name>`: a plain file, as a release page or S3 serves one (HEAD and GET);
- `/<org>/<repo>/resolve/<revision>/<file>`: a model file as the Hugging Face hub serves
  it to `hf_hub_download`: HEAD and GET answer with `X-Repo-Commit`, `ETag` and
  `X-Linked-Etag` (the sha256 of a git-LFS file), `X-Linked-Size` and `Content-Length`;
  an unknown file is a 404 with `X-Error-Code: EntryNotFound`, an unknown repository one
  with `RepoNotFound`, as on the hub. `Range` requests get a 206 (resumed downloads).

`StallServer` accepts connections and never answers.

Example:
    with AssetServer() as server:
        url = server.add_file("weights.zip", data)
        ...
        assert server.count("GET", "/files/weights.zip") == 1
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_PATH = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


class AssetServer:
    """Serves registered files over HTTP on 127.0.0.1, counting (method, path) requests."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.files: dict[str, bytes] = {}
        self.hub: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.repos: set[str] = set()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.delay_s = delay_s  # pause before each GET body: overlapping requests in tests
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # registration -------------------------------------------------------------------
    def add_file(self, name: str, data: bytes) -> str:
        self.files[f"/files/{name}"] = data
        return f"{self.url}/files/{name}"

    def add_hub_file(
        self, repo_id: str, filename: str, data: bytes, advertised_sha256: str | None = None
    ) -> str:
        """A hub file; `advertised_sha256` (default: the real one) goes into its ETag."""
        self.repos.add(repo_id)
        sha = advertised_sha256 or hashlib.sha256(data).hexdigest()
        self.hub[(repo_id, filename)] = (data, sha)
        return sha

    def add_hub_repo(self, repo_id: str) -> None:
        self.repos.add(repo_id)

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return self.requests[(method, path)]

    # lifecycle ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._url

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def start(self) -> AssetServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                server._answer(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                server._answer(self, body=True)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        host, port = self._httpd.server_address[:2]
        self._url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (idempotent); later requests find the port closed."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(10)
            self._httpd = None

    def __enter__(self) -> AssetServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # answers ------------------------------------------------------------------------
    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = handler.path.split("?")[0]
        with self._lock:
            self.requests[(handler.command, path)] += 1
        headers: dict[str, str] = {}
        data: bytes | None = self.files.get(path)
        hub = HUB_PATH.match(path)
        if hub is not None:
            repo, filename = hub["repo"], hub["file"]
            if repo not in self.repos:
                return self._error(handler, 404, {"X-Error-Code": "RepoNotFound"})
            if (repo, filename) not in self.hub:
                headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}
                return self._error(handler, 404, headers)
            data, sha = self.hub[(repo, filename)]
            headers = {
                "X-Repo-Commit": COMMIT,
                "ETag": f'"{sha}"',
                "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(len(data)),
            }
        if data is None:
            return self._error(handler, 404, {})
        start = 0
        ranged = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range", ""))
        if body and ranged:
            start = int(ranged[1])
        handler.send_response(206 if start else 200)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(len(data) - start))
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        if body:
            time.sleep(self.delay_s)
            try:
                handler.wfile.write(data[start:])
            except (BrokenPipeError, ConnectionResetError):
                pass

    @staticmethod
    def _error(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str]) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", "0")
        handler.end_headers()


class StallServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def _accept(self) -> None:
        self._socket.settimeout(0.1)  # so that closing ends the loop
        while not self._closed.is_set():
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)

    def __enter__(self) -> StallServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed.set()
        self._thread.join(5)
        self._socket.close()
        for conn in self._held:
            conn.close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
