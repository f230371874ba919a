"""What a pull counts, as a protocol: the daemon's Prometheus metrics (``metrics.py``)
implement it; a pull without a daemon counts into :data:`NO_METRICS`. Kept apart from
``metrics.py`` so that a pull (and ``modelcar-cache ls``) needs no Prometheus client."""

from __future__ import annotations

from typing import Protocol


class PullMetrics(Protocol):
    """What a pull counts; :class:`Metrics` in the daemon, :data:`NO_METRICS` elsewhere."""

    def pulled(self, fetched: int, seconds: float) -> None: ...
    def from_sources(self, by_source: dict[str, int], fallbacks: dict[str, int]) -> None: ...
    def bad_bytes(self, source: str) -> None: ...
    def verify_failed(self) -> None: ...


class _NoMetrics:
    def pulled(self, fetched: int, seconds: float) -> None:
        pass

    def from_sources(self, by_source: dict[str, int], fallbacks: dict[str, int]) -> None:
        pass

    def bad_bytes(self, source: str) -> None:
        pass

    def verify_failed(self) -> None:
        pass


#: A pull that counts nothing (``modelcar-cache pull``, tests).
NO_METRICS: PullMetrics = _NoMetrics()
