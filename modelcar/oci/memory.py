"""An image store in memory: the same contract as a registry or a layout, no I/O.

For tests of the code above the store (the builder, the cache's puller) that need
no server, and for tools that assemble an image before deciding where it goes.
Digests and sizes are checked as the real stores check them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator
from typing import BinaryIO

from modelcar.errors import DigestMismatch, NotFound, ResponseTooLarge
from modelcar.http.body import MAX_CONFIG_BYTES, human_limit
from modelcar.oci.digest import sha256_bytes
from modelcar.oci.manifest import media_type_of
from modelcar.oci.reference import ImageRef
from modelcar.oci.store import ChunkFactory, FetchedManifest, ImageStore


class MemoryStore:
    def __init__(self, ref: ImageRef):
        self._ref = ref
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}  # by digest
        self.tags: dict[str, str] = {}  # tag -> digest
        self.reads: list[tuple[str, int]] = []  # (digest, offset) of every open_blob

    @property
    def ref(self) -> ImageRef:
        return self._ref

    def has_blob(self, digest: str) -> bool:
        return digest in self.blobs

    def _store(self, chunks: ChunkFactory, expected: str | None, size: int) -> tuple[str, int]:
        h, parts = hashlib.sha256(), []
        for block in chunks():
            h.update(block)
            parts.append(block)
        data = b"".join(parts)
        actual = "sha256:" + h.hexdigest()
        if (expected and actual != expected) or len(data) != size:
            raise DigestMismatch("blob content does not match its digest", subject=expected)
        self.blobs[actual] = data
        return actual, len(data)

    def put_blob(self, digest: str, size: int, chunks: ChunkFactory) -> int:
        return 0 if digest in self.blobs else self._store(chunks, digest, size)[1]

    def push_blob(self, size: int, chunks: ChunkFactory) -> tuple[str, int] | None:
        return self._store(chunks, None, size)

    @contextlib.contextmanager
    def open_blob(self, digest: str, offset: int = 0) -> Iterator[BinaryIO]:
        data = self.blobs.get(digest)
        if data is None:
            raise NotFound("blob not in store", subject=f"{self.ref.name}@{digest}")
        self.reads.append((digest, offset))
        yield io.BytesIO(data[offset:])

    def read_blob(self, digest: str, max_size: int = MAX_CONFIG_BYTES) -> bytes:
        with self.open_blob(digest) as f:
            data = f.read()
        if len(data) > max_size:
            raise ResponseTooLarge(f"blob is larger than the {human_limit(max_size)} limit")
        return data

    def referrers(self, digest: str) -> bytes | None:
        return None  # no referrers API: the tag schema's sha256-<hex> index serves

    def get_manifest(self, reference: str) -> FetchedManifest:
        digest = reference if reference.startswith("sha256:") else self.tags.get(reference)
        data = self.manifests.get(digest or "")
        if data is None:
            raise NotFound("manifest not in store", subject=f"{self.ref.name}:{reference}")
        return FetchedManifest(data, media_type_of(data, None), sha256_bytes(data))

    def put_manifest(self, data: bytes, media_type: str, reference: str) -> str:
        digest = sha256_bytes(data)
        self.manifests[digest] = data
        if not reference.startswith("sha256:"):
            self.tags[reference] = digest
        return digest

    def mount_blob(self, digest: str, source: ImageStore) -> bool:
        return False
