"""Pull a pinned modelcar into the cache: one pass from the socket to the final files.

manifest (sha256 = the pinned digest) -> config and file index -> each model
layer streamed: HTTP -> layer sha256 -> safe tar reader -> file sha256 -> file
in ``staging/``. Several layers at once. Then every file of the index present
with its size, fsynced, and one rename into ``models/``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from modelcar.cache_daemon.blobstream import BlobStream, RateLimiter, SourcesMissed
from modelcar.cache_daemon.cachedir import CacheDir, CacheVanished
from modelcar.cache_daemon.journal import LayerJournal, Replay
from modelcar.cache_daemon.sources import Source, SourceSpec, chain, open_sources
from modelcar.errors import (
    DigestMismatch,
    DiskFull,
    ImageFormatError,
    ModelcarError,
    SignatureError,
    UnsafeArchive,
    UsageError,
)
from modelcar.format.fileindex import FileEntry, FileIndex
from modelcar.format.foreign import FORMAT_NAMES, ForeignImage, Part, load_foreign
from modelcar.format.image import ModelImage, NotAModelcar, load_model_image
from modelcar.format.layer import read_model_layer
from modelcar.format.unpack import Unpacked, index_of, unpack_layer
from modelcar.oci.manifest import Descriptor
from modelcar.oci.reference import ImageRef, LayoutRef, parse_ref
from modelcar.oci.store import ImageStore, StoreOptions

log = logging.getLogger("modelcar.cache")

CHECKPOINT_BYTES = 64 << 20


class PullStopped(ModelcarError):
    """The daemon is stopping: the pull ends where it is, its journal kept to resume."""


class PullCrashed(ModelcarError):
    """An error no check foresaw (a bug, or a decoder's error not yet converted): the
    model fails with it, what was staged is dropped, and the daemon goes on."""

    default_hint = "a bug in modelcar-cache: please report it with the daemon's log"


def unexpected(e: BaseException, subject: str) -> PullCrashed:
    """``e`` as one line, its traceback in the log (debug) for the report."""
    log.debug("unexpected error pulling %s", subject, exc_info=e)
    text = " ".join(str(e).split())[:200]
    return PullCrashed(f"unexpected {type(e).__name__} ({text})", subject=subject)


#: A check of an image before its layers are pulled, given its file index (None for a
#: foreign image, whose index is known once unpacked: then it runs again with it,
#: before the model is published); raises to refuse it.
Check = Callable[[ImageStore, ModelImage | ForeignImage, FileIndex | None], None]


class PullOptions(BaseModel):
    jobs: int = 4
    max_rate: float | None = None  # bytes per second, all layers together
    mirrors: list[str] = []
    #: The chain before the origin (spegel, dragonfly, mirror); mirrors are added after.
    sources: list[SourceSpec] = []
    store: StoreOptions = StoreOptions()
    attempts: int = 6
    checkpoint_bytes: int = CHECKPOINT_BYTES

    model_config = {"arbitrary_types_allowed": True}


class PullResult(BaseModel):
    digest: str
    image: str
    path: str
    size: int
    files: int
    layers: int
    bytes_fetched: int
    bytes_resumed: int
    seconds: float
    #: Layer bytes by source of the chain (``origin``, ``spegel``, …) in this pull.
    by_source: dict[str, int] = {}


@dataclass
class _Progress:
    total: int
    done: int = 0
    fetched: int = 0
    resumed: int = 0
    on_change: Callable[[int, int], None] | None = None
    by_source: dict[str, int] = field(default_factory=dict)
    _last: float = field(default=0.0)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sourced(self, blob: BlobStream) -> None:
        """A layer's stream is done: add what each source served."""
        with self._lock:
            for name, n in blob.by_source.items():
                self.by_source[name] = self.by_source.get(name, 0) + n

    def add(self, n: int = 0, *, fetched: int = 0, resumed: int = 0) -> None:
        """Counts from several layer threads at once."""
        with self._lock:
            self.done += n
            self.fetched += fetched
            self.resumed += resumed
            now = time.monotonic()
            report = self.on_change and (now - self._last > 1.0 or self.done >= self.total)
            if report:
                self._last = now
        if report and self.on_change:
            self.on_change(self.done, self.total)


class _Reservation:
    """What a pull holds against the budget. A compressed layer's files take more than
    its bytes: as they outgrow the reservation it grows (by a quarter at least), and
    each growth makes room first, so a small layer cannot fill the disk."""

    def __init__(self, puller: Puller, digest: str, reserved: int, written: int = 0):
        self.puller, self.digest = puller, digest
        self.reserved, self.written = reserved, written
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.written += n
            if self.written <= self.reserved:
                return
            grown = max(self.written, self.reserved + self.reserved // 4)
            if self.puller.make_room:
                self.puller.make_room(self.digest, grown)
            self.puller.cache.db.set(self.digest, size=grown)
            self.reserved = grown


def pinned(image: str):
    ref = parse_ref(image)
    if not ref.digest:
        raise UsageError(
            "the cache pulls pinned images only", subject=image, hint="use REPO@sha256:…"
        )
    return ref


class _BadBytes(Exception):
    """A layer failed its digest with bytes from these sources (not the origin)."""

    def __init__(self, sources: set[str], error: ModelcarError):
        self.sources, self.error = sources, error


class _Tap:
    """Between the blob and the tar reader: replays the journaled prefix, then the
    network; journals every byte that is not file content."""

    def __init__(
        self,
        replay: Replay,
        blob: BlobStream,
        journal: LayerJournal,
        stop: threading.Event | None = None,
    ):
        self.replay, self.blob, self.journal = replay, blob, journal
        self.stop = stop
        self.pos = 0
        self.body_left = 0

    def read(self, n: int = -1) -> bytes:
        if self.pos < self.replay.end:
            data = self.replay.read(n if n > 0 else 1 << 20)
        else:
            if self.stop is not None and self.stop.is_set():
                raise PullStopped("stopped mid-pull", subject=self.blob.digest)
            data = self.blob.read(n)
            if data:
                in_body = min(self.body_left, len(data))
                if in_body < len(data):
                    self.journal.raw(self.pos + in_body, data[in_body:])
        self.body_left = max(0, self.body_left - len(data))
        self.pos += len(data)
        return data


class _FileWriter:
    """One staged file. Skips the bytes a resumed layer already has on disk."""

    def __init__(self, puller: _LayerPull, rel: str, entry: FileEntry):
        self.layer = puller
        self.entry = entry
        tap = puller.tap
        self.start = tap.pos  # the file's body starts here in the layer
        tap.body_left = entry.size
        path = puller.staging / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ImageFormatError(
                "the file index puts a file where a directory must be", subject=rel
            ) from None
        if self.start >= tap.replay.end:
            puller.journal.file_start(self.start, rel, entry.size)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(path, flags, 0o644)
        os.fchmod(self.fd, 0o755 if entry.mode & 0o111 else 0o644)
        self.pos = 0

    def write(self, data: bytes) -> int:
        n = len(data)
        skip = max(0, min(n, self.layer.tap.replay.end - (self.start + self.pos)))
        if skip < n:
            view = memoryview(data)[skip:]
            off = self.pos + skip
            while view:
                written = os.pwrite(self.fd, view, off)
                view, off = view[written:], off + written
            self.layer.since_checkpoint += n - skip
            if self.layer.since_checkpoint >= self.layer.checkpoint_bytes:
                self.layer.journal.checkpoint(self.start + self.pos + n, self.fd)
                self.layer.since_checkpoint = 0
        self.pos += n
        return n

    def close(self) -> None:
        try:
            if self.pos == self.entry.size:
                os.ftruncate(self.fd, self.entry.size)
                os.fsync(self.fd)
        finally:
            os.close(self.fd)


class _LayerPull:
    def __init__(self, staging: Path, journal: LayerJournal, checkpoint_bytes: int):
        self.staging = staging
        self.journal = journal
        self.checkpoint_bytes = checkpoint_bytes
        self.since_checkpoint = 0
        self.tap: _Tap


class Puller:
    def __init__(
        self,
        cache: CacheDir,
        options: PullOptions | None = None,
        *,
        make_room: Callable[[str, int], None] | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
        metrics: Any = None,
        sources: Callable[[ImageRef | LayoutRef], list[Source]] | None = None,
        stop: threading.Event | None = None,
    ):
        """``stop``: once set, pulls end at their next read (PullStopped) and keep what
        they have staged and journaled, so the next pull resumes there."""
        self.cache = cache
        self.stop = stop
        self.options = options or PullOptions()
        self.limiter = RateLimiter(self.options.max_rate)
        self.make_room = make_room
        self.on_progress = on_progress
        self.metrics = metrics
        # where a reference's blobs come from: the chain, the origin last (tests: in memory)
        specs = chain(self.options.sources, self.options.mirrors)
        self.sources = sources or (lambda ref: open_sources(ref, specs, self.options.store))
        self._present: set[str] = set()  # published dirs found whole in this process
        #: layer bytes by source, per digest pulled by this process (for the node report)
        self.by_source: dict[str, dict[str, int]] = {}
        #: images read by a pull that waits for peers or a lease (see pull(origin=False))
        self._waiting: dict[str, ModelImage | ForeignImage] = {}

    def pull(self, image: str, check: Check | None = None, *, origin: bool = True) -> PullResult:
        """Pull and publish ``image``; ``check`` (e.g. its signature) runs on the origin
        once the manifest is read and before a byte of a layer is fetched. Without
        ``origin`` (no rollout lease), layers come from the other sources only, and when
        none holds one: :class:`SourcesMissed`, with what was staged kept."""
        ref = pinned(image)
        digest = ref.digest
        assert digest is not None
        db = self.cache.db
        started = time.monotonic()
        if self.present(digest):
            db.set(digest, image=image, state="ready", error=None, used=True)
            size = db.get(digest).size  # type: ignore[union-attr]  # published: its record exists
            return PullResult(
                digest=digest, image=image, path=str(self.cache.model_dir(digest)), size=size,
                files=0, layers=0, bytes_fetched=0, bytes_resumed=0, seconds=0.0,
            )  # fmt: skip
        every = self.sources(ref)
        sources = every if origin else [s for s in every if not s.origin]
        try:
            self.cache.check_writable(digest)
            # an image is immutable: a wave's next try reuses the one read by the last
            model = self._waiting.pop(digest, None) or self._load([s.store for s in every], ref)
            if check is not None:
                index0 = model.index if isinstance(model, ModelImage) else None
                check(every[-1].store, model, index0)
            if self.make_room:
                self.make_room(digest, model.size)
        except Exception as e:  # nothing staged yet: record why, for ls and the API
            err = e if isinstance(e, ModelcarError) else unexpected(e, image)
            db.set(digest, image=image, state="failed", error=err.one_line())
            raise err from None
        db.set(digest, image=image, state="pulling", size=model.size, bytes_done=0, error=None)
        try:
            if isinstance(model, ForeignImage):
                log.info("pull %s: %s, %d layers, %d bytes", image,
                         FORMAT_NAMES[model.format], len(model.parts), model.size)  # fmt: skip
                progress, index = self._pull_foreign(digest, model, sources)
                if check is not None:  # what needs the files (a model-signing bundle)
                    check(every[-1].store, model, index)
            else:
                log.info("pull %s: %d files, %d bytes", image, len(model.files), model.size)
                progress, index = self._pull_layers(digest, model, sources), model.index
            self._publish(digest, index)
        except PullStopped:
            # staging and journals stay; the row stays 'pulling' (reset at the next start)
            log.info("stopped %s mid-pull; the next start resumes it", image)
            raise
        except (ModelcarError, OSError) as e:
            if isinstance(e, SourcesMissed) and not origin:
                self._waiting[digest] = model  # the caller waits for a peer or a lease
                raise
            err = self._as_error(e, digest)
            self._failed(digest, err)
            raise err from None
        except Exception as e:  # never a crash: the model fails, the caller goes on
            err = unexpected(e, image)
            self._failed(digest, err)
            raise err from None
        seconds = time.monotonic() - started
        self._present.add(digest)
        size = index.total_size  # a compressed image's files take more than was fetched
        db.set(digest, state="ready", size=size, bytes_done=size, error=None, used=True)
        if self.metrics:
            self.metrics.pulled(progress.fetched, seconds)
        log.info("ready %s in %.1fs (%d bytes fetched)", image, seconds, progress.fetched)
        layers = model.parts if isinstance(model, ForeignImage) else model.model_layers
        return PullResult(
            digest=digest, image=image, path=str(self.cache.model_dir(digest)), size=size,
            files=len(index.files), layers=len(layers),
            bytes_fetched=progress.fetched, bytes_resumed=progress.resumed, seconds=seconds,
            by_source=progress.by_source,
        )  # fmt: skip

    # --- steps -----------------------------------------------------------------

    def _load(self, sources: list[ImageStore], ref) -> ModelImage | ForeignImage:
        last: ModelcarError | None = None
        for store in sources:
            try:
                try:
                    return load_model_image(store, ref)
                except NotAModelcar:  # another tool's model image: read as that format
                    return load_foreign(store, ref)
            except ImageFormatError:
                raise  # the image itself is wrong, wherever it comes from
            except ModelcarError as e:
                last = e  # unreachable, or a mirror with bad bytes: try the next source
        assert last is not None
        raise last

    def _journal(self, digest: str, layer: str) -> LayerJournal:
        staging = self.cache.staging_dir(digest)
        jdir = staging.with_name(staging.name + ".journal")
        return LayerJournal(jdir / layer.split(":", 1)[1], staging)

    def _pull_layers(self, digest: str, model: ModelImage, sources) -> _Progress:
        db = self.cache.db
        staging = self.cache.staging_dir(digest)
        if not staging.exists():
            db.clear_layers(digest)
            self.drop_journals(digest)
        staging.mkdir(parents=True, exist_ok=True)
        done = db.layers_done(digest) & {d.digest for d in model.model_layers}
        files = model.files
        for layer in list(done):  # trust a finished layer only if its files are all there
            for f in files.values():
                if f.layer == layer and _size(staging / f.path) != f.size:
                    done.discard(layer)
                    break
        progress = self._progress(digest, model.size)
        progress.add(sum(f.size for f in files.values() if f.layer in done))
        todo = [d for d in model.model_layers if d.digest not in done]
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, self.options.jobs)) as pool:
                futures = [
                    pool.submit(self._pull_layer, digest, d, files, sources, progress) for d in todo
                ]
                errors = [f.exception() for f in futures]
            first = next((e for e in errors if e is not None), None)
            if first is not None:
                raise first
        return progress

    def _pull_layer(
        self, digest: str, desc: Descriptor, files: dict[str, FileEntry], sources, progress
    ) -> None:
        self._dropping(
            sources, progress,
            lambda usable: self._pull_layer_from(digest, desc, files, usable, progress),
        )  # fmt: skip

    def _dropping(
        self, sources: list[Source], progress: _Progress, attempt: Callable[[list[Source]], Any]
    ) -> Any:
        """Run ``attempt`` over the chain; when a layer fails its digest with bytes from
        sources other than the origin, drop those for this layer and do it again."""
        dropped: set[str] = set()
        while True:
            usable = [s for s in sources if s.name not in dropped]
            try:
                return attempt(usable)
            except _BadBytes as bad:
                for name in sorted(bad.sources):
                    log.warning("%s served bad bytes (%s); dropped for this layer",
                                name, bad.error.one_line())  # fmt: skip
                    if self.metrics:
                        self.metrics.bad_bytes(name)
                dropped |= bad.sources
                if not any(s.name not in dropped for s in sources):
                    raise bad.error from None

    def _suspects(self, blob: BlobStream, error: ModelcarError, sources: list[Source]) -> None:
        """Raise :class:`_BadBytes` if sources other than the origin fed the failed layer."""
        origins = {s.name for s in sources if s.origin}
        suspects = blob.served - origins
        if suspects:
            raise _BadBytes(suspects, error) from None

    def _pull_layer_from(
        self, digest: str, desc: Descriptor, files: dict[str, FileEntry], sources, progress
    ) -> None:
        staging = self.cache.staging_dir(digest)
        journal = self._journal(digest, desc.digest)
        start = journal.load()
        journal.open()
        blob = BlobStream(
            sources, desc.digest, desc.size, start=start, attempts=self.options.attempts,
            limiter=self.limiter,
        )  # fmt: skip
        state = _LayerPull(staging, journal, self.options.checkpoint_bytes)
        replay = journal.replay()
        state.tap = _Tap(replay, blob, journal, self.stop)
        progress.add(resumed=start)
        counted = 0

        def on_bytes(n: int) -> None:
            nonlocal counted
            counted += n
            progress.add(n)

        try:
            read_model_layer(
                state.tap, desc.digest, files,
                sink=lambda rel, entry: _FileWriter(state, rel, entry),
                on_bytes=on_bytes,
            )  # fmt: skip
        except (DigestMismatch, ImageFormatError) as e:
            journal.remove()  # what was staged for this layer cannot be trusted
            if self.metrics:
                self.metrics.verify_failed()
            progress.add(-counted)
            self._suspects(blob, e, sources)
            raise
        except OSError as e:
            if start and not _is_space(e):  # a broken journal: next time from zero
                journal.remove()
            raise
        finally:
            blob.close()
            replay.close()
            progress.add(fetched=blob.fetched)
            self._sourced(progress, blob)
            journal.close()
        self.cache.db.layer_done(digest, desc.digest)
        journal.remove()
        log.info("layer %s verified (%d bytes fetched)", desc.digest[:19], blob.fetched)

    def _pull_foreign(
        self, digest: str, model: ForeignImage, sources: list[Source]
    ) -> tuple[_Progress, FileIndex]:
        """Unpack another tool's image layer by layer, computing its file index. A layer
        finished before a stop is kept (its result in the journal dir); one cut off is
        done again from its start, except a raw layer, which goes on from its file's
        size. A hand-built image's layers apply in order; an artifact's, in parallel."""
        staging = self.cache.staging_dir(digest)
        jdir = staging.with_name(staging.name + ".journal")
        if not staging.exists():
            self.drop_journals(digest)
        staging.mkdir(parents=True, exist_ok=True)
        jdir.mkdir(exist_ok=True)
        keys = [f"{i:04d}-{p.layer.digest.split(':', 1)[1]}" for i, p in enumerate(model.parts)]
        results: dict[str, Unpacked] = {}
        for key in keys:
            try:
                results[key] = Unpacked.from_json(json.loads((jdir / f"{key}.json").read_text()))
            except (OSError, ValueError, KeyError):
                continue
        if model.in_order:  # after the first layer to redo, every later one is redone
            first = next((i for i, k in enumerate(keys) if k not in results), len(keys))
            results = {k: results[k] for k in keys[:first]}
        progress = self._progress(digest, model.size)
        progress.add(sum(p.layer.size for p, k in zip(model.parts, keys, strict=True)
                         if k in results))  # fmt: skip
        claimed = {path: key for key, done in results.items() for path in done.files}
        written = sum(size for done in results.values() for size, _ in done.files.values())
        reservation = _Reservation(self, digest, model.size, written)
        lock = threading.Lock()

        def claim(key: str) -> Callable[[str], None] | None:
            if model.in_order:
                return None

            def one_path(path: str) -> None:  # an artifact's layers hold disjoint files
                with lock:
                    if claimed.setdefault(path, key) != key:
                        raise UnsafeArchive("the same file in two layers", subject=path)

            return one_path

        todo = [(p, k) for p, k in zip(model.parts, keys, strict=True) if k not in results]

        def one(part: Part, key: str) -> None:
            results[key] = self._dropping(
                sources, progress,
                lambda usable: self._unpack(
                    staging, part, usable, progress, claim(key), reservation.add
                ),
            )  # fmt: skip
            tmp = jdir / f"{key}.json.tmp"
            tmp.write_text(json.dumps(results[key].to_json()))
            tmp.rename(jdir / f"{key}.json")

        if model.in_order:
            for part, key in todo:
                one(part, key)
        elif todo:
            with ThreadPoolExecutor(max_workers=max(1, self.options.jobs)) as pool:
                futures = [pool.submit(one, part, key) for part, key in todo]
                errors = [f.exception() for f in futures]
            if (first_error := next((e for e in errors if e is not None), None)) is not None:
                raise first_error
        index = index_of([(p.layer.digest, results[k])
                          for p, k in zip(model.parts, keys, strict=True)])  # fmt: skip
        if not index.files:
            raise ImageFormatError(
                f"a {FORMAT_NAMES[model.format]} image with no model files",
                subject=model.digest,
                hint="a hand-built modelcar keeps its files under /models",
            )
        return progress, index

    def _unpack(
        self,
        staging: Path,
        part: Part,
        sources: list[Source],
        progress: _Progress,
        claim: Callable[[str], None] | None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Unpacked:
        resume = 0
        if part.raw_path is not None:  # a raw layer is its file: go on from its size
            have = _size(staging / part.raw_path)
            resume = have if 0 < have <= part.layer.size else 0
        blob = BlobStream(
            sources, part.layer.digest, part.layer.size, start=resume,
            attempts=self.options.attempts, limiter=self.limiter,
        )  # fmt: skip
        progress.add(resumed=resume)
        counted = _Counted(blob, progress, self.stop)
        try:
            return unpack_layer(
                counted, part, staging, claim=claim, resume=resume, on_bytes=on_bytes
            )
        except (DigestMismatch, ImageFormatError) as e:
            if self.metrics:
                self.metrics.verify_failed()
            progress.add(-counted.n)
            if part.raw_path is not None:
                (staging / part.raw_path).unlink(missing_ok=True)
            self._suspects(blob, e, sources)
            raise
        finally:
            blob.close()
            progress.add(fetched=blob.fetched)
            self._sourced(progress, blob)

    def _publish(self, digest: str, index: FileIndex) -> None:
        staging = self.cache.staging_dir(digest)
        for f in index.files:
            if _size(staging / f.path) != f.size:
                raise DigestMismatch(
                    "a file of the index is missing after the pull", subject=f.path
                )
        for d in sorted({p.parent for p in staging.rglob("*")} | {staging}, reverse=True):
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.cache.save_index(digest, index)
        self.cache.publish(digest)
        self.drop_journals(digest)
        self.cache.db.clear_layers(digest)

    def drop_journals(self, digest: str) -> None:
        staging = self.cache.staging_dir(digest)
        jdir = staging.with_name(staging.name + ".journal")
        if jdir.exists():
            for p in jdir.iterdir():
                p.unlink()
            jdir.rmdir()

    def _failed(self, digest: str, e: ModelcarError) -> None:
        resumable = not isinstance(
            e, DigestMismatch | ImageFormatError | DiskFull | PullCrashed | SignatureError
        )
        if not resumable:
            self.cache.remove_staging(digest)
            self.drop_journals(digest)
            self.cache.db.clear_layers(digest)
        try:
            self.cache.db.set(digest, state="failed", error=e.one_line())
        except ModelcarError as db_error:  # e.g. the disk is still full
            log.warning("could not record the failure: %s", db_error.one_line())
        log.warning("failed %s: %s", digest[:19], e.one_line())

    def present(self, digest: str) -> bool:
        """True if the model is published whole. A dir at its place that is not (left
        by hand, or by an older release) is moved to quarantine/ so the pull can
        publish there."""
        if digest in self._present:
            return self.cache.is_published(digest)
        if not self.cache.is_published(digest):
            return False
        problem = self.cache.published_problem(digest)
        if problem is None:
            self._present.add(digest)
            return True
        moved = self.cache.quarantine(digest)
        log.warning("%s was not a whole model (%s); moved to %s", digest[:19], problem, moved)
        self.cache.db.set(digest, state="failed", error=f"not a whole model: {problem}")
        return False

    def _as_error(self, e: ModelcarError | OSError, digest: str) -> ModelcarError:
        if self.cache.vanished():
            return CacheVanished(
                "the cache dir vanished during the pull", subject=str(self.cache.root)
            )
        if isinstance(e, ModelcarError):
            return e
        return self._os_error(e, digest)

    def _os_error(self, e: OSError, digest: str) -> ModelcarError:
        if _is_space(e):
            return DiskFull("no space left on the cache filesystem", subject=str(self.cache.root))
        where = f": {e.filename}" if e.filename else ""
        return ModelcarError(f"cannot write the model ({e.strerror or e}){where}", subject=digest)

    def _sourced(self, progress: _Progress, blob: BlobStream) -> None:
        progress.sourced(blob)
        if self.metrics:
            self.metrics.from_sources(blob.by_source, blob.fallbacks)

    def _progress(self, digest: str, total: int) -> _Progress:
        """The pull's progress; its bytes by source add up over the attempts of this
        process (a wave's peer-only try, then the one with a lease)."""
        progress = _Progress(total=total, on_change=lambda d, t: self._report(digest, d, t))
        progress.by_source = self.by_source.setdefault(digest, {})
        return progress

    def _report(self, digest: str, done: int, total: int) -> None:
        self.cache.db.set(digest, bytes_done=done)
        if self.on_progress:
            self.on_progress(digest, done, total)


class _Counted:
    """Count a layer's fetched bytes into the progress; stop when asked to."""

    def __init__(self, raw: BlobStream, progress: _Progress, stop: threading.Event | None):
        self.raw, self.progress, self.stop = raw, progress, stop
        self.n = 0

    def read(self, n: int = -1) -> bytes:
        if self.stop is not None and self.stop.is_set():
            raise PullStopped("stopped mid-pull", subject=self.raw.digest)
        data = self.raw.read(n)
        self.n += len(data)
        self.progress.add(len(data))
        return data


def _is_space(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def _size(path: Path) -> int:
    try:
        st = path.lstat()
    except OSError:
        return -1
    return st.st_size if path.is_file() and not path.is_symlink() else -1
