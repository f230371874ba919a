"""The one interface the builder and the daemon use for both kinds of target.

An ``ImageStore`` is a registry repository or an OCI layout directory. Blobs
go in as a *factory* of byte chunks, so a failed upload can be retried by
asking for the bytes again; manifests go in as exact bytes (their digest is
over those bytes, so nothing re-serialises them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from modelcar.http.body import DEFAULT_STALL_RULE, StallRule
from modelcar.oci.digest import Readable
from modelcar.oci.reference import Ref

ChunkFactory = Callable[[], Iterable[bytes]]


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: str


class ImageStore(Protocol):
    @property
    def ref(self) -> Ref: ...

    def has_blob(self, digest: str) -> bool: ...

    def put_blob(self, digest: str, size: int, chunks: ChunkFactory) -> int:
        """Store a blob whose digest is known; return bytes sent. Verifies the digest."""
        ...

    def push_blob(self, size: int, chunks: ChunkFactory) -> tuple[str, int] | None:
        """Store a blob whose digest is not known yet (hashed on the way); return
        (digest, bytes sent), or None if this store needs the digest first."""
        ...

    def open_blob(self, digest: str, offset: int = 0) -> AbstractContextManager[Readable]: ...

    def read_blob(self, digest: str, max_size: int = ...) -> bytes:
        """A small blob (config, manifest), verified against its digest and refused
        past ``max_size`` bytes."""
        ...

    def get_manifest(self, reference: str) -> FetchedManifest: ...

    def put_manifest(self, data: bytes, media_type: str, reference: str) -> str:
        """Store manifest bytes under a tag or their digest; return the digest."""
        ...

    def mount_blob(self, digest: str, source: ImageStore) -> bool:
        """Make ``digest`` present without sending it, if ``source`` allows; True if done."""
        ...

    def referrers(self, digest: str) -> bytes | None:
        """The OCI 1.1 referrers API's index of the manifests whose subject is ``digest``,
        or None where there is no such API (a layout, an older registry)."""
        ...


@dataclass(frozen=True)
class Via:
    """Reach a registry repository through another server: a peer (Spegel), a P2P
    proxy (Dragonfly's dfdaemon) or any endpoint that speaks the distribution API for
    the origin. Requests go to ``endpoint`` with ``params`` and ``headers`` added;
    the origin's credentials go along only if ``credentials``."""

    endpoint: str
    params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    credentials: bool = False
    connect_timeout: float = 2.0


@dataclass
class StoreOptions:
    """How to reach a registry; ignored for oci: layouts."""

    plain_http: bool = False
    insecure: bool = False
    ca_file: str | None = None
    docker_config: str | None = None
    retries: int = 5
    chunk_size: int = 64 << 20
    timeout: float = 60.0
    #: Minimum progress of every download (None: only ``timeout`` per read).
    stall: StallRule | None = DEFAULT_STALL_RULE
    #: Not the registry itself but a server in front of it (None: the registry).
    via: Via | None = None
