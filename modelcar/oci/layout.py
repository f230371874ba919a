"""OCI image-layout directories (``oci:PATH[:TAG]``), read and written.

Blobs are written to a temporary file inside ``blobs/sha256`` and renamed into
place only after their digest verified, so a crash never leaves a blob whose
name lies about its content. ``index.json`` is replaced atomically under a
lock, and a tag is added only after the manifest blob exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from modelcar.errors import DigestMismatch, DiskFull, LayoutError, NotFound, ResponseTooLarge
from modelcar.http.body import MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, human_limit
from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import hex_of, sha256_bytes
from modelcar.oci.manifest import Descriptor, Index, media_type_of, parse_index
from modelcar.oci.reference import LayoutRef
from modelcar.oci.store import ChunkFactory, FetchedManifest, ImageStore

LAYOUT_VERSION = b'{"imageLayoutVersion":"1.0.0"}'


class OCILayout:
    def __init__(self, ref: LayoutRef, *, create: bool = False):
        self.ref = ref
        self.root = Path(ref.path)
        marker = self.root / "oci-layout"
        if not marker.exists():
            if not create:
                raise NotFound(
                    "no OCI image layout here",
                    subject=str(self.root),
                    hint="build into it first, or check the path",
                )
            try:
                (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
                if not (self.root / "index.json").exists():
                    self._write_atomic(self.root / "index.json", Index(manifests=[]).canonical())
                self._write_atomic(marker, LAYOUT_VERSION)
            except OSError as e:
                raise LayoutError(
                    f"cannot create OCI layout ({e.strerror})", subject=str(self.root)
                ) from None

    # --- blobs -----------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / hex_of(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def _write(self, size: int, chunks: ChunkFactory, expected: str | None) -> tuple[str, int]:
        """Write the chunks to a temp file, hashing; move it to its digest's place."""
        h = hashlib.sha256()
        n = 0
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.root / "blobs" / "sha256")
        try:
            with os.fdopen(fd, "wb") as f:
                for block in chunks():
                    h.update(block)
                    n += len(block)
                    f.write(block)
            actual = "sha256:" + h.hexdigest()
            if actual != (expected or actual) or n != size:
                raise DigestMismatch(
                    f"blob content does not match its digest (expected {expected or '?'}, "
                    f"{size} bytes; got {actual}, {n} bytes)"
                )
            os.replace(tmp, self.blob_path(actual))
        except OSError as e:
            if e.errno == 28:
                raise DiskFull("no space left writing OCI layout", subject=str(self.root)) from None
            raise LayoutError(f"cannot write blob ({e.strerror})", subject=str(self.root)) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return actual, n

    def put_blob(self, digest: str, size: int, chunks: ChunkFactory) -> int:
        if self.has_blob(digest):
            return 0
        return self._write(size, chunks, digest)[1]

    def push_blob(self, size: int, chunks: ChunkFactory) -> tuple[str, int] | None:
        """Store bytes whose digest is not known yet, hashing them on the way (one pass)."""
        return self._write(size, chunks, None)

    def put_bytes(self, data: bytes) -> str:
        digest = sha256_bytes(data)
        self.put_blob(digest, len(data), lambda: [data])
        return digest

    @contextlib.contextmanager
    def open_blob(self, digest: str, offset: int = 0) -> Iterator[BinaryIO]:
        try:
            f = open(self.blob_path(digest), "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise NotFound("blob not in layout", subject=f"{self.ref.name}@{digest}") from None
        with f:
            if offset:
                f.seek(offset)
            yield f

    def read_blob(self, digest: str, max_size: int = MAX_CONFIG_BYTES) -> bytes:
        with self.open_blob(digest) as f:
            data = f.read(max_size + 1)
        if len(data) > max_size:
            raise ResponseTooLarge(
                f"blob is larger than the {human_limit(max_size)} limit",
                subject=f"{self.ref.name}@{digest}",
            )
        if sha256_bytes(data) != digest:
            raise DigestMismatch(
                "blob does not match its digest", subject=f"{self.ref.name}@{digest}"
            )
        return data

    def mount_blob(self, digest: str, source: ImageStore) -> bool:
        if isinstance(source, OCILayout) and source.has_blob(digest):
            try:
                os.link(source.blob_path(digest), self.blob_path(digest))
                return True
            except FileExistsError:
                return True
            except OSError:
                return False
        return False

    # --- manifests and tags ---------------------------------------------

    def _index(self) -> Index:
        try:
            return parse_index((self.root / "index.json").read_bytes())
        except FileNotFoundError:
            raise LayoutError(
                "index.json missing from OCI layout", subject=str(self.root)
            ) from None

    def tags(self) -> dict[str, Descriptor]:
        out = {}
        for d in self._index().manifests:
            name = (d.annotations or {}).get(mt.REF_NAME)
            if name:
                out[name] = d
        return out

    def resolve(self, reference: str) -> Descriptor:
        index = self._index()
        if reference.startswith("sha256:"):
            for d in index.manifests:
                if d.digest == reference:
                    return d
            if self.has_blob(reference):
                data = self.read_blob(reference, MAX_MANIFEST_BYTES)
                return Descriptor(
                    mediaType=media_type_of(data, None), digest=reference, size=len(data)
                )
            raise NotFound("manifest not in layout", subject=f"{self.ref.name}@{reference}")
        desc = self.tags().get(reference)
        if desc is None:
            raise NotFound("tag not in layout", subject=f"{self.ref.name}:{reference}")
        return desc

    def referrers(self, digest: str) -> bytes | None:
        return None  # no referrers API: the tag schema's sha256-<hex> index serves

    def get_manifest(self, reference: str) -> FetchedManifest:
        desc = self.resolve(reference)
        data = self.read_blob(desc.digest, MAX_MANIFEST_BYTES)
        actual = sha256_bytes(data)
        if actual != desc.digest:
            raise DigestMismatch("manifest blob does not match its digest", subject=desc.digest)
        return FetchedManifest(
            data=data, media_type=media_type_of(data, desc.mediaType), digest=actual
        )

    def put_manifest(self, data: bytes, media_type: str, reference: str) -> str:
        digest = self.put_bytes(data)
        if reference.startswith("sha256:"):
            return digest
        desc = Descriptor(
            mediaType=media_type,
            digest=digest,
            size=len(data),
            annotations={mt.REF_NAME: reference},
        )
        with self._locked():
            index = self._index()
            kept = [
                d for d in index.manifests if (d.annotations or {}).get(mt.REF_NAME) != reference
            ]
            index.manifests = [*kept, desc]
            self._write_atomic(self.root / "index.json", index.canonical())
        return digest

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # oci-layout is never replaced after creation, so its inode is a stable lock.
        with open(self.root / "oci-layout", "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
