"""A layer as one readable stream from an ordered list of sources.

The core's range reader (:mod:`modelcar.http.rangereader`) does the resuming: on a
transport error, a stall or an early end it reopens at the byte it had reached.
What the daemon adds: the sources of the chain (:mod:`.sources`), tried in order,
the next one after each miss or failure, at the same offset; the bytes each source
served and the misses, counted; and a shared rate limiter over all layers of a pull.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import httpx

from modelcar.cache_daemon.sources import BlobSource
from modelcar.errors import (
    ModelcarError,
    NotFound,
    RegistryUnreachable,
    TransientError,
    TransientRegistryError,
    TransportError,
)
from modelcar.http.rangereader import EarlyEnd, RangeReader
from modelcar.oci.digest import Readable

log = logging.getLogger("modelcar.cache")


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


class SourcesMissed(NotFound):
    """No source of the chain holds the blob (each answered 404)."""


class PeersBusy(SourcesMissed):
    """Peers hold the blob but all are serving as many as they will (429): wait for
    one, never the origin (a lease is for what no peer holds)."""


def is_busy(e: BaseException) -> bool:
    return isinstance(e, PeersBusy) or getattr(e, "status", None) == 429


class BlobStream(RangeReader):
    """``read()`` the blob from ``start``; each failure moves on to the next source.

    ``by_source`` counts the bytes each source served, ``fallbacks`` the times each
    missed or failed. When every source misses, :class:`SourcesMissed`."""

    def __init__(
        self,
        sources: list[BlobSource],
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
        self._source = 0
        self.by_source: dict[str, int] = {}
        self.fallbacks: dict[str, int] = {}
        self._limiter = limiter or RateLimiter(None)
        super().__init__(
            self._open_at,
            size,
            start=start,
            attempts=attempts,
            retryable=_transient,
            on_wait=self._waiting,
            on_failure=self._next_source,
            base=backoff,
        )

    @contextmanager
    def _open_at(self, offset: int) -> Iterator[Readable]:
        errors: list[str] = []
        missed = 0
        busy = False
        for i in range(len(self.sources)):
            index = (self._source + i) % len(self.sources)
            source = self.sources[index]
            if busy and source.origin:
                raise PeersBusy(
                    "the peers holding the layer are busy",
                    subject=f"{self.digest}: {'; '.join(errors)}",
                )
            try:
                cm = source.store.open_blob(self.digest, offset)
                f = cm.__enter__()
            except (TransportError, httpx.HTTPError, OSError) as e:
                errors.append(f"{source.name}: {e}")
                self.fallbacks[source.name] = self.fallbacks.get(source.name, 0) + 1
                if isinstance(e, NotFound) or source.peer:
                    missed += 1  # a peer that fails or is busy: as if it held nothing
                    busy = busy or (source.peer and is_busy(e))
                if not isinstance(e, NotFound):
                    log.info("blob %s from %s failed: %s", self.digest[:19], source.name, e)
                continue
            self._source = index
            try:
                yield f
            finally:
                with suppress(ModelcarError, httpx.HTTPError, OSError):
                    cm.__exit__(None, None, None)
            return
        subject = f"{self.digest}: {'; '.join(errors)}"
        if busy:
            raise PeersBusy("the peers holding the layer are busy", subject=subject)
        if missed == len(self.sources):
            raise SourcesMissed("no source holds the layer", subject=subject)
        raise TransientRegistryError("no source could serve the layer", subject=subject)

    @property
    def served(self) -> set[str]:
        """The sources that gave this stream at least one byte."""
        return {name for name, n in self.by_source.items() if n}

    def _next_source(self, error: BaseException) -> None:
        self._source += 1  # the next attempt starts with the next source

    def _waiting(self, seconds: float, attempt: int, error: BaseException) -> None:
        log.info(
            "layer %s: %s; resuming at byte %d in %.1fs",
            self.digest[:19],
            error,
            self.offset,
            seconds,
        )

    def read(self, n: int = -1) -> bytes:
        try:
            data = super().read(n)
        except (httpx.HTTPError, OSError, EarlyEnd) as e:  # the last source failed us too
            if isinstance(e, OSError) and not isinstance(e, ConnectionError | TimeoutError):
                raise
            raise TransientRegistryError(
                f"download kept failing ({type(e).__name__})", subject=self.digest
            ) from None
        name = self.sources[self._source % len(self.sources)].name
        self.by_source[name] = self.by_source.get(name, 0) + len(data)
        self._limiter.consume(len(data))
        return data


def _transient(e: BaseException) -> bool:
    return isinstance(e, httpx.HTTPError | OSError | TransientError | RegistryUnreachable)
