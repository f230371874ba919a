"""One resumable reader for a remote object of known size.

``open_at(offset)`` opens the object from ``offset`` (a range request) and yields
something with ``read(n)``. :class:`RangeReader` reads it; when the connection
drops, stalls (:class:`~modelcar.http.body.SourceStalled`) or ends early, it opens
again at the byte it had reached, under the one retry policy
(:func:`modelcar.http.retry.call`: consecutive failures, ``Retry-After`` honoured).
``on_failure`` lets the caller switch sources between attempts (the cache daemon
rotates mirrors); the bytes themselves are the caller's to verify.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

import httpx

from modelcar.errors import SourceStalled
from modelcar.http import retry


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class EarlyEnd(Exception):
    """The connection ended before the object did."""


def transient(error: BaseException) -> bool:
    """Worth reopening at the same offset: the network failed us, not the object."""
    return isinstance(error, httpx.HTTPError | OSError | EarlyEnd | SourceStalled)


class RangeReader:
    def __init__(
        self,
        open_at: Callable[[int], AbstractContextManager[Readable]],
        size: int,
        *,
        start: int = 0,
        attempts: int = 6,
        retryable: Callable[[BaseException], bool] = transient,
        on_wait: retry.OnWait | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        base: float = 0.5,
    ):
        self.open_at, self.size = open_at, size
        self.offset = start
        self.fetched = 0  # bytes that came over the network
        self.attempts, self.base = attempts, base
        self._retryable = retryable
        self._on_wait, self._on_failure = on_wait, on_failure
        self._cm: AbstractContextManager[Readable] | None = None
        self._f: Readable | None = None

    def _read_once(self, n: int) -> bytes:
        try:
            if self._f is None:
                cm = self.open_at(self.offset)
                self._f = cm.__enter__()
                self._cm = cm
            data = self._f.read(n)
            if not data:
                raise EarlyEnd(f"connection ended at byte {self.offset} of {self.size}")
            return data
        except BaseException as e:
            self.close()
            if self._on_failure is not None:
                self._on_failure(e)
            raise

    def read(self, n: int = -1) -> bytes:
        remaining = self.size - self.offset
        if remaining <= 0:
            return b""
        n = remaining if n < 0 else min(n, remaining)
        data = retry.call(
            lambda: self._read_once(n),
            attempts=self.attempts,
            retryable=lambda e: isinstance(e, EarlyEnd) or self._retryable(e),
            on_wait=self._on_wait,
            base=self.base,
        )
        self.offset += len(data)
        self.fetched += len(data)
        return data

    def close(self) -> None:
        cm, self._cm, self._f = self._cm, None, None
        if cm is not None:
            with contextlib.suppress(Exception):
                cm.__exit__(None, None, None)

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
