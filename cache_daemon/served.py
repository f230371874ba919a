"""What the node can serve again, byte for byte, from what it holds verified.

A record per blob and model that holds it (``served/<blob hex>.<model hex>.json``):

* ``blob``: kept as it came (``blobs/sha256-<hex>``): manifests, configs, the base
  layers of a modelcar. Each was checked against its digest before it was kept.
* ``tar``: a modelcar layer, regenerated from its files in the model's tree. Recorded
  only when every byte that is not file content (headers, padding, the end) was the
  one :func:`~modelcar.format.layer.layer_layout` writes, and the layer's digest and
  every file's sha256 checked out: the regenerated tar is then the layer itself. A
  layer written by another tool (another mtime, owner or order) is not recorded.
* ``raw``: a ModelPack raw layer: the file is the layer.

A record is written once its blob is whole and verified (a layer of a pull still in
progress included: its files are complete in ``staging/``); the model's removal,
quarantine or failed pull removes its records first (:meth:`CacheDir.forget_served`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from modelcar.cache_daemon.cachedir import CacheDir, fsync_dir
from modelcar.contract.nodecache import model_dir_name
from modelcar.format.fileindex import FileEntry
from modelcar.format.layer import PREFIX, layer_layout
from modelcar.oci.digest import hex_of, sha256_bytes
from modelcar.oci.manifest import Descriptor
from modelcar.oci.tarstream import TarLayout


class ServedRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    digest: str
    size: int
    kind: Literal["blob", "tar", "raw"]
    media_type: str = "application/octet-stream"
    #: tar: the layer's files; raw: its one file.
    files: list[FileEntry] = []


class Served:
    """The records of one cache dir: written by the puller, read by the endpoint."""

    def __init__(self, cache: CacheDir):
        self.cache = cache

    # --- writing (the daemon's pulls) ----------------------------------------------

    def keep_blob(self, model: str, digest: str, data: bytes, media_type: str) -> None:
        """A small verified blob (manifest, config): kept, and served for ``model``."""
        if sha256_bytes(data) != digest:
            return  # never keep what does not match; the pull checks it anyway
        path = self.cache.blob_path(digest)
        if not path.is_file() or path.stat().st_size != len(data):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        self._record(
            model, ServedRecord(digest=digest, size=len(data), kind="blob", media_type=media_type)
        )

    def blob_writer(self, digest: str) -> Path:
        """Where a larger kept blob (a base layer) is written before :meth:`kept`."""
        return self.cache.blob_path(digest).with_name(f".{hex_of(digest)}.{os.getpid()}.tmp")

    def kept(self, model: str, digest: str, size: int, media_type: str, tmp: Path) -> None:
        """``tmp`` holds the verified blob: move it in, record it for ``model``."""
        os.replace(tmp, self.cache.blob_path(digest))
        self._record(
            model, ServedRecord(digest=digest, size=size, kind="blob", media_type=media_type)
        )

    def kept_already(self, model: str, desc: Descriptor) -> None:
        """A blob kept for another model: served for this one too."""
        self._record(
            model,
            ServedRecord(
                digest=desc.digest, size=desc.size, kind="blob", media_type=desc.mediaType
            ),
        )

    def layer(
        self,
        model: str,
        digest: str,
        size: int,
        media_type: str,
        files: list[FileEntry],
        kind: Literal["tar", "raw"] = "tar",
    ) -> None:
        self._record(
            model,
            ServedRecord(digest=digest, size=size, kind=kind, media_type=media_type, files=files),
        )

    def _record(self, model: str, record: ServedRecord) -> None:
        path = self.cache.root / "served" / f"{hex_of(record.digest)}.{hex_of(model)}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(record.model_dump_json())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):
            fsync_dir(path.parent)

    # --- reading (the endpoint) ----------------------------------------------------

    def held(self, model: str) -> list[str]:
        """The digests served for ``model`` (for the node's report)."""
        return sorted(
            "sha256:" + p.name.split(".", 1)[0] for p in self.cache.served_records(model=model)
        )

    def open(self, digest: str) -> Body | None:
        """The blob ``digest`` as the node can serve it now, or None."""
        for path in self.cache.served_records(blob=digest):
            model = "sha256:" + path.name.split(".")[1]
            try:
                record = ServedRecord.model_validate_json(path.read_bytes())
            except (OSError, ValidationError):
                continue
            if record.digest != digest:
                continue
            body = self._open(model, record)
            if body is not None:
                return body
        return None

    def _open(self, model: str, record: ServedRecord) -> Body | None:
        if record.kind == "blob":
            fds = _open_all([self.cache.blob_path(record.digest)])
            layout = None
        else:
            tree = self._tree(model)
            if tree is None:
                return None
            fds = _open_all([tree / f.path for f in record.files])
            layout = layer_layout(record.files) if record.kind == "tar" else None
        if fds is None:
            return None
        sizes = [f.size for f in record.files] if record.files else [record.size]
        if any(os.fstat(fd).st_size != n for fd, n in zip(fds, sizes, strict=True)):
            _close(fds)
            return None
        if layout is not None and layout.size != record.size:
            _close(fds)
            return None
        return Body(record, fds, layout)

    def _tree(self, model: str) -> Path | None:
        """A model's files: published, or (its finished layers) still in staging."""
        for where in ("models", "staging"):
            path = self.cache.root / where / model_dir_name(model)
            if path.is_dir():
                return path
        return None


def _open_all(paths: list[Path]) -> list[int] | None:
    fds: list[int] = []
    try:
        for p in paths:
            fds.append(os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
    except OSError:
        _close(fds)
        return None
    return fds


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


@dataclass
class Piece:
    """A run of a blob's bytes: ``data``, or ``size`` bytes of file ``fd`` at ``offset``."""

    size: int
    data: bytes | None = None
    fd: int = -1
    offset: int = 0


class Body:
    """An opened blob: its files held open (a rename or eviction cannot change what is
    served), its bytes as pieces for any range."""

    def __init__(self, record: ServedRecord, fds: list[int], layout: TarLayout | None):
        self.record, self._fds, self._layout = record, fds, layout
        by_name = {PREFIX + f.path: fd for f, fd in zip(record.files, fds, strict=False)}
        #: a layer's member index -> the fd of its file
        self._fd = (
            {i: by_name[m.name] for i, m in enumerate(layout.members) if m.name in by_name}
            if layout
            else {}
        )

    @property
    def size(self) -> int:
        return self.record.size

    @property
    def media_type(self) -> str:
        return self.record.media_type

    def pieces(self, start: int, end: int) -> Iterator[Piece]:
        """``[start, end)`` of the blob."""
        if self._layout is None:  # a kept blob or a raw layer: one file
            yield Piece(end - start, fd=self._fds[0], offset=start)
            return
        for seg in self._layout.segments(start, end):
            if seg.fixed is not None:
                yield Piece(seg.size, data=seg.fixed)
            else:
                at = seg.start - self._layout.content_at[seg.member]
                yield Piece(seg.size, fd=self._fd[seg.member], offset=at)

    def close(self) -> None:
        _close(self._fds)
        self._fds = []

    def __enter__(self) -> Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
