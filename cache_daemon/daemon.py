"""The loop: desired state -> pulls -> eviction -> scrub -> report, every interval."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field

from modelcar.cache_daemon.blobstream import RateLimiter
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.cri import RuntimeWarmer
from modelcar.cache_daemon.desired import ApiSource, StaticSource, Wanted
from modelcar.cache_daemon.evict import Budget, Evictor
from modelcar.cache_daemon.metrics import Metrics
from modelcar.cache_daemon.nodelabels import OURS, NodeLabeller
from modelcar.cache_daemon.pull import Puller, PullOptions, PullStopped
from modelcar.cache_daemon.scrub import scrub
from modelcar.contract import wire as wire
from modelcar.contract.client import ApiClient
from modelcar.errors import ModelcarError

log = logging.getLogger("modelcar.cache")


def event(what: str, **fields: object) -> None:
    """One structured line per state change."""
    log.info("%s", json.dumps({"event": what, **fields}, sort_keys=True))


@dataclass
class DaemonOptions:
    node: str
    labels: dict[str, str] = field(default_factory=dict)
    interval: float = 30.0
    pull: PullOptions = field(default_factory=PullOptions)
    budget: Budget = field(default_factory=Budget)
    scrub_every: float = 24 * 3600.0  # seconds between two scrubs of the same model
    scrub_rate: float | None = 100 << 20  # bytes per second


class Daemon:
    def __init__(
        self,
        cache: CacheDir,
        options: DaemonOptions,
        source: ApiSource | StaticSource,
        api: ApiClient | None = None,
        metrics: Metrics | None = None,
        labeller: NodeLabeller | None = None,
        warmer: RuntimeWarmer | None = None,
    ):
        self.cache = cache
        self.options = options
        self.source = source
        self.api = api
        self.metrics = metrics or Metrics()
        self.labeller = labeller
        self.warmer = warmer
        self._warmed: set[str] = set()
        self.wanted: list[Wanted] = []
        self._assigned: set[str] = set()
        self.evictor = Evictor(cache, options.budget, lambda: self._assigned, self._evicted)
        self._stop = threading.Event()
        self.puller = Puller(
            cache, options.pull, make_room=self.evictor.make_room,
            on_progress=lambda d, done, total: self._maybe_report(), metrics=self.metrics,
            stop=self._stop,
        )  # fmt: skip
        self._scrub_limiter = RateLimiter(options.scrub_rate)
        self._scrubbed: dict[str, float] = {}
        self._last_report = 0.0

    # --- the loop ----------------------------------------------------------------

    def run(self, once: bool = False) -> None:
        while not self._stop.is_set():
            self.run_once()
            if once:
                return
            self._stop.wait(self.options.interval)

    def stop(self) -> None:
        self._stop.set()

    def ready(self) -> bool:
        return all(self.cache.is_published(w.digest) for w in self.wanted)

    def run_once(self) -> None:
        if self.labeller and not self.options.labels and isinstance(self.source, ApiSource):
            # in a cluster, policies select on the Node object's own labels
            labels = self.labeller.node_labels()
            if labels is not None:
                self.source.labels = {k: v for k, v in labels.items() if not k.startswith(OURS)}
        try:
            self.wanted = self.source.desired()
        except ModelcarError as e:
            log.error("desired state unavailable: %s", e.one_line())
            self.report()
            return
        self._assigned = {w.digest for w in self.wanted}
        self._drop_stale_staging()
        for w in self.wanted:
            if self._stop.is_set():
                return
            self._ensure(w)
        for digest in self.evictor.collect():
            event("evicted", digest=digest)
        self._scrub_one()
        self._update_gauges()
        if self.labeller:
            self.labeller.sync(set(self.cache.published()))
        self.report()

    def _ensure(self, w: Wanted) -> None:
        db = self.cache.db
        if self.puller.present(w.digest):
            db.set(w.digest, image=w.image, state="ready", error=None, used=True)
            self._warm(w)
            return
        event("pulling", digest=w.digest, image=w.image, model=w.label)
        self.report()
        try:
            result = self.puller.pull(w.image)
        except PullStopped:
            event("stopped", digest=w.digest, model=w.label)
            return
        except ModelcarError as e:
            event("failed", digest=w.digest, model=w.label, error=e.one_line())
            return
        event(
            "ready", digest=w.digest, model=w.label, seconds=round(result.seconds, 2),
            fetched=result.bytes_fetched,
        )  # fmt: skip
        self._warm(w)
        self.report()

    def _warm(self, w: Wanted) -> None:
        """With --warm-cri: the runtime pulls the image too, and pins it (once per process)."""
        if self.warmer is None or w.digest in self._warmed or w.image.startswith("oci:"):
            return
        try:
            self.warmer.warm(w.image)
        except ModelcarError as e:
            event("warm-failed", digest=w.digest, error=e.one_line())
            return
        self._warmed.add(w.digest)
        event("warmed", digest=w.digest, image=w.image)

    def _drop_stale_staging(self) -> None:
        """Partial pulls of models no longer wanted are removed; wanted ones resume."""
        for digest in self.cache.staged():
            if digest not in self._assigned:
                self.cache.remove_staging(digest)
                self.puller.drop_journals(digest)
                self.cache.db.clear_layers(digest)
                if (r := self.cache.db.get(digest)) and r.state in ("pulling", "pending"):
                    self.cache.db.forget(digest)

    def _scrub_one(self) -> None:
        now = time.time()
        for digest in self.cache.published():
            if now - self._scrubbed.get(digest, 0.0) < self.options.scrub_every:
                continue
            self._scrubbed[digest] = now
            problems = scrub(self.cache, digest, self._scrub_limiter)
            if problems:
                self.metrics.verify_failed()
                event("quarantined", digest=digest, problem=problems[0])
                wanted = next((w for w in self.wanted if w.digest == digest), None)
                if wanted:
                    self._ensure(wanted)  # pull it again, now
            return  # one model per pass: scrubbing never starves pulls

    def _evicted(self, digest: str, size: int) -> None:
        self.metrics.evictions.inc()
        event("evicted", digest=digest, bytes=size)

    def _update_gauges(self) -> None:
        records = self.cache.db.all()
        self.metrics.cache_bytes.set(self.evictor.used())
        for state in ("pending", "pulling", "ready", "failed", "evicted"):
            self.metrics.models.labels(state).set(sum(r.state == state for r in records))

    # --- reporting ---------------------------------------------------------------

    def status(self) -> wire.NodeStatusPut:
        capacity, _free = self.cache.filesystem()
        used = self.evictor.used()
        models = []
        for r in self.cache.db.all():
            if r.state == "evicted" and r.digest not in self._assigned:
                continue
            state = r.state
            if state == "ready" and not self.cache.is_published(r.digest):
                state = "evicted"
            models.append(
                wire.NodeModelStatus(
                    digest=r.digest,
                    state=state,
                    bytes_done=min(r.bytes_done, r.size),
                    bytes_total=r.size,
                    error=r.error[:2000] if r.error else None,
                )
            )
        for w in self.wanted:
            if not any(m.digest == w.digest for m in models):
                models.append(wire.NodeModelStatus(digest=w.digest, state="pending"))
        return wire.NodeStatusPut(
            models=models,
            labels=self.source.labels
            if isinstance(self.source, ApiSource)
            else self.options.labels,
            cache_root=str(self.cache.root),
            disk=wire.DiskUsage(
                used_bytes=used,
                capacity_bytes=capacity,
                budget_bytes=self.options.budget.limit(self.cache, used),
            ),
        )

    def _maybe_report(self) -> None:
        if time.monotonic() - self._last_report > 5.0:
            self.report()

    def report(self) -> None:
        if self.api is None:
            return
        self._last_report = time.monotonic()
        try:
            self.api.put_node_status(self.options.node, self.status())
        except ModelcarError as e:
            log.warning("status report failed: %s", e.one_line())
