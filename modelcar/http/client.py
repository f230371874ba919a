"""The one place httpx clients are made.

Every client reads the socket ``READ_SIZE`` bytes at a time. httpcore asks for 64 KiB
per ``recv()``; for multi-GB layers that is most of the client's CPU, and 1 MiB reads
cut the system calls and the Python work per byte sixteenfold. The size is set on
each client made here (a network backend that reads more per call), never by
patching httpcore globally.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpcore
import httpx

READ_SIZE = 1 << 20


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, read_size: int):
        self._inner, self._read_size = inner, read_size

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max(max_bytes, self._read_size), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _Stream(
            self._inner.start_tls(ssl_context, server_hostname, timeout), self._read_size
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.SyncBackend):
    def __init__(self, read_size: int):
        self._read_size = read_size

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(super().connect_tcp(*args, **kwargs), self._read_size)

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(super().connect_unix_socket(*args, **kwargs), self._read_size)


def ssl_context(verify: ssl.SSLContext | bool | str) -> ssl.SSLContext:
    """``True``: the system CAs; ``False``: no verification; a path: that CA bundle."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context(verify=verify)


def transport(
    *,
    verify: ssl.SSLContext | bool | str = True,
    limits: httpx.Limits | None = None,
    read_size: int = READ_SIZE,
) -> httpx.HTTPTransport:
    """An HTTP/1.1 transport whose connections read ``read_size`` bytes per call."""
    limits = limits or httpx.Limits(max_connections=32, max_keepalive_connections=16)
    context = ssl_context(verify)
    t = httpx.HTTPTransport(verify=context, limits=limits)
    # The pool is rebuilt with our backend and the same settings; httpx offers no
    # public way to hand a network backend to its transport.
    t._pool = httpcore.ConnectionPool(
        ssl_context=context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_Backend(read_size),
    )
    return t


def new_client(
    *,
    verify: ssl.SSLContext | bool | str = True,
    timeout: float | httpx.Timeout = 60.0,
    limits: httpx.Limits | None = None,
    read_size: int = READ_SIZE,
    **kwargs: Any,
) -> httpx.Client:
    """An ``httpx.Client`` whose connections read ``read_size`` bytes per call."""
    return httpx.Client(
        transport=transport(verify=verify, limits=limits, read_size=read_size),
        timeout=timeout,
        **kwargs,
    )
