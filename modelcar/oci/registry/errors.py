"""Turn registry answers into modelcar errors, and say which are worth retrying.

429 and 5xx are retried under the project's one policy (:mod:`modelcar.http.retry`:
backoff with jitter, ``Retry-After`` honoured); dropped connections likewise. A
registry that refuses the connection outright is retried briefly (it may be
restarting), then reported as unreachable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import httpx

from modelcar.errors import (
    AccessDenied,
    AuthenticationFailed,
    BlobTooLarge,
    NotFound,
    RegistryError,
    RegistryUnreachable,
    TransientError,
    TransientRegistryError,
)
from modelcar.http import retry

log = logging.getLogger("modelcar.registry")
T = TypeVar("T")
UNREACHABLE_ATTEMPTS = 3


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
        err = TransientRegistryError(
            f"registry answered HTTP {code}" + (f" ({detail})" if detail else ""),
            subject=what,
            retry_after=retry.retry_after(response.headers),
        )
        err.status = code
        raise err
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
    return isinstance(exc, TransientError | RegistryUnreachable)


def _attempts_for(attempts: int) -> Callable[[BaseException], int]:
    # an unreachable host gets a few tries at most; a source with one try gets one
    few = min(UNREACHABLE_ATTEMPTS, attempts)
    return lambda e: few if isinstance(e, RegistryUnreachable) else attempts


def _log_retry(seconds: float, attempt: int, error: BaseException) -> None:
    log.warning("retrying in %.1fs after: %s", seconds, error)


def with_retries(fn: Callable[[], T], attempts: int) -> T:
    """Call ``fn`` until it succeeds, a non-transient error occurs, or attempts run out
    (the project's one policy: :func:`modelcar.http.retry.call`)."""
    return retry.call(
        fn,
        attempts=attempts,
        retryable=_retryable,
        attempts_for=_attempts_for(attempts),
        on_wait=_log_retry,
    )
