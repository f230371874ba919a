"""One retry policy for every HTTP client in the project (tenacity).

* :func:`retry_after` reads a ``Retry-After`` header: seconds or an HTTP-date.
* :func:`call` runs a function until it succeeds, raises an error that is not
  retryable, or runs out of attempts. The wait is what the error asks for
  (``retry_after`` on the exception) or else exponential backoff with jitter.
* :class:`RetryLater` lets code that is not about HTTP errors say "try again in N
  seconds; if you give up, this is what the user sees".
* ``on_wait(seconds, attempt, error)`` is the one progress hook: the CLIs print
  "retrying in N s" from it, the daemon logs it.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception

T = TypeVar("T")
#: The longest wait a server's Retry-After can ask of us.
MAX_RETRY_AFTER = 120.0
OnWait = Callable[[float, int, BaseException], None]


class RetryLater(Exception):
    """Retry after ``seconds`` (None: back off); after the last attempt ``error`` is
    raised in its place."""

    def __init__(self, seconds: float | None, error: Exception):
        super().__init__(str(error))
        self.retry_after, self.error = seconds, error


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (never negative), or None."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with jitter for the ``attempt``-th failure (1-based)."""
    return min(cap, base * 2.0 ** (attempt - 1)) * (0.5 + random.random() / 2)


def wait_for(error: BaseException | None, attempt: int, base: float = 0.5) -> float:
    hinted: float | None = getattr(error, "retry_after", None)
    if hinted is not None:
        return min(float(hinted), MAX_RETRY_AFTER)
    return backoff(attempt, base)


def call(
    fn: Callable[[], T],
    *,
    attempts: int,
    retryable: Callable[[BaseException], bool],
    on_wait: OnWait | None = None,
    attempts_for: Callable[[BaseException], int] | None = None,
    base: float = 0.5,
) -> T:
    """Call ``fn`` under the policy; ``attempts_for`` may lower the limit for some
    errors (a registry that refuses connections is given fewer tries)."""

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return wait_for(error, state.attempt_number, base)

    def stop(state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        limit = attempts_for(error) if attempts_for and error else attempts
        return state.attempt_number >= limit

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if on_wait and error is not None and state.next_action:
            on_wait(state.next_action.sleep, state.attempt_number, error)

    try:
        for attempt in Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, RetryLater) or retryable(e)),
            stop=stop,
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        ):
            with attempt:
                return fn()
    except RetryLater as e:
        raise e.error from None
    raise AssertionError("unreachable")  # pragma: no cover
