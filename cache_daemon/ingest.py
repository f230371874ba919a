"""One layer into staging: what containerd's content store calls an ingest.

A :class:`Job` is one pull in progress: what all its layers share (the cache, the
chain of sources, the limiter, the progress, the metrics, and the two ways to end
early: the daemon stopping, or another layer failing). Each layer is ingested by one
object here, resumable at an offset and committed only with the expected digest:

* :class:`LayerIngest`, a modelcar layer: HTTP -> layer sha256 -> safe tar reader ->
  file sha256 -> file in ``staging/``, with a journal of every byte that is not file
  content, so a crash resumes mid-layer (see ``journal.py``);
* :func:`unpack_part`, a layer of another tool's image (see ``modelcar.format.unpack``),
  resumable only at a raw layer's file size.

A layer that fails its digest with bytes from a peer or mirror drops those sources for
that layer and is fetched again from the rest (:func:`dropping_bad_sources`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from modelcar.cache_daemon.blobstream import BlobStream, RateLimiter, SourcesMissed
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.journal import LayerJournal, Replay
from modelcar.cache_daemon.pullmetrics import PullMetrics
from modelcar.cache_daemon.served import Served
from modelcar.cache_daemon.sources import BlobSource
from modelcar.cache_daemon.verified import Board
from modelcar.errors import (
    DigestMismatch,
    ImageFormatError,
    LayerCancelled,
    ModelcarError,
    PullStopped,
)
from modelcar.format.chunks import ChunkIndex
from modelcar.format.fileindex import FileEntry
from modelcar.format.foreign import Part
from modelcar.format.layer import layer_layout, read_model_layer
from modelcar.format.unpack import Unpacked, unpack_layer
from modelcar.oci.manifest import Descriptor
from modelcar.oci.tarstream import TarLayout

log = logging.getLogger("modelcar.cache")

T = TypeVar("T")


@dataclass
class PullProgress:
    """Bytes of one pull, counted by its layer threads; read by whoever reports it
    (a snapshot: nothing here writes a database or calls a server)."""

    total: int
    done: int = 0
    fetched: int = 0
    resumed: int = 0
    #: Layer bytes by source of the chain (kept across a wave's tries in one process).
    by_source: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int = 0, *, fetched: int = 0, resumed: int = 0) -> None:
        with self._lock:
            self.done += n
            self.fetched += fetched
            self.resumed += resumed

    def sourced(self, blob: BlobStream) -> None:
        """A layer's stream is done: add what each source served."""
        with self._lock:
            for name, n in blob.by_source.items():
                self.by_source[name] = self.by_source.get(name, 0) + n

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.done, self.total


@dataclass
class Job:
    """One pull in progress: what every layer of it shares."""

    cache: CacheDir
    digest: str
    sources: list[BlobSource]
    progress: PullProgress
    metrics: PullMetrics
    limiter: RateLimiter
    attempts: int
    checkpoint_bytes: int
    #: Layers fetched at once.
    threads: int = 4
    #: Set when the daemon stops: layers end at their next read, their work kept.
    stop: threading.Event | None = None
    #: Set when one layer failed: the others end at their next read, their work kept.
    cancel: threading.Event = field(default_factory=threading.Event)
    #: Called with the bytes the pull's files now need (they may outgrow its layers).
    make_room: Callable[[str, int], None] | None = None
    #: Called when a layer is verified and served (the daemon reports it to the API at
    #: once, so peers can take it while this pull goes on); must not block.
    on_layer: Callable[[], None] | None = None
    #: Where verified chunks (or a v1 image's verified files) are marked for readers.
    board: Board | None = None
    #: The image's chunk index (contract v1.1), or None (v1: verified file by file).
    chunks: ChunkIndex | None = None

    @property
    def staging(self) -> Path:
        return self.cache.staging_dir(self.digest)

    def running(self, subject: str) -> None:
        """Raise if this pull should end now (stopping, or another layer failed)."""
        if self.stop is not None and self.stop.is_set():
            raise PullStopped("stopped mid-pull", subject=subject)
        if self.cancel.is_set():
            raise LayerCancelled("another layer failed", subject=subject)

    def blob(self, desc: Descriptor, sources: list[BlobSource], start: int = 0) -> BlobStream:
        return BlobStream(
            sources,
            desc.digest,
            desc.size,
            start=start,
            attempts=self.attempts,
            limiter=self.limiter,
        )

    def finish(self, blob: BlobStream) -> None:
        """A layer's stream is closed: count its bytes."""
        blob.close()
        self.progress.add(fetched=blob.fetched)
        self.progress.sourced(blob)
        self.metrics.from_sources(blob.by_source, blob.fallbacks)


