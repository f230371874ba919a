"""Reading HTTP response bodies with two bounds: how many bytes, and how slowly.

Every body a modelcar client reads from the network goes through here:

* **A size cap.** A manifest, config, token answer, API answer or error body has a
  declared limit; bytes are counted as they arrive, so an endless (chunked) or huge
  body fails at the limit with one line naming it, instead of filling memory.
* **A minimum-progress rule** (like curl's ``--speed-limit``/``--speed-time``). Over
  every ``window`` seconds spent *waiting on the network*, at least
  ``min_speed × window`` bytes must arrive, else the source is stalled
  (:class:`SourceStalled`, a transient error: the caller moves to the next source and
  resumes at the same offset). Time the consumer spends elsewhere (writing, hashing,
  sleeping in a rate limiter) does not count, so a throttled pull is never "stalled".
  A connection that sends nothing at all is caught by the read timeout, which
  :func:`stall_timeout` sets to the same window.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from modelcar.errors import ResponseTooLarge, SourceStalled

#: The common registry limit for manifests (Distribution, containers/image, containerd).
MAX_MANIFEST_BYTES = 4 << 20
#: Image configs: containers/image (podman, CRI-O, skopeo) refuses configs over 4 MiB,
#: so the builder keeps ours under that; readers accept up to this, for older images.
MAX_CONFIG_BYTES = 8 << 20
MAX_CONFIG_WRITE_BYTES = 4 << 20
#: Token service and modelcar API answers.
MAX_TOKEN_BYTES = 1 << 20
MAX_API_BYTES = 32 << 20
#: Error bodies are read for their message only; the rest is dropped.
MAX_ERROR_BYTES = 64 << 10


@dataclass(frozen=True)
class StallRule:
    """The minimum-progress rule: ``min_speed`` bytes/s over each ``window`` seconds."""

    window: float = 30.0
    min_speed: int = 16 << 10

    @property
    def min_bytes(self) -> int:
        return int(self.min_speed * self.window)


DEFAULT_STALL_RULE = StallRule()


def stall_timeout(base: float, rule: StallRule | None) -> httpx.Timeout:
    """The request timeout: reads give up after the stall window (a silent peer)."""
    read = min(base, rule.window) if rule else base
    return httpx.Timeout(base, read=read, connect=min(base, 10.0))


class BodyReader:
    """``read(n)`` over a streamed response: at most ``n`` bytes of what has arrived,
    b"" at the end. Applies the size cap and the progress rule as bytes arrive."""

    def __init__(
        self,
        response: httpx.Response,
        *,
        what: str,
        limit: int | None = None,
        stall: StallRule | None = None,
    ):
        self._it: Iterator[bytes] = response.iter_raw()
        self._buf = memoryview(b"")
        self.what = what
        self.limit = limit
        self.stall = stall
        self.received = 0
        self._waited = 0.0
        self._window_bytes = 0

    def _next(self) -> bytes:
        started = time.monotonic()
        block = next(self._it, b"")
        self.received += len(block)
        if self.limit is not None and self.received > self.limit:
            raise ResponseTooLarge(
                f"answer is larger than the {human_limit(self.limit)} limit", subject=self.what
            )
        if self.stall is not None:
            self._waited += time.monotonic() - started
            self._window_bytes += len(block)
            if self._waited >= self.stall.window:
                if self._window_bytes < self.stall.min_bytes:
                    raise SourceStalled(
                        f"source stalled ({self._window_bytes} bytes in "
                        f"{self._waited:.0f}s of waiting, below "
                        f"{human_limit(self.stall.min_speed)}/s)",
                        subject=self.what,
                    )
                self._waited, self._window_bytes = 0.0, 0
        return block

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = [bytes(self._buf)]
            self._buf = memoryview(b"")
            while block := self._next():
                parts.append(block)
            return b"".join(parts)
        if not self._buf:
            block = self._next()
            if not block:
                return b""
            self._buf = memoryview(block)
        out, self._buf = self._buf[:n], self._buf[n:]
        return bytes(out)


def read_body(
    response: httpx.Response, limit: int, what: str, stall: StallRule | None = None
) -> bytes:
    """The whole body of a streamed response, refused past ``limit`` bytes."""
    return BodyReader(response, what=what, limit=limit, stall=stall).read()


def read_error_body(response: httpx.Response, limit: int = MAX_ERROR_BYTES) -> bytes:
    """The first ``limit`` bytes of a (streamed) error answer; the rest is not read."""
    out = b""
    for block in response.iter_raw():
        out += block
        if len(out) >= limit:
            break
    return out[:limit]


def human_limit(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"
