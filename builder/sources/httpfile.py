"""A source file streamed over HTTP (Hugging Face Hub, MLflow artifacts).

The core's resumable range reader (:class:`modelcar.http.rangereader.RangeReader`)
with what a source adds: ``open_at(offset)`` sends the source's own request (its
auth and URL), and the answer's status decides: 200/206 stream (a 200 to a range
request is read past the bytes we have), 404 means the file vanished, 429/5xx wait
what ``Retry-After`` says. All waiting is the core retry policy's; ``on_wait`` only
announces it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx

from modelcar.errors import ModelcarError, SourceFileError, SourceStalled
from modelcar.http import retry
from modelcar.http.body import DEFAULT_STALL_RULE, BodyReader, StallRule, read_error_body
from modelcar.http.rangereader import EarlyEnd, RangeReader, transient

try:  # huggingface_hub 2.x talks through httpx2
    import httpx2

    HTTP_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, httpx2.HTTPError)
except ImportError:  # pragma: no cover
    HTTP_ERRORS = (httpx.HTTPError,)

ATTEMPTS = 6
_DOWNLOAD_FAILED: tuple[type[Exception], ...] = (EarlyEnd, SourceStalled, OSError, *HTTP_ERRORS)
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
Announce = Callable[[float, int, str], None]

T = TypeVar("T")


def retry_later(response: Any, error: ModelcarError) -> retry.RetryLater | None:
    """For a 429 or 5xx answer: try again after its Retry-After (else back off)."""
    if response is None or response.status_code not in RETRYABLE_STATUS:
        return None
    return retry.RetryLater(retry.retry_after(response.headers), error)


def call(fn: Callable[[], T], what: str, announce: Announce, attempts: int = ATTEMPTS) -> T:
    """Run one source request under the retry policy: only ``RetryLater`` is retried."""
    return retry.call(
        fn,
        attempts=attempts,
        retryable=lambda e: False,
        on_wait=lambda seconds, attempt, e: announce(seconds, attempt, what),
    )


def _network(error: BaseException) -> bool:
    return transient(error) or isinstance(error, HTTP_ERRORS)


class HttpFile(RangeReader):
    def __init__(
        self,
        open_at: Callable[[int], Any],
        size: int,
        what: str,
        on_wait: Announce,
        stall: StallRule | None = DEFAULT_STALL_RULE,
    ):
        self._send, self.what, self.stall = open_at, what, stall
        super().__init__(
            self._open,
            size,
            attempts=ATTEMPTS,
            retryable=_network,
            on_wait=lambda seconds, attempt, e: on_wait(seconds, attempt, what),
        )

    @contextmanager
    def _open(self, offset: int) -> Iterator[BodyReader]:
        try:
            response = self._send(offset)
        except HTTP_ERRORS as e:
            error = SourceFileError(f"cannot download ({type(e).__name__})", subject=self.what)
            raise retry.RetryLater(None, error) from None
        try:
            if response.status_code in (200, 206):
                body = BodyReader(response, what=self.what, stall=self.stall)
                skip = offset if response.status_code == 200 else 0
                while skip:  # the server ignored the range: read past what we have
                    block = body.read(min(skip, 1 << 20))
                    if not block:
                        raise EarlyEnd("stream ended early")
                    skip -= len(block)
                yield body
                return
            read_error_body(response)
            if response.status_code == 404:
                raise SourceFileError("file vanished from the source", subject=self.what)
            hint = "rate limited; try again later" if response.status_code == 429 else None
            error = SourceFileError(
                f"the source answered HTTP {response.status_code}", subject=self.what, hint=hint
            )
            raise retry_later(response, error) or error
        finally:
            response.close()

    def read(self, n: int = -1) -> bytes:
        try:
            return super().read(n)
        except _DOWNLOAD_FAILED as e:
            reason = e.message if isinstance(e, SourceStalled) else type(e).__name__
            raise SourceFileError(f"download kept failing ({reason})", subject=self.what) from None
