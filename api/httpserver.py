"""The HTTP protocol both of the API's ports speak: uvicorn's h11, with a bound on the
time a client may take to send its request head.

uvicorn bounds only the idle time between requests (``timeout_keep_alive``); a client
that sends half a request head and then trickles (or nothing) holds a connection for as
long as it likes. This protocol closes a connection that has not sent a whole request
head within HEADER_TIMEOUT of connecting or of its last answer. A request whose head has
arrived is the application's to bound (the webhook bounds its bodies).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0


class HeaderTimeoutH11(H11Protocol):
    _timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(HEADER_TIMEOUT, self._expire)

    def _expire(self) -> None:
        waiting = self.cycle is None or self.cycle.response_complete  # no new head yet
        if waiting and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)


def uvicorn_options(forwarded_allow_ips: str) -> dict[str, Any]:
    """What every server of the API runs with (the CLI's and the tests' alike)."""
    return {
        "server_header": False,
        "proxy_headers": True,
        "forwarded_allow_ips": forwarded_allow_ips,
        "http": "modelcar.api.httpserver:HeaderTimeoutH11",
    }
