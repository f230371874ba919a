"""Turn HTTP outcomes into modelcar errors, and retry the transient ones (tenacity).

429 and 5xx are retried with exponential backoff and jitter, honouring
``Retry-After``; dropped connections likewise. A registry that refuses the
connection outright is retried briefly (it may be restarting), then reported
as unreachable.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception

from modelcar.errors import (
    AccessDenied,
    AuthenticationFailed,
    BlobTooLarge,
    NotFound,
    RegistryError,
    RegistryUnreachable,
    TransientRegistryError,
)

log = logging.getLogger("modelcar.registry")
T = TypeVar("T")
MAX_RETRY_AFTER = 120.0
UNREACHABLE_ATTEMPTS = 3


def retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _registry_message(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        if errors:
            e = errors[0]
            return f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
    except (ValueError, AttributeError):
        pass
    return ""


def check(response: httpx.Response, what: str) -> httpx.Response:
    """Raise the modelcar error for a failed response; return it otherwise."""
    code = response.status_code
    if code < 400:
        return response
    detail = _registry_message(response)
    if code == 401:
        raise AuthenticationFailed("registry rejected the credentials", subject=what)
    if code == 403:
        raise AccessDenied("registry denied access", subject=what)
    if code == 404:
        raise NotFound("not found in registry", subject=what)
    if code == 413:
        raise BlobTooLarge("registry refused the blob as too large", subject=what)
    if code == 429 or code >= 500:
        raise TransientRegistryError(
            f"registry answered HTTP {code}" + (f" ({detail})" if detail else ""),
            subject=what,
            retry_after=retry_after(response.headers),
        )
    raise RegistryError(
        f"registry answered HTTP {code}" + (f" ({detail})" if detail else ""), subject=what
    )


def translate_transport(exc: httpx.HTTPError, host: str) -> RegistryError:
    """Map an httpx transport error to a modelcar error."""
    text = str(exc)
    if isinstance(exc, httpx.ConnectError):
        if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
            return RegistryUnreachable(
                "registry does not speak TLS",
                subject=host,
                hint="pass --plain-http for an HTTP registry",
            )
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return RegistryUnreachable(
                "registry's TLS certificate is not trusted",
                subject=host,
                hint="pass --ca-file with its CA, or --insecure",
            )
        return RegistryUnreachable("cannot connect to registry", subject=host)
    if isinstance(exc, httpx.TimeoutException):
        return TransientRegistryError(f"registry timed out ({type(exc).__name__})", subject=host)
    return TransientRegistryError(
        f"connection to registry failed ({type(exc).__name__})", subject=host
    )


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransientRegistryError | RegistryUnreachable)


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    hinted = getattr(exc, "retry_after", None)
    if hinted is not None:
        return min(hinted, MAX_RETRY_AFTER)
    if isinstance(exc, RegistryUnreachable):
        return 0.3 * state.attempt_number
    return min(30.0, 0.5 * 2 ** (state.attempt_number - 1)) * (0.5 + random.random() / 2)


def _stop_after(attempts: int) -> Callable[[RetryCallState], bool]:
    def stop(state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        limit = UNREACHABLE_ATTEMPTS if isinstance(exc, RegistryUnreachable) else attempts
        return state.attempt_number >= limit

    return stop


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0
    log.warning("retrying in %.1fs after: %s", wait, exc)


def with_retries(fn: Callable[[], T], attempts: int) -> T:
    """Call ``fn`` until it succeeds, a non-transient error occurs, or attempts run out."""
    for attempt in Retrying(
        retry=retry_if_exception(_retryable),
        stop=_stop_after(attempts),
        wait=_wait,
        before_sleep=_log_retry,
        reraise=True,
    ):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # pragma: no cover
