"""The disk budget: evict the least recently used models that no policy assigns.

The budget is ``--max-bytes`` or ``--max-percent`` of the filesystem (and never
more than what is free plus what the cache holds). Above the high watermark,
models are evicted until usage is under the low one; assigned models never are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.errors import DiskFull

log = logging.getLogger("modelcar.cache")


class InsufficientSpace(DiskFull):
    default_hint = "raise the budget, free disk, or assign fewer models to this node"


@dataclass
class Budget:
    max_bytes: int | None = None
    max_percent: float | None = None
    high: float = 0.95
    low: float = 0.85

    def limit(self, cache: CacheDir, used: int) -> int:
        capacity, free = cache.filesystem()
        limits = [used + free]
        if self.max_bytes is not None:
            limits.append(self.max_bytes)
        if self.max_percent is not None:
            limits.append(int(capacity * self.max_percent / 100))
        return min(limits)


class Evictor:
    def __init__(
        self,
        cache: CacheDir,
        budget: Budget,
        assigned: Callable[[], set[str]],
        on_evict: Callable[[str, int], None] | None = None,
    ):
        self.cache = cache
        self.budget = budget
        self.assigned = assigned
        self.on_evict = on_evict

    def used(self) -> int:
        """Bytes held by published models, pulls in progress, kept blobs and quarantine."""
        return (
            self.cache.quarantined_bytes()
            + self.cache.blob_bytes()
            + sum(
                r.size
                for r in self.cache.db.all()
                if r.state in ("ready", "pulling", "pending")
                and (r.state != "ready" or self.cache.is_published(r.digest))
            )
        )

    def candidates(self, keep: set[str]) -> list[tuple[str, int]]:
        """Ready, unassigned models, least recently used first."""
        records = [
            r
            for r in self.cache.db.all()
            if r.state == "ready" and r.digest not in keep and self.cache.is_published(r.digest)
        ]
        return [(r.digest, r.size) for r in sorted(records, key=lambda r: r.last_used)]

    def evict(self, digest: str, size: int, why: str) -> None:
        self.cache.remove_model(digest)
        self.cache.db.set(digest, state="evicted", bytes_done=0, error=None)
        log.info("evicted %s (%d bytes): %s", digest[:19], size, why)
        if self.on_evict:
            self.on_evict(digest, size)

    def make_room(self, digest: str, need: int) -> None:
        """Before pulling ``digest``: evict unassigned models, or refuse if it cannot fit."""
        keep = self.assigned() | {digest}
        used = self.used()
        if (record := self.cache.db.get(digest)) and record.state in ("pulling", "pending"):
            used -= record.size  # its partial bytes are counted in ``need``
        limit = self.budget.limit(self.cache, used)
        if used + need <= limit * self.budget.high:
            return
        if self.cache.drop_quarantined(keep=0):  # kept for inspection, but not over models
            log.info("dropped quarantined models to make room for %s", digest[:19])
            return self.make_room(digest, need)
        target = limit * self.budget.low
        for victim, size in self.candidates(keep):
            if used + need <= target:
                break
            self.evict(victim, size, f"making room for {digest[:19]}")
            used -= size
            limit = self.budget.limit(self.cache, used)
        if used + need > limit:
            raise InsufficientSpace(
                f"insufficient space: the model needs {need} bytes, the budget is {limit} "
                f"and assigned or in-use models hold {used}",
                subject=digest,
            )

    def collect(self) -> list[str]:
        """Periodic: above the high watermark, evict down to the low one."""
        used = self.used()
        limit = self.budget.limit(self.cache, used)
        evicted: list[str] = []
        if used <= limit * self.budget.high:
            return evicted
        for victim, size in self.candidates(self.assigned()):
            if used <= limit * self.budget.low:
                break
            self.evict(victim, size, "over the high watermark")
            evicted.append(victim)
            used -= size
        return evicted