class _BadBytes(Exception):
    """A layer failed its digest with bytes from these sources (not the origin)."""

    def __init__(self, sources: set[str], error: ModelcarError, digest: str):
        self.sources, self.error, self.digest = sources, error, digest


def suspects(blob: BlobStream, error: ModelcarError, sources: list[BlobSource]) -> None:
    """Raise :class:`_BadBytes` if sources other than the origin fed the failed layer."""
    origins = {s.name for s in sources if s.origin}
    if blame := blob.served - origins:
        raise _BadBytes(blame, error, blob.digest) from None


def dropping_bad_sources(job: Job, attempt: Callable[[list[BlobSource]], T]) -> T:
    """Run ``attempt`` over the chain; when a layer fails its digest with bytes from
    sources other than the origin, drop those for this layer and do it again."""
    dropped: set[str] = set()
    while True:
        usable = [s for s in job.sources if s.name not in dropped]
        try:
            return attempt(usable)
        except _BadBytes as bad:
            for name in sorted(bad.sources):
                job.metrics.bad_bytes(name)
                store = next((s.store for s in job.sources if s.name == name), None)
                distrust = getattr(store, "distrust", None)
                if distrust is not None and distrust(bad.digest):
                    continue  # the nodes source drops the peers that sent them, not itself
                log.warning(
                    "%s served bad bytes (%s); dropped for this layer", name, bad.error.one_line()
                )
                dropped.add(name)
            if not any(s.name not in dropped for s in job.sources):
                raise bad.error from None


