"""A blob as one readable stream that survives dropped connections.

On a transport error or an early end, the stream is reopened with an HTTP range
request at the byte it had reached, from the next source: mirrors first, the
origin last (as containerd's ``hosts.toml``). A shared rate limiter caps the
bytes per second across all layers of a pull.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager, suppress
from typing import BinaryIO

import httpcore._sync.http11 as httpcore_http11
import httpx

from modelcar.errors import (
    ModelcarError,
    NotFound,
    RegistryError,
    RegistryUnreachable,
    TransientRegistryError,
)
from modelcar.oci.store import ImageStore

log = logging.getLogger("modelcar.cache")

# httpcore reads a response 64 KiB per recv(); for multi-GB layers that is most of
# the client's CPU. 1 MiB reads cut the syscalls and the Python work per byte 16x.
if hasattr(httpcore_http11.HTTP11Connection, "READ_NUM_BYTES"):
    httpcore_http11.HTTP11Connection.READ_NUM_BYTES = 1 << 20


class RateLimiter:
    """A token bucket of ``rate`` bytes per second (one second of burst)."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self._tokens = rate or 0.0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def consume(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class BlobStream:
    """``read()`` the blob from ``start``; reconnects at the current offset on failure."""

    def __init__(
        self,
        sources: list[ImageStore],
        digest: str,
        size: int,
        *,
        start: int = 0,
        attempts: int = 6,
        limiter: RateLimiter | None = None,
        backoff: float = 0.5,
    ):
        self.sources = sources
        self.digest = digest
        self.size = size
        self.offset = start
        self.fetched = 0  # bytes that came over the network
        self._attempts = attempts
        self._limiter = limiter or RateLimiter(None)
        self._backoff = backoff
        self._source = 0
        self._cm: AbstractContextManager[BinaryIO] | None = None
        self._f: BinaryIO | None = None

    def _open(self) -> None:
        errors: list[str] = []
        for i in range(len(self.sources)):
            store = self.sources[(self._source + i) % len(self.sources)]
            try:
                cm = store.open_blob(self.digest, self.offset)
                self._f = cm.__enter__()
                self._cm = cm
                self._source = (self._source + i) % len(self.sources)
                return
            except (RegistryError, httpx.HTTPError, OSError) as e:
                errors.append(f"{store.ref.name}: {e}")
                if not isinstance(e, NotFound):
                    log.info("blob %s from %s failed: %s", self.digest[:19], store.ref.name, e)
        raise TransientRegistryError(
            "no source could serve the layer", subject=f"{self.digest}: {'; '.join(errors)}"
        )

    def _close(self) -> None:
        cm, self._cm, self._f = self._cm, None, None
        if cm is not None:
            with suppress(ModelcarError, httpx.HTTPError, OSError):
                cm.__exit__(None, None, None)

    def read(self, n: int = -1) -> bytes:
        remaining = self.size - self.offset
        if remaining <= 0:
            return b""
        n = remaining if n < 0 else min(n, remaining)
        failures = 0
        while True:
            try:
                if self._f is None:
                    self._open()
                assert self._f is not None
                data = self._f.read(n)
                if not data:
                    raise TransientRegistryError("connection ended early", subject=self.digest)
            except (ModelcarError, httpx.HTTPError, OSError) as e:
                self._close()
                failures += 1
                if failures >= self._attempts or not _transient(e):
                    raise
                self._source += 1  # try the next source from here
                delay = min(self._backoff * 2 ** (failures - 1), 10.0)
                log.info(
                    "layer %s: %s; resuming at byte %d in %.1fs",
                    self.digest[:19], e, self.offset, delay,
                )  # fmt: skip
                time.sleep(delay)
                continue
            self.offset += len(data)
            self.fetched += len(data)
            self._limiter.consume(len(data))
            return data

    def close(self) -> None:
        self._close()


def _transient(e: BaseException) -> bool:
    return isinstance(e, httpx.HTTPError | OSError | TransientRegistryError | RegistryUnreachable)
