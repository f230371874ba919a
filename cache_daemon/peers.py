"""The ``nodes`` source: the peers the API says hold a blob, nearest first.

For each blob the API is asked who serves it (``GET /v1/blobs/<digest>/holders``,
answers kept a few seconds). The holders are tried in this order: those sharing more
of this node's topology labels first (same zone, same rack), then the ones holding it
in a ready model before those still pulling; within a group, in random order, so the
fleet spreads over every holder instead of queueing at the first. A holder that is
unreachable, or that stalled or failed mid-blob goes to the back for
:data:`PENALTY_SECONDS`; the next one continues at the same byte (the blob stream
resumes where it was). When none can serve, the blob is a miss; when some hold it but
all are busy (429, their fan-out cap), :class:`~.blobstream.PeersBusy`: the layer is
asked again shortly and never taken from the origin (a lease is for what no peer holds).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress

import httpx

from modelcar.cache_daemon.blobstream import PeersBusy, is_busy
from modelcar.cache_daemon.sources import Fleet, peer_store
from modelcar.contract.wire import BlobHolder
from modelcar.errors import ModelcarError, NotFound, TransportError, UsageError
from modelcar.oci.digest import Readable
from modelcar.oci.reference import ImageRef, Ref
from modelcar.oci.store import ChunkFactory, FetchedManifest, ImageStore, StoreOptions

log = logging.getLogger("modelcar.cache")

#: How long an answer of the API about a blob's holders is used.
HOLDERS_SECONDS = 3.0
#: How long a peer that failed is tried last.
PENALTY_SECONDS = 30.0
#: At most this many holders are tried for one request.
MAX_TRIED = 8

_FAILED = (TransportError, httpx.HTTPError, OSError)


class FleetStore:
    """An :class:`~modelcar.oci.store.ImageStore` for reading only, over the peers."""

    def __init__(self, ref: ImageRef, fleet: Fleet, options: StoreOptions):
        self._ref, self.fleet, self.options = ref, fleet, options
        self._stores: dict[str, ImageStore] = {}
        self._answers: dict[str, tuple[float, list[BlobHolder]]] = {}
        self._penalty: dict[str, float] = {}
        #: peers that served bytes of a blob (by digest); distrusted if it fails
        self._served_by: dict[str, set[str]] = {}
        self._banned: set[str] = set()
        self._lock = threading.Lock()
        self._random = random.Random()

    @property
    def ref(self) -> Ref:
        return self._ref

    # --- who to ask ------------------------------------------------------------------

    def _holders(self, digest: str) -> list[BlobHolder]:
        now = time.monotonic()
        with self._lock:
            cached = self._answers.get(digest)
            if cached and now - cached[0] < HOLDERS_SECONDS:
                return cached[1]
        if self.fleet.holders is None:
            return []
        try:
            found = [h for h in self.fleet.holders(digest) if h.node != self.fleet.node]
        except ModelcarError as e:
            log.info("asking the API who holds %s failed: %s", digest[:19], e.one_line())
            found = []
        with self._lock:
            self._answers[digest] = (now, found)
        return found

    def peers(self, digest: str) -> list[BlobHolder]:
        """The holders of ``digest`` in the order to try them."""
        mine = self.fleet.labels()
        near = [k for k in self.fleet.topology if k in mine]
        now = time.monotonic()

        def rank(h: BlobHolder) -> tuple[bool, int, bool, float]:
            shared = sum(h.labels.get(k) == mine[k] for k in near)
            penalised = self._penalty.get(h.url, 0.0) > now
            return (penalised, -shared, not h.ready, self._random.random())

        fresh = [h for h in self._holders(digest) if h.url not in self._banned]
        return sorted(fresh, key=rank)[:MAX_TRIED]

    def distrust(self, digest: str) -> int:
        """``digest`` failed its check with bytes from these peers: never asked again
        (for this image); how many were banned."""
        with self._lock:
            bad = self._served_by.pop(digest, set())
            self._banned |= bad
        for url in sorted(bad):
            log.warning("peer %s served bad bytes of %s; not asked again", url, digest[:19])
        return len(bad)

    def failed(self, url: str) -> None:
        with self._lock:
            self._penalty[url] = time.monotonic() + PENALTY_SECONDS

    def _store(self, url: str) -> ImageStore:
        with self._lock:
            if url not in self._stores:
                assert self.fleet.token is not None
                self._stores[url] = peer_store(self._ref, url, self.fleet.token, self.options)
            return self._stores[url]

    # --- reading ---------------------------------------------------------------------

    def open_blob(self, digest: str, offset: int = 0) -> AbstractContextManager[Readable]:
        return self._open(digest, offset)

    @contextmanager
    def _open(self, digest: str, offset: int) -> Iterator[Readable]:
        errors = []
        busy = False
        for holder in self.peers(digest):
            cm = self._store(holder.url).open_blob(digest, offset)
            try:
                f = cm.__enter__()
            except _FAILED as e:
                errors.append(f"{holder.node}: {e}")
                if is_busy(e):
                    busy = True  # serving its fan-out: fine, just not now
                else:
                    self.failed(holder.url)
                continue
            with self._lock:
                self._served_by.setdefault(digest, set()).add(holder.url)
            try:
                yield _Watched(f, self, holder.url)
            finally:
                with suppress(ModelcarError, httpx.HTTPError, OSError):
                    cm.__exit__(None, None, None)
            return
        subject = f"{digest}: {'; '.join(errors) or 'no node holds it'}"
        if busy:
            raise PeersBusy("the peers holding the blob are busy", subject=subject)
        raise NotFound("no peer serves the blob", subject=subject)

    def get_manifest(self, reference: str) -> FetchedManifest:
        if not reference.startswith("sha256:"):
            raise NotFound("peers serve digests only", subject=reference)
        for holder in self.peers(reference):
            try:
                return self._store(holder.url).get_manifest(reference)
            except _FAILED:
                self.failed(holder.url)
        raise NotFound("no peer serves the manifest", subject=reference)

    def read_blob(self, digest: str, max_size: int = 4 << 20) -> bytes:
        for holder in self.peers(digest):
            try:
                return self._store(holder.url).read_blob(digest, max_size)
            except _FAILED:
                self.failed(holder.url)
        raise NotFound("no peer serves the blob", subject=digest)

    def has_blob(self, digest: str) -> bool:
        return bool(self._holders(digest))

    # --- never written to ------------------------------------------------------------

    def _read_only(self) -> UsageError:
        return UsageError("the nodes source is read-only", subject=str(self._ref))

    def put_blob(self, digest: str, size: int, chunks: ChunkFactory) -> int:
        raise self._read_only()

    def push_blob(self, size: int, chunks: ChunkFactory) -> tuple[str, int] | None:
        raise self._read_only()

    def put_manifest(self, data: bytes, media_type: str, reference: str) -> str:
        raise self._read_only()

    def mount_blob(self, digest: str, source: ImageStore) -> bool:
        return False

    def referrers(self, digest: str) -> bytes | None:
        return None


class _Watched:
    """A peer's stream: a failure mid-blob sends that peer to the back of the line."""

    def __init__(self, raw: Readable, store: FleetStore, url: str):
        self.raw, self.store, self.url = raw, store, url

    def read(self, n: int = -1) -> bytes:
        try:
            return self.raw.read(n)
        except Exception:
            self.store.failed(self.url)
            raise