def write_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def is_space(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


class _Tap:
    """Between the blob and the tar reader: replays the journaled prefix, then the
    network; journals every byte that is not file content."""

    def __init__(
        self,
        job: Job,
        replay: Replay,
        blob: BlobStream,
        journal: LayerJournal,
        layout: TarLayout,
    ):
        self.job, self.replay, self.blob, self.journal = job, replay, blob, journal
        self.pos = 0
        self.body_left = 0
        self.layout = layout
        #: every byte so far that is not file content is the one modelcar build writes
        self.canonical = True

    def read(self, n: int = -1) -> bytes:
        if self.pos < self.replay.end:
            data = self.replay.read(n if n > 0 else 1 << 20)
        else:
            self.job.running(self.blob.digest)
            data = self.blob.read(n)
            if data:
                in_body = min(self.body_left, len(data))
                if in_body < len(data):
                    self.journal.raw(self.pos + in_body, data[in_body:])
        self.body_left = max(0, self.body_left - len(data))
        if self.canonical and data:
            self.canonical = self.layout.matches(self.pos, data)
        self.pos += len(data)
        return data


class _FileWriter:
    """One staged file. Skips the bytes a resumed layer already has on disk, and the
    chunks a reader may have been given already (a retried layer only hashes them).
    With a chunk index (v1.1) each chunk is checked as its last byte is written (one
    that differs ends the layer at once; together they stand for the file's sha256)
    and, with a board, marked for readers."""

    def __init__(self, ingest: LayerIngest, rel: str, entry: FileEntry):
        self.ingest, self.entry, self.rel = ingest, entry, rel
        job = ingest.job
        self.board = job.board
        self.chunks = job.chunks
        self.expected = self.chunks.digests(entry) if self.chunks is not None else []
        self.hasher = hashlib.sha256()
        pulling = self.board.get(job.digest) if self.board is not None else None
        self.guard = pulling.lock if pulling is not None else threading.Lock()
        tap = ingest.tap
        self.start = tap.pos  # the file's body starts here in the layer
        tap.body_left = entry.size
        path = ingest.job.staging / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ImageFormatError(
                "the file index puts a file where a directory must be", subject=rel
            ) from None
        if self.start >= tap.replay.end:
            ingest.journal.file_start(self.start, rel, entry.size)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(path, flags, 0o644)
        os.fchmod(self.fd, 0o755 if entry.mode & 0o111 else 0o644)
        self.pos = 0

    def write(self, data: bytes) -> int:
        n = len(data)
        ingest = self.ingest
        skip = max(0, min(n, ingest.tap.replay.end - (self.start + self.pos)))
        if skip < n:
            view = memoryview(data)[skip:]
            off = self.pos + skip
            while view:
                if self.chunks is None:
                    write_all(self.fd, view, off)
                    break
                # one chunk at a time; a verified one (by an earlier try or a fetch
                # ahead) stays as it is
                size = self.chunks.chunkSize
                take = min(len(view), size - off % size)
                with self.guard:
                    board = self.board
                    if board is None or not board.is_verified(
                        ingest.job.digest, self.rel, off // size
                    ):
                        write_all(self.fd, view[:take], off)
                view, off = view[take:], off + take
            ingest.since_checkpoint += n - skip
            if ingest.since_checkpoint >= ingest.job.checkpoint_bytes:
                ingest.journal.checkpoint(self.start + self.pos + n, self.fd)
                ingest.since_checkpoint = 0
        if self.chunks is not None:
            self._check(memoryview(data))
        self.pos += n
        return n

    def _check(self, data: memoryview) -> None:
        """Hash ``data`` (written at ``self.pos``); mark each chunk that ends here."""
        size, pos = self.chunks.chunkSize, self.pos  # type: ignore[union-attr]  # called with chunks only
        while data:
            take = min(len(data), size - pos % size)
            self.hasher.update(data[:take])
            data, pos = data[take:], pos + take
            if pos % size == 0 or pos == self.entry.size:
                i = (pos - 1) // size
                actual = self.hasher.hexdigest()
                self.hasher = hashlib.sha256()
                if i >= len(self.expected) or actual != self.expected[i]:
                    raise DigestMismatch(
                        f"chunk {i} differs from the chunk index (got sha256:{actual})",
                        subject=f"{self.ingest.desc.digest}: {self.rel}",
                    )
                if self.board is not None:
                    with self.guard:
                        self.board.verified(self.ingest.job.digest, self.rel, i, sequential=True)

    def close(self) -> None:
        try:
            if self.pos == self.entry.size:
                os.ftruncate(self.fd, self.entry.size)
                os.fsync(self.fd)
        finally:
            os.close(self.fd)


class LayerIngest:
    """One modelcar layer into staging, resumed at its journal's checkpoint and
    committed (recorded done, journal gone) only when its digest checks out."""

    def __init__(self, job: Job, desc: Descriptor, files: dict[str, FileEntry]):
        self.job, self.desc, self.files = job, desc, files
        self.journal = LayerJournal(job.cache.layer_journal(job.digest, desc.digest), job.staging)
        self.since_checkpoint = 0
        self.tap: _Tap
        self.own = sorted(
            (f for f in files.values() if f.layer == desc.digest), key=lambda f: f.path
        )

    def run(self) -> None:
        dropping_bad_sources(self.job, self._from)
        self.job.cache.db.layer_done(self.job.digest, self.desc.digest)
        self.journal.remove()
        if self.tap.canonical and self.tap.pos == self.desc.size:
            # its files verified and every other byte the builder's: served from them
            Served(self.job.cache).layer(
                self.job.digest, self.desc.digest, self.desc.size, self.desc.mediaType, self.own
            )
            if self.job.on_layer:
                self.job.on_layer()

    def _from(self, sources: list[BlobSource]) -> None:
        job, journal = self.job, self.journal
        start = journal.load()
        journal.open()
        blob = job.blob(self.desc, sources, start)
        replay = journal.replay()
        self.tap = _Tap(job, replay, blob, journal, layer_layout(self.own))
        job.progress.add(resumed=start)
        counted = 0

        def on_bytes(n: int) -> None:
            nonlocal counted
            counted += n
            job.progress.add(n)

        try:
            board = job.board
            read_model_layer(
                self.tap,
                self.desc.digest,
                self.files,
                sink=lambda rel, entry: _FileWriter(self, rel, entry),
                on_bytes=on_bytes,
                on_file=(
                    (lambda rel: board.verified(job.digest, rel, 0))
                    if board is not None and job.chunks is None
                    else None
                ),
                sink_checks=job.chunks is not None,  # each chunk, against its digest
            )
        except (DigestMismatch, ImageFormatError) as e:
            journal.remove()  # what was staged for this layer cannot be trusted
            job.metrics.verify_failed()
            job.progress.add(-counted)
            suspects(blob, e, sources)
            raise
        except OSError as e:
            if start and not is_space(e):  # a broken journal: next time from zero
                journal.remove()
            raise
        finally:
            replay.close()
            job.finish(blob)
            journal.close()
        log.info("layer %s verified (%d bytes fetched)", self.desc.digest[:19], blob.fetched)


class _Counted:
    """A foreign layer's fetched bytes into the progress; ends when the job does."""

    def __init__(self, job: Job, raw: BlobStream):
        self.job, self.raw = job, raw
        self.n = 0

    def read(self, n: int = -1) -> bytes:
        self.job.running(self.raw.digest)
        data = self.raw.read(n)
        self.n += len(data)
        self.job.progress.add(len(data))
        return data


def unpack_part(
    job: Job,
    part: Part,
    claim: Callable[[str], None] | None,
    on_bytes: Callable[[int], None] | None,
) -> Unpacked:
    """One layer of another tool's image, applied under staging (a raw layer goes on
    from its file's size); what it did."""

    def attempt(sources: list[BlobSource]) -> Unpacked:
        resume = 0
        if part.raw_path is not None:  # a raw layer is its file: go on from its size
            have = file_size(job.staging / part.raw_path)
            resume = have if 0 < have <= part.layer.size else 0
        blob = job.blob(part.layer, sources, resume)
        job.progress.add(resumed=resume)
        counted = _Counted(job, blob)
        try:
            return unpack_layer(
                counted, part, job.staging, claim=claim, resume=resume, on_bytes=on_bytes
            )
        except (DigestMismatch, ImageFormatError) as e:
            job.metrics.verify_failed()
            job.progress.add(-counted.n)
            if part.raw_path is not None:
                (job.staging / part.raw_path).unlink(missing_ok=True)
            suspects(blob, e, sources)
            raise
        finally:
            job.finish(blob)

    return dropping_bad_sources(job, attempt)


def file_size(path: Path) -> int:
    """A regular file's size; -1 for anything else or nothing."""
    try:
        st = path.lstat()
    except OSError:
        return -1
    return st.st_size if path.is_file() and not path.is_symlink() else -1


#: A layer no source holds yet is asked again after this many seconds while the pull's
#: other layers are still coming in (their peers may finish it meanwhile).
MISS_RETRY_SECONDS = 2.0


def run_all(
    jobs: int,
    tasks: list[Callable[[], T]],
    cancel: threading.Event,
    *,
    miss_retry: float = MISS_RETRY_SECONDS,
) -> list[T]:
    """Run ``tasks`` on ``jobs`` threads; the first error sets ``cancel`` (the others
    end at their next read, tasks not started never start) and is raised once the
    threads are done (errgroup's rule). A layer no source holds (``SourcesMissed``, a
    wave's peer-only try) ends only itself: it is asked again every ``miss_retry``
    seconds while other layers are still being fetched (a peer may have it by then),
    and raised once nothing else is running."""
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    if not tasks:
        return []
    results: dict[int, T] = {}
    errors: list[BaseException] = []
    last_miss: SourcesMissed | None = None
    missed: dict[int, float] = {}  # task -> when to ask again
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        running: dict[Future[T], int] = {pool.submit(task): i for i, task in enumerate(tasks)}
        while running:
            now = time.monotonic()
            for i, at in list(missed.items()):
                if at <= now:
                    del missed[i]
                    running[pool.submit(tasks[i])] = i
            timeout = max(0.0, min(missed.values()) - now) if missed else None
            done, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
            for f in done:
                i = running.pop(f)
                e = f.exception()
                if e is None:
                    results[i] = f.result()
                elif isinstance(e, SourcesMissed):
                    last_miss = e
                    missed[i] = time.monotonic() + miss_retry
                else:
                    errors.append(e)
                    if not isinstance(e, LayerCancelled):
                        cancel.set()
            if cancel.is_set():  # errgroup: the rest end at their next read
                for f in running:
                    f.cancel()
                for f in running:
                    if not f.cancelled() and (e := f.exception()) is not None:
                        errors.append(e)
                break
    first = next((e for e in errors if not isinstance(e, SourcesMissed | LayerCancelled)), None)
    if first is not None:
        raise first
    if missed and last_miss is not None:  # nothing else running: a peer or a lease may
        raise last_miss
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(tasks))]
