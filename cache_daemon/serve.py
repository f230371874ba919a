"""The node's read-only registry: what it holds verified, to its containerd and peers.

``GET``/``HEAD`` of ``/v2/``, ``/v2/<repo>/manifests/<digest>`` and
``/v2/<repo>/blobs/<digest>`` (one ``Range`` of bytes), the OCI distribution API's
pull side, by digest only: a tag is 404 (containerd resolves tags at the registry and
reads by digest from its mirrors; a peer pulls pinned references). The bytes come
from :class:`~.served.Served`: kept blobs, and modelcar layers regenerated from their
verified files (``os.sendfile``: no copy through this process).

Access: every request but ``/v2/`` itself carries the fleet credential, as
``Authorization: Bearer <token>`` (or Basic, any user, the token as the password, for
clients that only speak Basic); anything else is 401. ``/v2/`` answers 401 too
without it, as a registry does, so a client knows to authenticate.

Connections: at most ``max_connections`` (256) at once, each closed after
IDLE_SECONDS without a request; past that 503 and closed.

Fan-out: at most ``max_uploads`` blob transfers at once; past that a request is 429
with ``Retry-After``, so a busy node sends its peers elsewhere instead of serving
everyone slowly. Manifests are small and never refused for load.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import os
import re
import select
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from modelcar.cache_daemon import sigv4
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.s3 import BUCKET, S3Reads
from modelcar.cache_daemon.s3 import error as s3_error
from modelcar.cache_daemon.served import Body, Served
from modelcar.errors import UsageError
from modelcar.oci import mediatypes as mt

log = logging.getLogger("modelcar.cache")

_PATH = re.compile(r"^/v2/(?P<repo>.+)/(?P<what>blobs|manifests)/(?P<ref>[^/]+)$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
#: Seconds a client waits before asking a busy node again.
RETRY_AFTER = 1
#: A connection with no request for this long is closed (one thread each).
IDLE_SECONDS = 60.0
#: Connections served at once (a thread each); past that one is answered 503 and closed.
MAX_CONNECTIONS = 256


def read_token(path: str) -> str:
    """The fleet credential from a file (a mounted Secret), one line."""
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise UsageError(
            f"cannot read the fleet token ({e.strerror})",
            subject=path,
            hint="--fleet-token-file names a file holding the fleet's shared token",
        ) from None
    if len(token) < 16 or not token.isprintable() or " " in token:
        raise UsageError(
            "the fleet token must be one line of at least 16 printable characters",
            subject=path,
        )
    return token


class BlobServer:
    """The endpoint, on its own threads; ``start()``, then ``stop()``."""

    def __init__(
        self,
        cache: CacheDir,
        host: str,
        port: int,
        token: str,
        *,
        max_uploads: int = 8,
        max_connections: int = MAX_CONNECTIONS,
        on_served: Callable[[int], None] | None = None,
        s3: S3Reads | None = None,
        s3_anonymous: bool = False,
    ):
        self.served = Served(cache)
        #: the S3 read endpoint under /modelcar (:mod:`.s3`)
        self.s3 = s3 or S3Reads(cache, None)
        self.s3_anonymous = s3_anonymous
        self.token = token
        self.max_uploads = max_uploads
        self.on_served = on_served
        self._slots = threading.BoundedSemaphore(max_uploads)
        self.busy_refusals = 0
        self.bytes_served = 0
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"server_": self})
        self._http = _Bounded((host, port), handler, max_connections)
        self._http.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def start(self) -> BlobServer:
        self._thread = threading.Thread(
            target=self._http.serve_forever, name="blob-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        if self._thread:
            self._thread.join(timeout=10)

    def allowed(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return False
        else:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    def s3_refusal(self, method: str, target: str, headers: Any) -> str | None:
        """Why an S3 request may not read, or None: a SigV4 signature made with the
        fleet token, the registry side's forms, or none at all under --s3-anonymous."""
        auth = headers.get("Authorization")
        if auth is None:
            return None if self.s3_anonymous else "sign with the fleet token (SigV4)"
        if auth.startswith(sigv4.ALGORITHM):
            return sigv4.check(method, target, headers, self.token)
        return None if self.allowed(auth) else "not the fleet credential"

    def counted(self, n: int) -> None:
        with self._lock:
            self.bytes_served += n
        if self.on_served:
            self.on_served(n)


class _Bounded(ThreadingHTTPServer):
    """At most ``limit`` connections at once: a thread each, so a flood of idle
    connections cannot take the node's memory; past that, 503 and close at once. The
    listen backlog is as deep (socketserver's default of 5 drops the SYNs of a loader
    opening its connections at once: they time out instead of queueing)."""

    request_queue_size = MAX_CONNECTIONS

    def __init__(self, address: tuple[str, int], handler: type, limit: int):
        super().__init__(address, handler)
        self._open = threading.BoundedSemaphore(limit)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._open.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._open.release()


