"""Stand-ins for the P2P layer on a node: Spegel's registry mirror and Dragonfly's dfdaemon
proxy, with the behaviour their documentation gives, for the source-chain tests.

Both serve ``GET``/``HEAD /v2/<repo>/blobs/<digest>`` (and manifests by digest) from
``content(digest)``, which answers the bytes a node holds or None, and honour
``Range: bytes=N-`` with 206. What differs:

* Spegel (``kind="spegel"``) reads the origin registry from ``?ns=``; a blob no node
  holds is ``404`` (Spegel never goes to the origin itself; the client moves on).
* Dragonfly (``kind="dragonfly"``) reads it from ``X-Dragonfly-Registry``; a miss is
  404 here, or, with ``status=500``, the error a dfdaemon that may not back-source
  answers (the stub never fetches from the origin).

Every request is recorded (method, path, query, headers) so a test can check, for
example, that no credentials reached a peer. ``corrupt`` flips a byte of every blob
served, for the bad-bytes tests. Stopped by ``stop()`` (a thread, not a process).
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_PATH = re.compile(r"^/v2/(.+)/(blobs|manifests)/(sha256:[a-f0-9]{64})$")


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    status: int


@dataclass
class PeerStub:
    kind: str  # "spegel" or "dragonfly"
    content: Callable[[str], bytes | None]
    corrupt: bool = False
    #: digest -> bytes after which the connection is cut (the length still announced whole)
    cut: dict[str, int] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    served: int = 0  # body bytes sent
    #: Answer every request with this status (a dfdaemon that may not back-source
    #: answers a blob it has no peer for with an error, not 404).
    status: int | None = None

    def start(self) -> PeerStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                url = urlsplit(self.path)
                m = _PATH.match(url.path)
                data = stub.content(m.group(3)) if m else None
                status = 200 if data is not None else 404
                if stub.status is not None:
                    status, data = stub.status, None
                start = 0
                rng = re.match(r"^bytes=([0-9]+)-$", self.headers.get("Range", ""))
                if data is not None and rng:
                    start = int(rng.group(1))
                    status = 206 if start < len(data) else 416
                stub.seen.append(
                    Seen(
                        self.command,
                        url.path,
                        parse_qs(url.query),
                        dict(self.headers.items()),
                        status,
                    )
                )
                if status not in (200, 206) or data is None:
                    payload = b'{"errors":[{"code":"NOT_FOUND"}]}'
                    self.send_response(status if status in (416, stub.status) else 404)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if body:
                        self.wfile.write(payload)
                    return
                if stub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:] if data else data
                part = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(part)))
                self.send_header("Docker-Content-Digest", m.group(3) if m else "")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                stop = stub.cut.pop(m.group(3), None) if m else None
                try:
                    self.wfile.write(part if stop is None else part[:stop])
                    stub.served += len(part) if stop is None else stop
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if stop is not None:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def blob_requests(self) -> list[Seen]:
        return [s for s in self.seen if "/blobs/" in s.path]

    def __enter__(self) -> PeerStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def registry_blob(storage: str, digest: str) -> bytes | None:
    """A blob as a Distribution filesystem store keeps it (read from disk, not served)."""
    hexd = digest.split(":", 1)[1]
    path = f"{storage}/docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data"
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None
