"""The loop: desired state -> pulls -> eviction -> scrub -> report, every interval.

Beside it, the control socket's requests (``status``, ``gc``, ``pull``, ``verify``) run
here too, so the daemon stays the only writer of its cache dir.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from modelcar.cache_daemon.blobstream import PeersBusy, RateLimiter, SourcesMissed
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.control import Events
from modelcar.cache_daemon.cri import RuntimeWarmer
from modelcar.cache_daemon.desired import DesiredFromApi, DesiredFromFile, Wanted
from modelcar.cache_daemon.evict import Budget, Evictor
from modelcar.cache_daemon.ingest import MISS_RETRY_SECONDS
from modelcar.cache_daemon.metrics import Metrics
from modelcar.cache_daemon.nodelabels import OURS, NodeLabeller
from modelcar.cache_daemon.pull import (
    Check,
    Puller,
    PullOptions,
    PullResult,
    PullStopped,
    pinned,
    unexpected,
)
from modelcar.cache_daemon.scrub import scrub, verify_models
from modelcar.cache_daemon.served import Served
from modelcar.cache_daemon.verified import Board
from modelcar.contract import control as ctl
from modelcar.contract import wire as wire
from modelcar.contract.client import ApiClient
from modelcar.contract.control import PullView
from modelcar.errors import ControlError, ModelcarError, SignatureError, WaitingForLease
from modelcar.format.fileindex import FileIndex
from modelcar.format.foreign import ForeignImage
from modelcar.format.image import ModelImage
from modelcar.oci.manifest import first_error
from modelcar.oci.store import ImageStore
from modelcar.trust import policy
from modelcar.trust.policy import Rule

log = logging.getLogger("modelcar.cache")


#: How often the node's status is reported while pulls run (besides each state change).
REPORT_SECONDS = 5.0


def event(what: str, **fields: object) -> str:
    """One structured line per state change (logged; returned for the control socket)."""
    line = json.dumps({"event": what, "time": round(time.time(), 3), **fields}, sort_keys=True)
    log.info("%s", line)
    return line


@dataclass
class _Pulling:
    """A pull in progress, for ``status``: its bytes, and a rate over the last samples."""

    image: str
    model: str
    started: float
    done: int = 0
    total: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        self.done, self.total = done, total
        self.samples = [(t, d) for t, d in self.samples if now - t < 10.0] + [(now, done)]

    def view(self, digest: str, by_source: dict[str, int]) -> PullView:
        rate = 0.0
        if len(self.samples) > 1:
            (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
            rate = (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0
        left = max(0, self.total - self.done)
        return PullView(
            digest=digest,
            image=self.image,
            model=self.model,
            bytes_done=self.done,
            bytes_total=self.total,
            rate=round(rate),
            eta_seconds=round(left / rate) if rate > 0 else None,
            source=self.image.split("/", 1)[0],
            seconds=round(time.monotonic() - self.started, 1),
            by_source=by_source,
        )


@dataclass
class DaemonOptions:
    node: str
    labels: dict[str, str] = field(default_factory=dict)
    interval: float = 30.0
    pull: PullOptions = field(default_factory=PullOptions)
    budget: Budget = field(default_factory=Budget)
    scrub_every: float = 24 * 3600.0  # seconds between two scrubs of the same model
    scrub_rate: float | None = 100 << 20  # bytes per second
    #: Where peers reach this node's --serve endpoint (reported to the API), or None.
    serve_url: str | None = None


class Daemon:
    def __init__(
        self,
        cache: CacheDir,
        options: DaemonOptions,
        desired: DesiredFromApi | DesiredFromFile,
        api: ApiClient | None = None,
        metrics: Metrics | None = None,
        labeller: NodeLabeller | None = None,
        warmer: RuntimeWarmer | None = None,
        board: Board | None = None,
    ):
        self.cache = cache
        self.options = options
        self.desired = desired
        self.api = api
        self.metrics = metrics or Metrics()
        self.labeller = labeller
        self.warmer = warmer
        self._warmed: set[str] = set()
        self.wanted: list[Wanted] = []
        self._assigned: set[str] = set()
        self.evictor = Evictor(cache, options.budget, lambda: self._assigned, self._evicted)
        self._stop = threading.Event()
        # readiness means a pass has run: before it, `wanted` is empty and "all wanted
        # models published" would be true of a daemon that has not yet asked what to hold
        self._passed = threading.Event()
        self.events = Events()
        self._pulling: dict[str, _Pulling] = {}
        self._evict_lock = threading.Lock()  # the loop's make_room and a control gc
        self._pulling_lock = threading.Lock()  # one pull per digest: the loop's or a control
        self.puller = Puller(
            cache,
            options.pull,
            make_room=self._make_room,
            on_progress=self._progress,
            metrics=self.metrics,
            stop=self._stop,
            on_layer=self.report,  # peers learn of a verified layer at once
            board=board,  # streamed start: chunks readable as they verify
        )
        self._scrub_limiter = RateLimiter(options.scrub_rate)
        self._scrubbed: dict[str, float] = {}
        self._reporting = threading.Lock()
        self._report_wanted = threading.Event()
        self._stop_reporting = threading.Event()

    # --- the loop ----------------------------------------------------------------

    def run(self, once: bool = False) -> None:
        reporter = threading.Thread(target=self._reporter, name="reporter", daemon=True)
        reporter.start()
        try:
            self._loop(once)
        finally:
            self._stop_reporting.set()
            self._report_wanted.set()
            reporter.join(timeout=REPORT_SECONDS * 2)
            self._send_report()  # the last state, before the process ends

    def _loop(self, once: bool) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as e:  # one bad pass is logged and counted; the loop goes on
                log.error("the pass failed: %s", unexpected(e, self.options.node).one_line())
                self.metrics.failed(e)
            if once:
                return
            self._stop.wait(self.options.interval)

    def stop(self) -> None:
        self._stop.set()

    def _event(self, what: str, **fields: object) -> None:
        self.events.publish(event(what, **fields))

    def _make_room(self, digest: str, need: int) -> None:
        with self._evict_lock:
            self.evictor.make_room(digest, need)

    def _progress(self, digest: str, done: int, total: int) -> None:
        """A pull's bytes (from its watcher thread): noted for ``status`` and the next
        report; nothing here waits on the API."""
        if (p := self._pulling.get(digest)) is not None:
            p.update(done, total)

    def _reporter(self) -> None:
        """Reports go to the API from this thread alone: at once when asked (a state
        change), and every REPORT_SECONDS while pulls run. An API that hangs delays
        reports, never a pull or the loop."""
        while not self._stop_reporting.is_set():
            wanted = self._report_wanted.wait(REPORT_SECONDS)
            self._report_wanted.clear()
            if (wanted or self._pulling) and not self._stop_reporting.is_set():
                self._send_report()

    def assigned(self) -> set[str] | None:
        """The digests the last pass was asked to hold; None before the first pass."""
        return set(self._assigned) if self._passed.is_set() or self._assigned else None

    def ready(self) -> bool:
        """A pass has completed and every model it was asked for is published."""
        return self._passed.is_set() and all(self.cache.is_published(w.digest) for w in self.wanted)

    def run_once(self) -> None:
        if self.labeller and not self.options.labels and isinstance(self.desired, DesiredFromApi):
            # in a cluster, policies select on the Node object's own labels
            labels = self.labeller.node_labels()
            if labels is not None:
                self.desired.labels = {k: v for k, v in labels.items() if not k.startswith(OURS)}
        try:
            self.wanted = self.desired.desired()
        except ModelcarError as e:
            log.error("desired state unavailable: %s", e.one_line())
            self.report()
            self._passed.set()  # ready with what it holds: an API outage must not stall a rollout
            return
        self._assigned = {w.digest for w in self.wanted}
        self._drop_stale_staging()
        for w in self.wanted:
            if self._stop.is_set():
                return
            try:
                self._ensure(w)
            except Exception as e:  # never one model's error for the others: recorded, counted
                self._crashed(w, e)
        for digest in self.evictor.collect():
            self._event("evicted", digest=digest)
        self._scrub_one()
        self._update_gauges()
        if self.labeller:
            self.labeller.sync(set(self.cache.published()))
        self.report()
        self._passed.set()

    def _ensure(self, w: Wanted) -> None:
        if w.digest in self._pulling:
            return  # a control request is pulling it right now
        db = self.cache.db
        if self.puller.present(w.digest):
            db.set(w.digest, image=w.image, state="ready", error=None, used=True)
            self._warm(w)
            return
        self._event("pulling", digest=w.digest, image=w.image, model=w.label)
        self.report()
        try:
            result = self._pull(w.image, w.label, w.rules, w.rollout)
        except PullStopped:
            self._event("stopped", digest=w.digest, model=w.label)
            return
        except WaitingForLease as e:
            self._event("waiting", digest=w.digest, model=w.label, error=e.one_line())
            return
        except ModelcarError as e:
            if isinstance(e, SignatureError):
                self.metrics.refused()
            self.metrics.failed(e)
            self._event("failed", digest=w.digest, model=w.label, error=e.one_line())
            return
        self._event(
            "ready",
            digest=w.digest,
            model=w.label,
            seconds=round(result.seconds, 2),
            fetched=result.bytes_fetched,
        )
        self._warm(w)
        self.report()

    def _crashed(self, w: Wanted, e: Exception) -> None:
        err = unexpected(e, w.image)
        self.metrics.failed(err)
        try:
            self.cache.db.set(w.digest, image=w.image, state="failed", error=err.one_line())
        except Exception as db_error:  # e.g. the disk is full
            log.warning("could not record the failure: %s", db_error)
        self._event("failed", digest=w.digest, model=w.label, error=err.one_line())

    def _pull(
        self,
        image: str,
        label: str,
        rules: tuple[Rule, ...] = (),
        rollout: wire.RolloutRule | None = None,
    ) -> PullResult:
        ref = pinned(image)
        digest = ref.digest or ""
        with self._pulling_lock:
            if digest in self._pulling:
                raise ControlError("the daemon is pulling this model already", subject=image)
            self._pulling[digest] = _Pulling(image, label, time.monotonic())

        def verified(
            store: ImageStore, model: ModelImage | ForeignImage, files: FileIndex | None
        ) -> None:
            for note in policy.check(rules, store, ref, digest, lambda: files):
                log.warning("%s: %s", image, note)  # a policy that only reports
                self._event("unverified", digest=digest, model=label, error=note)

        check = verified if rules else None
        try:
            if rollout is None or self.api is None:
                return self.puller.pull(image, check)
            return self._pull_in_wave(image, digest, check, rollout)
        finally:
            self._pulling.pop(digest, None)

    def _pull_in_wave(
        self, image: str, digest: str, check: Check | None, rollout: wire.RolloutRule
    ) -> PullResult:
        """Peers first; the origin only with a lease; between the two, wait (bounded by
        the rollout's ``wave_timeout``) for a peer to hold the layers or a lease to free."""
        assert self.api is not None
        deadline = time.monotonic() + rollout.wave_timeout
        node = self.options.node
        while True:
            try:
                return self.puller.pull(image, check, origin=False)
            except SourcesMissed:
                pass  # no peer holds a layer yet: the origin, if a lease allows
            lease = self.api.take_lease(node, digest)
            if lease.granted:
                self._event("lease", digest=digest, holders=lease.holders, limit=lease.limit)
                try:
                    return self._pull_leased(image, check, deadline)
                finally:
                    try:
                        self.api.give_back_lease(node, digest)
                    except ModelcarError as e:  # it expires without reports anyway
                        log.warning("giving the lease back failed: %s", e.one_line())
            left = deadline - time.monotonic()
            wait = min(max(lease.retry_after, 0.2), self.options.interval, left)
            self.cache.db.set(digest, state="pending", error="waiting for peers or an origin lease")
            self.report()
            if wait <= 0 or self._stop.wait(wait):
                if self._stop.is_set():
                    raise PullStopped("stopped while waiting for an origin lease", subject=digest)
                raise WaitingForLease(
                    f"no origin lease within {rollout.wave_timeout}s "
                    f"({len(lease.holders)}/{lease.limit} held) and no peer holds the layers yet",
                    subject=image,
                    hint="the next pass asks again; see GET …/versions/N/rollout",
                )

    def _pull_leased(self, image: str, check: Check | None, deadline: float) -> PullResult:
        """With the lease: the origin for what no peer holds; a layer whose holders are
        all busy is waited for (the lease kept), up to the wave's deadline."""
        while True:
            try:
                return self.puller.pull(image, check)
            except PeersBusy:
                if time.monotonic() >= deadline or self._stop.wait(MISS_RETRY_SECONDS):
                    raise

    # --- the control socket ------------------------------------------------------

    def control(self, op: str, raw: dict[str, Any]) -> Any:
        """One control request (see control.py), run by the daemon itself; its result
        as JSON-ready data (the models of ``modelcar.contract.control``)."""
        kind = ctl.ARGS.get(op)
        if kind is None:
            raise ControlError(
                f"unknown control request {op!r}", hint="status, gc, pull, verify or events"
            )
        try:
            args = kind.model_validate(raw)
        except ValidationError as e:
            raise ControlError(f"a bad {op} request ({first_error(e)})") from None
        return (
            self._control(args).model_dump()
            if not isinstance(args, ctl.VerifyArgs)
            else [r.model_dump() for r in self._verify(args.digests, args.quarantine)]
        )

    def _control(self, args: BaseModel) -> BaseModel:
        if isinstance(args, ctl.StatusArgs):
            return self.live_status()
        if isinstance(args, ctl.GcArgs):
            budget = self.options.budget
            if args.max_bytes is not None or args.max_percent is not None:
                # a one-off budget: down to it, not between watermarks
                budget = Budget(
                    max_bytes=args.max_bytes, max_percent=args.max_percent, high=1.0, low=1.0
                )
            keep = set(args.keep)
            evictor = Evictor(self.cache, budget, lambda: self._assigned | keep, self._evicted)
            with self._evict_lock:
                evicted = evictor.collect()
            self._drop_stale_staging()
            self._update_gauges()
            self.report()
            return ctl.GcResult(evicted=evicted)
        if isinstance(args, ctl.PullArgs):
            ref = args.ref
            digest = pinned(ref).digest
            self._event("pulling", digest=digest, image=ref, model="(requested)")
            # an assigned model keeps its policies' checks when pulled by hand
            rules = next((w.rules for w in self.wanted if w.digest == digest), ())
            result = self._pull(ref, "(requested)", rules)
            self._event(
                "ready",
                digest=result.digest,
                model="(requested)",
                seconds=round(result.seconds, 2),
                fetched=result.bytes_fetched,
            )
            self.report()
            return result
        raise ControlError("events are streamed, not answered")

    def _verify(self, digests: list[str], quarantine: bool) -> list[ctl.VerifyResult]:
        results = verify_models(self.cache, digests, quarantine=quarantine)
        for r in results:
            if r.quarantined:
                self.metrics.verify_failed()
                self._event("quarantined", digest=r.digest, problem=r.problems[0])
        if any(r.quarantined for r in results):
            self.report()
        return results

    def live_status(self) -> ctl.LiveStatus:
        """What the daemon is doing now, for ``modelcar-cache status``."""
        capacity, _free = self.cache.filesystem()
        used = self.evictor.used()
        return ctl.LiveStatus(
            node=self.options.node,
            pid=os.getpid(),
            cache_dir=str(self.cache.root),
            pulls=[
                p.view(d, dict(self.puller.by_source.get(d, {})))
                for d, p in list(self._pulling.items())
            ],
            assigned=sorted(self._assigned),
            errors={r.digest: r.error for r in self.cache.db.all() if r.error},
            disk=ctl.DiskUse(
                used_bytes=used,
                capacity_bytes=capacity,
                budget_bytes=self.options.budget.limit(self.cache, used),
            ),
        )

    def _warm(self, w: Wanted) -> None:
        """With --warm-cri: the runtime pulls the image too, and pins it (once per process)."""
        if self.warmer is None or w.digest in self._warmed or w.image.startswith("oci:"):
            return
        try:
            self.warmer.warm(w.image)
        except ModelcarError as e:
            self._event("warm-failed", digest=w.digest, error=e.one_line())
            return
        self._warmed.add(w.digest)
        self._event("warmed", digest=w.digest, image=w.image)

    def _drop_stale_staging(self) -> None:
        """Partial pulls of models no longer wanted are removed; wanted ones resume."""
        for digest in self.cache.staged():
            if digest not in self._assigned and digest not in self._pulling:
                self.cache.remove_staging(digest)
                self.cache.drop_journals(digest)
                self.cache.db.clear_layers(digest)
                if (r := self.cache.db.get(digest)) and r.state in ("pulling", "pending"):
                    self.cache.db.forget(digest)

    def _scrub_one(self) -> None:
        now = time.time()
        for digest in self.cache.published():
            if now - self._scrubbed.get(digest, 0.0) < self.options.scrub_every:
                continue
            self._scrubbed[digest] = now
            problems = scrub(self.cache, digest, self._scrub_limiter).problems
            self.metrics.scrubs.labels("quarantined" if problems else "ok").inc()
            if problems:
                self.metrics.verify_failed()
                self._event("quarantined", digest=digest, problem=problems[0])
                wanted = next((w for w in self.wanted if w.digest == digest), None)
                if wanted:
                    self._ensure(wanted)  # pull it again, now
            return  # one model per pass: scrubbing never starves pulls

    def _evicted(self, digest: str, size: int) -> None:
        self.metrics.evictions.inc()
        self._event("evicted", digest=digest, bytes=size)

    def _update_gauges(self) -> None:
        records = self.cache.db.all()
        used = self.evictor.used()
        self.metrics.cache_bytes.set(used)
        self.metrics.budget_bytes.set(self.options.budget.limit(self.cache, used))
        for state in ("pending", "pulling", "ready", "failed", "evicted"):
            self.metrics.models.labels(state).set(sum(r.state == state for r in records))

    # --- reporting ---------------------------------------------------------------

    def node_report(self) -> wire.NodeStatusPut:
        """The node's status as the API takes it (``live_status`` is the control
        socket's view of what runs now)."""
        capacity, _free = self.cache.filesystem()
        used = self.evictor.used()
        served = Served(self.cache)
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
                    sources=dict(list(self.puller.by_source.get(r.digest, {}).items())[:32]),
                    blobs=served.held(r.digest)[:10000]
                    if self.options.serve_url and state in ("ready", "pulling", "pending")
                    else [],
                )
            )
        for w in self.wanted:
            if not any(m.digest == w.digest for m in models):
                models.append(wire.NodeModelStatus(digest=w.digest, state="pending"))
        return wire.NodeStatusPut(
            models=models,
            labels=self.desired.labels
            if isinstance(self.desired, DesiredFromApi)
            else self.options.labels,
            cache_root=str(self.cache.root),
            serve_url=self.options.serve_url,
            disk=wire.DiskUsage(
                used_bytes=used,
                capacity_bytes=capacity,
                budget_bytes=self.options.budget.limit(self.cache, used),
            ),
        )

    def report(self) -> None:
        """Ask for the node's status to be reported (by the reporter thread, at once)."""
        self._report_wanted.set()

    def _send_report(self) -> None:
        if self.api is None:
            return
        with self._reporting:  # one report at a time
            try:
                self.api.put_node_status(self.options.node, self.node_report())
            except ModelcarError as e:
                log.warning("status report failed: %s", e.one_line())
