"""The node's S3-compatible read endpoint: model files by path, only verified bytes.

Path-style, one bucket, ``modelcar``; a key is ``sha256-<hex>/<path>``: the model's
manifest digest and the file's path under ``/models``. ``ListObjectsV2`` (``GET
/modelcar?list-type=2``, with ``prefix``, ``delimiter``, ``max-keys``,
``continuation-token``, ``start-after``), ``HeadObject`` and ``GetObject`` with one
``Range`` (``bytes=N-M``, ``N-``, ``-N``): what vLLM's ``runai_streamer`` load format and
the AWS SDKs use to read a model.

Where the bytes come from:

* a published model: its verified tree (``sendfile``);
* a model being pulled (``run --serve``, contract v1.1): its staging file, once every
  64 MiB chunk under the range has matched its sha256 (:mod:`.verified`); chunks the
  pull has not reached are fetched ahead of it by range (:mod:`.ahead`); a range not
  verified yet is waited for, at most ``wait`` seconds, then ``503 SlowDown`` with
  ``Retry-After``; if the pull fails (a chunk that does not match its digest fails it),
  ``403 InvalidObjectState`` (not retried by SDKs) and nothing of it. A v1
  image's file is released whole, once its sha256 matched;
* a model the node was assigned but has not begun to pull: its listing waits the same
  way; any other key is ``404 NoSuchKey``.

Access is the fleet credential's: a SigV4 signature made with it as the secret key
(any access key id, any region), or the ``Bearer``/``Basic`` forms of the registry
side; anonymous reads only when the node was started with ``--s3-anonymous``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote
from xml.sax.saxutils import escape

from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.verified import Board, Pulling
from modelcar.format.fileindex import FileEntry

log = logging.getLogger("modelcar.cache")

BUCKET = "modelcar"
#: Seconds a read of bytes not yet verified waits before 503 SlowDown.
WAIT_SECONDS = 30.0
_MODEL = re.compile(r"^sha256-(?P<hex>[a-f0-9]{64})$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
#: Files carry the builder's mtime (0); S3 clients want some date.
LAST_MODIFIED = "Thu, 01 Jan 1970 00:00:00 GMT"
LAST_MODIFIED_ISO = "1970-01-01T00:00:00.000Z"


@dataclass
class _File:
    entry: FileEntry
    #: the published file, or the staging one while the model is pulled
    path: Path
    pulling: Pulling | None


class S3Reads:
    def __init__(
        self,
        cache: CacheDir,
        board: Board | None,
        wanted: Callable[[], set[str] | None] | None = None,
        wait: float = WAIT_SECONDS,
    ):
        self.cache, self.board, self.wanted, self.wait = cache, board, wanted, wait
        self._indexes: dict[str, dict[str, FileEntry]] = {}
        self._lock = threading.Lock()

    # --- what a model holds ------------------------------------------------------

    def _model(self, digest: str, wait: bool) -> tuple[dict[str, FileEntry], Pulling | None] | None:
        """A model's files and, while it is pulled, its pull; None if the node has none."""
        for _ in range(2):  # published between the two looks: look again
            if self.cache.is_published(digest):
                with contextlib.suppress(OSError, ValueError):
                    return self._published_files(digest), None
            pull = self.board.get(digest) if self.board else None
            if pull is None and wait and self.board and self._wanted(digest):
                pull = self.board.wait_for(
                    digest, self.wait, lambda: self.cache.is_published(digest)
                )
            if pull is not None:
                return pull.files, pull
            if not self.cache.is_published(digest):
                return None
        return None

    def _published_files(self, digest: str) -> dict[str, FileEntry]:
        """A published model's files, from its saved index (read once: a digest's index
        never changes; a loader asks for hundreds of ranges)."""
        with self._lock:
            files = self._indexes.get(digest)
        if files is None:
            files = {f.path: f for f in self.cache.load_index(digest).files}
            with self._lock:
                if len(self._indexes) >= 64:
                    self._indexes.pop(next(iter(self._indexes)))
                self._indexes[digest] = files
        return files

    def _wanted(self, digest: str) -> bool:
        """Whether the daemon holds or will pull ``digest`` (yes, before its first pass)."""
        if self.wanted is None:
            return False
        assigned = self.wanted()
        return assigned is None or digest in assigned

    def _models(self) -> list[str]:
        pulling = set(self.board.models()) if self.board else set()
        return sorted(set(self.cache.published()) | pulling)

    # --- requests ------------------------------------------------------------------

    def answer(self, h: BaseHTTPRequestHandler, send: Callable[[int, int, int], None]) -> None:
        """Answer one request under ``/modelcar``; ``send(fd, offset, size)`` writes
        file bytes to the client (the endpoint's ``sendfile``)."""
        raw_path, _, query = h.path.partition("?")
        key = unquote(raw_path[len("/" + BUCKET) :].lstrip("/"))
        if not key:
            if h.command != "GET":
                self._head_bucket(h)
                return
            self._list(h, parse_qs(query, keep_blank_values=True))
            return
        model, _, path = key.partition("/")
        m = _MODEL.match(model)
        if m is None or not path:
            error(h, 404, "NoSuchKey", "keys are sha256-<hex>/<path>", key)
            return
        digest = "sha256:" + m["hex"]
        found = self._model(digest, wait=True)
        if found is None or path not in found[0]:
            if found is None and self._wanted(digest):
                error(h, 503, "SlowDown", "the node has not begun this pull", key, retry=True)
                return
            error(h, 404, "NoSuchKey", "the node holds no such model file", key)
            return
        files, pulling = found
        entry = files[path]
        where = pulling.staging / path if pulling else self.cache.model_dir(digest) / path
        self._object(h, digest, _File(entry, where, pulling), key, send)

    def _head_bucket(self, h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _object(
        self,
        h: BaseHTTPRequestHandler,
        digest: str,
        f: _File,
        key: str,
        send: Callable[[int, int, int], None],
    ) -> None:
        size = f.entry.size
        start, end, status = 0, size, 200
        wanted = h.headers.get("Range")
        if wanted and h.command == "GET":
            parsed = byte_range(wanted, size)
            if parsed is None:
                error(
                    h,
                    416,
                    "InvalidRange",
                    "one range of bytes within the object",
                    key,
                    Content_Range=f"bytes */{size}",
                )
                return
            start, end, status = parsed[0], parsed[1], 206
        pulling = f.pulling
        if h.command == "GET" and pulling is not None and self.board is not None:
            self.board.want(digest, f.entry.path, start, end)  # ahead of the pull
            outcome = self.board.wait(digest, f.entry.path, start, end, self.wait)
            if outcome == "gone":  # published meanwhile: the tree
                f = _File(f.entry, self.cache.model_dir(digest) / f.entry.path, None)
                if not self.cache.is_published(digest):
                    error(h, 503, "SlowDown", "the pull stopped; ask again", key, retry=True)
                    return
            elif outcome == "failed":
                error(  # not retryable: these bytes will not verify in this pull
                    h,
                    403,
                    "InvalidObjectState",
                    f"the node's pull of this model failed: {pulling.error}",
                    key,
                )
                return
            elif outcome == "timeout":
                error(h, 503, "SlowDown", "these bytes are not verified yet", key, retry=True)
                return
        fd = -1
        if h.command == "GET" and end > start:  # a HEAD, or nothing to send, opens nothing
            fd = self._open(f, digest)
            if fd < 0:
                error(h, 503, "SlowDown", "the file is not there yet", key, retry=True)
                return
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/octet-stream")
            h.send_header("Content-Length", str(end - start))
            h.send_header("ETag", f'"{f.entry.sha256.removeprefix("sha256:")}"')
            h.send_header("Last-Modified", LAST_MODIFIED)
            h.send_header("Accept-Ranges", "bytes")
            if status == 206:
                h.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            h.end_headers()
            if fd >= 0:
                send(fd, start, end - start)
        finally:
            if fd >= 0:
                os.close(fd)

    def _open(self, f: _File, digest: str) -> int:
        """The file's descriptor: staged, or published (it may have been, meanwhile);
        -1 if neither is there."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        for path in (f.path, self.cache.model_dir(digest) / f.entry.path):
            with contextlib.suppress(OSError):
                return os.open(path, flags)
        return -1

    def _list(self, h: BaseHTTPRequestHandler, q: dict[str, list[str]]) -> None:
        def one(name: str, default: str = "") -> str:
            return q.get(name, [default])[0]

        if one("list-type") != "2":
            error(h, 400, "NotImplemented", "only ListObjectsV2 (list-type=2)", BUCKET)
            return
        prefix, delimiter = one("prefix"), one("delimiter")
        try:
            max_keys = max(0, min(1000, int(one("max-keys", "1000"))))
        except ValueError:
            error(h, 400, "InvalidArgument", "max-keys is a number", BUCKET)
            return
        after = one("continuation-token") or one("start-after")
        model = prefix.split("/", 1)[0]
        named = _MODEL.match(model) if "/" in prefix else None
        models = ["sha256:" + named["hex"]] if named else self._models()
        keys: dict[str, FileEntry] = {}
        for digest in models:
            found = self._model(digest, wait=named is not None)
            if found is None:
                if named and self._wanted(digest):
                    error(
                        h, 503, "SlowDown", "the node has not begun this pull", prefix, retry=True
                    )
                    return
                continue
            for path, entry in found[0].items():
                k = f"sha256-{digest[7:]}/{path}"
                if k.startswith(prefix):
                    keys[k] = entry
        contents: list[tuple[str, FileEntry]] = []
        prefixes: list[str] = []
        truncated, last = False, ""
        for k in sorted(keys):
            if after and k <= after:
                continue
            group = None
            if delimiter:
                cut = k.find(delimiter, len(prefix))
                if cut >= 0:
                    group = k[: cut + len(delimiter)]
            if group is not None and prefixes and prefixes[-1] == group:
                continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            if group is not None:
                prefixes.append(group)
                last = group + "\uffff"
            else:
                contents.append((k, keys[k]))
                last = k
        shown = (lambda k: quote(k, safe="/")) if one("encoding-type") == "url" else escape
        parts = [
            f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{_NS}">',
            f"<Name>{BUCKET}</Name><Prefix>{shown(prefix)}</Prefix>",
            f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>",
        ]
        if delimiter:
            parts.append(f"<Delimiter>{shown(delimiter)}</Delimiter>")
        if one("encoding-type"):
            parts.append(f"<EncodingType>{escape(one('encoding-type'))}</EncodingType>")
        parts.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        if truncated:
            parts.append(f"<NextContinuationToken>{escape(last)}</NextContinuationToken>")
        for k, entry in contents:
            parts.append(
                f"<Contents><Key>{shown(k)}</Key><LastModified>{LAST_MODIFIED_ISO}"
                f'</LastModified><ETag>"{entry.sha256[7:]}"</ETag><Size>{entry.size}</Size>'
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
        for p in prefixes:
            parts.append(f"<CommonPrefixes><Prefix>{shown(p)}</Prefix></CommonPrefixes>")
        parts.append("</ListBucketResult>")
        body = "".join(parts).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/xml")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of one HTTP byte range of an object of ``size`` bytes, or None."""
    r = _RANGE.match(header.strip())
    if r is None or (not r[1] and not r[2]):
        return None
    if not r[1]:  # the last N bytes
        n = int(r[2])
        return (max(0, size - n), size) if n and size else None
    first = int(r[1])
    end = min(size, int(r[2]) + 1) if r[2] else size
    if first >= size or end <= first:
        return None
    return first, end


def error(
    h: BaseHTTPRequestHandler,
    status: int,
    code: str,
    message: str,
    resource: str,
    *,
    retry: bool = False,
    **headers: str,
) -> None:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(quote(resource))}</Resource></Error>"
    ).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/xml")
    h.send_header("Content-Length", str(len(body)))
    if retry:
        h.send_header("Retry-After", "1")
    for k, v in headers.items():
        h.send_header(k.replace("_", "-"), v)
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)