class _Handler(BaseHTTPRequestHandler):
    server_: BlobServer
    protocol_version = "HTTP/1.1"
    timeout = IDLE_SECONDS
    server_version = "modelcar-cache"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("serve: " + format, *args)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _error(self, status: int, code: str, message: str, **headers: str) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _answer(self, head: bool) -> None:
        server = self.server_
        if self.path.startswith(("http://", "https://")):  # absolute-form (the AWS CRT sends it)
            rest = self.path.split("://", 1)[1]
            self.path = "/" + rest.partition("/")[2]
        path = self.path.split("?", 1)[0]
        if path == "/" + BUCKET or path.startswith(f"/{BUCKET}/"):
            self._s3()
            return
        if not server.allowed(self.headers.get("Authorization")):
            self._error(
                401,
                "UNAUTHORIZED",
                "this node serves only holders of the fleet credential",
                WWW_Authenticate='Basic realm="modelcar-cache"',
            )
            return
        if path in ("/v2", "/v2/"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
            self.end_headers()
            if not head:
                self.wfile.write(b"{}")
            return
        m = _PATH.match(path)
        if m is None:
            self._error(404, "NOT_FOUND", "only /v2/<repo>/(manifests|blobs)/<digest>")
            return
        ref, what = m.group("ref"), m.group("what")
        if not _DIGEST.match(ref):
            self._error(404, "MANIFEST_UNKNOWN", "this node serves digests only, never tags")
            return
        body = server.served.open(ref)
        if body is None:
            code = "BLOB_UNKNOWN" if what == "blobs" else "MANIFEST_UNKNOWN"
            self._error(404, code, "this node holds no verified copy")
            return
        with body:
            if what == "manifests":
                if body.media_type not in (*mt.MANIFEST_TYPES, *mt.INDEX_TYPES):
                    self._error(404, "MANIFEST_UNKNOWN", "not a manifest")
                    return
                self._send(body, head)
                return
            if head:
                self._send(body, head)
                return
            if not server._slots.acquire(blocking=False):
                with server._lock:
                    server.busy_refusals += 1
                self._error(
                    429,
                    "TOOMANYREQUESTS",
                    f"this node serves {server.max_uploads} transfers at once",
                    Retry_After=str(RETRY_AFTER),
                )
                return
            try:
                self._send(body, head)
            finally:
                server._slots.release()

    def _s3(self) -> None:
        server = self.server_
        why = server.s3_refusal(self.command, self.path, self.headers)
        if why is not None:
            s3_error(self, 403, "AccessDenied", why, self.path)
            return
        sent = 0

        def send(fd: int, offset: int, size: int) -> None:
            nonlocal sent
            try:
                _sendfile(self.connection, fd, offset, size)
                sent = size
            except OSError as e:  # the client went away: end this response
                log.info("S3 read of %s stopped: %s", self.path[:120], e)
                self.close_connection = True

        try:
            server.s3.answer(self, send)
        finally:
            server.counted(sent)

    def _send(self, body: Body, head: bool) -> None:
        start, end = 0, body.size
        status = 200
        wanted = self.headers.get("Range")
        if wanted and self.command == "GET":
            r = _RANGE.match(wanted.strip())
            first = int(r.group(1)) if r else -1
            last = int(r.group(2)) + 1 if r and r.group(2) else body.size
            if r is None or first >= body.size or last <= first:
                self._error(
                    416,
                    "RANGE_INVALID",
                    "one range of bytes=N-[M] within the blob",
                    Content_Range=f"bytes */{body.size}",
                )
                return
            start, end, status = first, min(last, body.size), 206
        self.send_response(status)
        self.send_header("Content-Type", body.media_type)
        self.send_header("Content-Length", str(end - start))
        self.send_header("Docker-Content-Digest", body.record.digest)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{body.size}")
        self.end_headers()
        if head:
            return
        sent = 0
        try:
            for piece in body.pieces(start, end):
                if piece.data is not None:
                    self.wfile.write(piece.data)
                else:
                    _sendfile(self.connection, piece.fd, piece.offset, piece.size)
                sent += piece.size
        except OSError as e:  # the client went away (or a file did): end this response
            log.info("serving %s stopped at byte %d: %s", body.record.digest[:19], start + sent, e)
            self.close_connection = True
        finally:
            self.server_.counted(sent)


def _sendfile(sock: socket.socket, fd: int, offset: int, size: int) -> None:
    """``size`` bytes of ``fd`` from ``offset`` to the socket, by the kernel. The socket
    has a timeout (so it is non-blocking underneath): wait for room, at most
    IDLE_SECONDS at a time."""
    left = size
    while left > 0:
        try:
            n = os.sendfile(sock.fileno(), fd, offset, min(left, 1 << 30))
        except BlockingIOError:
            _, writable, _ = select.select([], [sock], [], IDLE_SECONDS)
            if not writable:
                raise TimeoutError("the client took nothing for too long") from None
            continue
        if n == 0:
            raise OSError("the file ended early")
        offset += n
        left -= n


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``:PORT`` for every address)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError("a listen address is HOST:PORT", subject=text)
    return host or "0.0.0.0", int(port)
