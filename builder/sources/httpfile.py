"""A file streamed over HTTP that survives dropped connections and rate limits.

``open_at(offset)`` sends the request (a range request when ``offset`` > 0) and
returns the streamed response; this class reads it, retries 429/5xx after
``Retry-After``, and reopens at the byte it had reached when the stream breaks.
All waiting is ``with_retries``' (tenacity): ``on_wait`` only announces it.
Shared by the Hugging Face, MLflow and S3 sources.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from modelcar.errors import ModelcarError, SourceFileError
from modelcar.http.body import (
    DEFAULT_PROGRESS,
    BodyReader,
    Progress,
    SourceStalled,
    read_error_body,
)

try:  # huggingface_hub 2.x talks through httpx2
    import httpx2

    HTTP_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, httpx2.HTTPError)
except ImportError:  # pragma: no cover
    HTTP_ERRORS = (httpx.HTTPError,)

ATTEMPTS = 6
T = TypeVar("T")


class RetryLater(Exception):
    """Raised inside ``with_retries``: wait ``seconds`` (None: back off) and try again;
    after the last attempt, ``error`` is what the user sees."""

    def __init__(self, seconds: float | None, error: ModelcarError):
        super().__init__(error.one_line())
        self.seconds, self.error = seconds, error


def _wait_for(state: RetryCallState) -> float:
    e = state.outcome.exception() if state.outcome else None
    seconds = getattr(e, "seconds", None)
    return seconds if seconds is not None else min(0.5 * 2**state.attempt_number, 30.0)


def with_retries(
    fn: Callable[[], T],
    what: str,
    on_wait: Callable[[float, int, str], None],
    attempts: int = ATTEMPTS,
) -> T:
    """Call ``fn`` until it stops raising ``RetryLater`` (tenacity, honouring Retry-After)."""
    try:
        for attempt in Retrying(
            stop=stop_after_attempt(attempts),
            retry=retry_if_exception_type(RetryLater),
            wait=_wait_for,
            before_sleep=lambda s: on_wait(_wait_for(s), s.attempt_number, what),
            reraise=True,
        ):
            with attempt:
                return fn()
    except RetryLater as e:
        raise e.error from None
    raise AssertionError("unreachable")  # pragma: no cover


def retry_after(response: Any) -> float | None:
    """Seconds to wait before retrying this answer, or None if it is not retryable."""
    if response is None or response.status_code not in (429, 500, 502, 503, 504):
        return None
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return 1.0


class HttpFile:
    def __init__(
        self,
        open_at: Callable[[int], Any],
        size: int,
        what: str,
        on_wait: Callable[[float, int, str], None],
        progress: Progress | None = DEFAULT_PROGRESS,
    ):
        self.open_at, self.size, self.what, self.on_wait = open_at, size, what, on_wait
        self.progress = progress
        self.offset = 0
        self._response: Any = None
        self._chunks: Any = None
        self._buf = b""

    def _open(self) -> None:
        try:
            response = self.open_at(self.offset)
        except HTTP_ERRORS as e:
            error = SourceFileError(f"cannot download ({type(e).__name__})", subject=self.what)
            raise RetryLater(None, error) from None
        if response.status_code in (200, 206):
            skip = self.offset if self.offset and response.status_code == 200 else 0
            self._response = response
            self._chunks = BodyReader(response, what=self.what, progress=self.progress)
            while skip:  # the server ignored the range: read past what we have
                block = self._chunks.read(1 << 20)
                if not block:
                    raise EOFError("stream ended early")
                if len(block) > skip:
                    self._buf, skip = block[skip:], 0
                else:
                    skip -= len(block)
            return
        read_error_body(response)
        response.close()
        if response.status_code == 404:
            raise SourceFileError("file vanished from the source", subject=self.what)
        hint = "rate limited; try again later" if response.status_code == 429 else None
        error = SourceFileError(
            f"the source answered HTTP {response.status_code}", subject=self.what, hint=hint
        )
        wait = retry_after(response)
        if wait is None:
            raise error
        raise RetryLater(wait, error)

    def _fill(self) -> None:
        """The next block into the buffer; a broken stream is reopened at ``offset``."""
        try:
            if self._chunks is None:
                self._open()
            if not self._buf:
                self._buf = self._chunks.read(1 << 20)
            if not self._buf and self.offset < self.size:
                raise EOFError("stream ended early")
        except (*HTTP_ERRORS, EOFError, SourceStalled) as e:
            self._drop()
            reason = e.message if isinstance(e, SourceStalled) else type(e).__name__
            error = SourceFileError(f"download kept failing ({reason})", subject=self.what)
            raise RetryLater(None, error) from None

    def read(self, n: int = -1) -> bytes:
        if self.offset >= self.size and not self._buf:
            return b""
        if not self._buf:
            with_retries(self._fill, self.what, self.on_wait)
        take = len(self._buf) if n < 0 else n
        out, self._buf = self._buf[:take], self._buf[take:]
        self.offset += len(out)
        return out

    def _drop(self) -> None:
        if self._response is not None:
            self._response.close()
        self._response, self._chunks, self._buf = None, None, b""

    def close(self) -> None:
        self._drop()

    def __enter__(self) -> HttpFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
