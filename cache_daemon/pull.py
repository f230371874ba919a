"""Pull a pinned model image into the cache: load, check, fetch, publish.

manifest (sha256 = the pinned digest) -> config (the file index, for a modelcar) ->
the policy check -> room under the budget -> each layer fetched by the image kind's
strategy (``kinds.py``), every byte checked on the way (``ingest.py``) -> every file of
the index present with its size -> one rename into ``models/`` (``cachedir.py``).

The :class:`Puller` only orchestrates and keeps the model's state: ``failed`` with
the reason, ``pulling`` with its bytes (written by a watcher thread once a second, never
by a download thread), ``ready``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

from pydantic import BaseModel

from modelcar.cache_daemon.ahead import Ahead
from modelcar.cache_daemon.blobstream import RateLimiter, SourcesMissed
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.ingest import (
    Job,
    PullProgress,
    dropping_bad_sources,
    file_size,
    is_space,
    suspects,
)
from modelcar.cache_daemon.kinds import strategy_for
from modelcar.cache_daemon.pullmetrics import NO_METRICS, PullMetrics
from modelcar.cache_daemon.served import Served
from modelcar.cache_daemon.sources import BlobSource, Fleet, SourceSpec, chain, open_sources
from modelcar.cache_daemon.verified import Board
from modelcar.contract.control import PullResult
from modelcar.errors import (
    CacheVanished,
    DigestMismatch,
    DiskFull,
    ImageFormatError,
    ModelcarError,
    NotAModelcar,
    PullCrashed,
    PullStopped,
    SignatureError,
    StorageError,
    UsageError,
)
from modelcar.format.fileindex import FileIndex
from modelcar.format.foreign import FORMAT_NAMES, ForeignImage, load_foreign
from modelcar.format.image import ModelImage, load_model_image
from modelcar.oci.digest import CHUNK, HashingReader
from modelcar.oci.manifest import Descriptor
from modelcar.oci.reference import ImageRef, LayoutRef, parse_ref
from modelcar.oci.store import ImageStore, StoreOptions

log = logging.getLogger("modelcar.cache")

CHECKPOINT_BYTES = 64 << 20
#: How often a pull's bytes are written to the state DB (and handed to ``on_progress``).
PROGRESS_SECONDS = 1.0

__all__ = ["Check", "PullCrashed", "PullOptions", "PullResult", "PullStopped", "Puller"]


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
    #: The fleet credential and, for the ``nodes`` source, who holds what.
    fleet: Fleet = Fleet()

    model_config = {"arbitrary_types_allowed": True}


def pinned(image: str) -> ImageRef | LayoutRef:
    ref = parse_ref(image)
    if not ref.digest:
        raise UsageError(
            "the cache pulls pinned images only", subject=image, hint="use REPO@sha256:…"
        )
    return ref


class Puller:
    def __init__(
        self,
        cache: CacheDir,
        options: PullOptions | None = None,
        *,
        make_room: Callable[[str, int], None] | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
        metrics: PullMetrics | None = None,
        sources: Callable[[ImageRef | LayoutRef], list[BlobSource]] | None = None,
        stop: threading.Event | None = None,
        on_layer: Callable[[], None] | None = None,
        board: Board | None = None,
    ):
        """``stop``: once set, pulls end at their next read (PullStopped) and keep what
        they have staged and journaled, so the next pull resumes there. ``on_progress``
        is called from a watcher thread, about once a second, with a pull's bytes: it
        must not block (the daemon only notes them)."""
        self.cache = cache
        self.stop = stop
        self.options = options or PullOptions()
        self.limiter = RateLimiter(self.options.max_rate)
        self.make_room = make_room
        self.on_progress = on_progress
        self.on_layer = on_layer
        #: where a modelcar's verified chunks are marked while it is pulled (the S3
        #: endpoint of ``run --serve`` reads them before the model is published)
        self.board = board
        self.metrics: PullMetrics = metrics or NO_METRICS
        # where a reference's blobs come from: the chain, the origin last (tests: in memory)
        specs = chain(self.options.sources, self.options.mirrors)
        self.sources = sources or (
            lambda ref: open_sources(ref, specs, self.options.store, self.options.fleet)
        )
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
                digest=digest,
                image=image,
                path=str(self.cache.model_dir(digest)),
                size=size,
                files=0,
                layers=0,
                bytes_fetched=0,
                bytes_resumed=0,
                seconds=0.0,
            )
        every = self.sources(ref)
        origin_store = next(s.store for s in every if s.origin)
        try:
            self.cache.check_writable(digest)
            # an image is immutable: a wave's next try reuses the one read by the last
            model = self._waiting.pop(digest, None) or self._load([s.store for s in every], ref)
            if check is not None:
                check(origin_store, model, model.index if isinstance(model, ModelImage) else None)
            if self.make_room:
                self.make_room(digest, model.size)
        except Exception as e:  # nothing staged yet: record why, for ls and the API
            err = e if isinstance(e, ModelcarError) else unexpected(e, image)
            db.set(digest, image=image, state="failed", error=err.one_line())
            raise err from None
        db.set(digest, image=image, state="pulling", size=model.size, bytes_done=0, error=None)
        job = Job(
            cache=self.cache,
            digest=digest,
            sources=every if origin else [s for s in every if not s.origin],
            progress=PullProgress(
                total=model.size, by_source=self.by_source.setdefault(digest, {})
            ),
            metrics=self.metrics,
            limiter=self.limiter,
            attempts=self.options.attempts,
            checkpoint_bytes=self.options.checkpoint_bytes,
            threads=self.options.jobs,
            stop=self.stop,
            make_room=self.make_room,
            on_layer=self.on_layer,
            board=self.board if isinstance(model, ModelImage) else None,
            chunks=model.chunks if isinstance(model, ModelImage) else None,
        )
        ahead = None
        if job.board is not None and isinstance(model, ModelImage):
            if model.chunks is not None:
                ahead = Ahead(job, model.files, model.model_layers, model.chunks)
            job.board.begin(
                digest, job.staging, model.index, model.chunks, ahead.want if ahead else None
            )
        try:
            with _Watch(self, job), _closing(ahead):
                index = self._fetch(job, model, image)
                if check is not None and isinstance(model, ForeignImage):
                    check(origin_store, model, index)  # what needs the files (model-signing)
                self._publish(digest, index)
        except PullStopped:
            if job.board is not None:
                job.board.end(digest)
            # staging and journals stay; the row stays 'pulling' (reset at the next start)
            log.info("stopped %s mid-pull; the next start resumes it", image)
            raise
        except (ModelcarError, OSError) as e:
            if isinstance(e, SourcesMissed) and not origin:
                self._waiting[digest] = model  # the caller waits for a peer or a lease
                raise
            err = self._as_error(e, digest)
            self._failed(digest, err, job.board)
            raise err from None
        except Exception as e:  # never a crash: the model fails, the caller goes on
            err = unexpected(e, image)
            self._failed(digest, err, job.board)
            raise err from None
        if job.board is not None:
            job.board.end(digest)  # published: readers go to the tree
        seconds = time.monotonic() - started
        self._present.add(digest)
        size = index.total_size  # a compressed image's files take more than was fetched
        db.set(digest, state="ready", size=size, bytes_done=size, error=None, used=True)
        self.metrics.pulled(job.progress.fetched, seconds)
        log.info("ready %s in %.1fs (%d bytes fetched)", image, seconds, job.progress.fetched)
        layers = model.parts if isinstance(model, ForeignImage) else model.model_layers
        return PullResult(
            digest=digest,
            image=image,
            path=str(self.cache.model_dir(digest)),
            size=size,
            files=len(index.files),
            layers=len(layers),
            bytes_fetched=job.progress.fetched,
            bytes_resumed=job.progress.resumed,
            seconds=seconds,
            by_source=job.progress.by_source,
        )

    # --- steps -----------------------------------------------------------------

    def _load(
        self, stores: list[ImageStore], ref: ImageRef | LayoutRef
    ) -> ModelImage | ForeignImage:
        last: ModelcarError | None = None
        for store in stores:
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

    def _fetch(self, job: Job, model: ModelImage | ForeignImage, image: str) -> FileIndex:
        if isinstance(model, ForeignImage):
            log.info(
                "pull %s: %s, %d layers, %d bytes",
                image,
                FORMAT_NAMES[model.format],
                len(model.parts),
                model.size,
            )
        else:
            log.info("pull %s: %d files, %d bytes", image, len(model.files), model.size)
        self._keep(job, model)
        return strategy_for(model).fetch(job)

    def _keep(self, job: Job, model: ModelImage | ForeignImage) -> None:
        """What the node serves besides the model's layers: its manifests and configs
        (read and checked already) and a modelcar's base layers (fetched along the
        chain, checked, kept as blobs), so its containerd and its peers need nothing
        more from the origin."""
        served = Served(self.cache)
        for digest, (data, media_type) in model.documents.items():
            served.keep_blob(job.digest, digest, data, media_type)
        if not isinstance(model, ModelImage):
            return
        named = {d.digest for d in model.model_layers}
        for desc in model.manifest.layers:
            if desc.digest in named:
                continue
            if self.cache.blob_path(desc.digest).is_file():
                served.kept_already(job.digest, desc)
                continue
            dropping_bad_sources(job, functools.partial(self._keep_layer, job, desc, served))

    @staticmethod
    def _keep_layer(job: Job, desc: Descriptor, served: Served, sources: list[BlobSource]) -> None:
        tmp = served.blob_writer(desc.digest)
        blob = job.blob(desc, sources)
        try:
            hashing = HashingReader(blob)
            with open(tmp, "wb") as out:
                while data := hashing.read(CHUNK):
                    job.running(desc.digest)
                    out.write(data)
                out.flush()
                os.fsync(out.fileno())
            if hashing.digest != desc.digest or hashing.count != desc.size:
                error = DigestMismatch(
                    f"base layer digest mismatch (got {hashing.digest})", subject=desc.digest
                )
                suspects(blob, error, sources)
                raise error
            served.kept(job.digest, desc.digest, desc.size, desc.mediaType, tmp)
        finally:
            tmp.unlink(missing_ok=True)
            job.finish(blob)

    def _publish(self, digest: str, index: FileIndex) -> None:
        staging = self.cache.staging_dir(digest)
        for f in index.files:
            if file_size(staging / f.path) != f.size:
                raise DigestMismatch(
                    "a file of the index is missing after the pull", subject=f.path
                )
        self.cache.publish(digest, index)
        self.cache.db.clear_layers(digest)

    def _failed(self, digest: str, e: ModelcarError, board: Board | None = None) -> None:
        if board is not None:
            board.failed(digest, e.one_line())  # before its staging may go
        resumable = not isinstance(
            e, DigestMismatch | ImageFormatError | DiskFull | PullCrashed | SignatureError
        )
        if not resumable:
            self.cache.remove_staging(digest)
            self.cache.drop_journals(digest)
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
        if is_space(e):
            return DiskFull("no space left on the cache filesystem", subject=str(self.cache.root))
        where = f": {e.filename}" if e.filename else ""
        return StorageError(f"cannot write the model ({e.strerror or e}){where}", subject=digest)


@contextlib.contextmanager
def _closing(ahead: Ahead | None) -> Iterator[None]:
    """The fetches ahead end with the pull; what they fetched is logged."""
    try:
        yield
    finally:
        if ahead is not None:
            ahead.close()
            if ahead.fetched or ahead.bad:
                log.info(
                    "%d chunks (%d bytes) fetched ahead for readers, %d did not match",
                    ahead.fetched,
                    ahead.bytes,
                    ahead.bad,
                )


class _Watch:
    """While a pull runs: its bytes into the state DB and to ``on_progress``, from a
    thread of its own, so no download thread ever waits on a database or a server."""

    def __init__(self, puller: Puller, job: Job):
        self.puller, self.job = puller, job
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"progress-{job.digest[7:19]}", daemon=True
        )

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        last = -1
        while not self._done.wait(PROGRESS_SECONDS):
            done, total = self.job.progress.snapshot()
            if done == last:
                continue
            last = done
            try:
                self.puller.cache.db.set(self.job.digest, bytes_done=done)
                if self.puller.on_progress:
                    self.puller.on_progress(self.job.digest, done, total)
            except Exception as e:  # progress is best effort: never the pull's failure
                log.warning("progress of %s not recorded: %s", self.job.digest[:19], e)
