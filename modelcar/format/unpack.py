"""Unpack one layer of a foreign model image (see ``foreign.py``) and compute its
files' sha256, since no file index travels with it.

The rules of the modelcar layer reader hold here too: only regular files and
directories are taken, every path passes the model-path rule, no setuid/setgid/sticky
bits, no links, devices or FIFOs, no duplicate in a layer, and the layer's digest is
checked over every (compressed) byte. Files are written 0644 and directories 0755,
whatever the archive says. A hand-built image's layers apply as a container runtime
applies them: a later layer overwrites, and its whiteouts (``.wh.NAME``,
``.wh..wh..opq``) delete what lower layers wrote; entries outside ``models/`` are
skipped unread. A raw ModelPack layer is the file itself, so its digest is the file's
sha256: each byte is hashed once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from modelcar.errors import DigestMismatch, UnsafeArchive
from modelcar.format.fileindex import FileEntry, FileIndex
from modelcar.format.foreign import Compression, Part
from modelcar.format.paths import path_problem, shown
from modelcar.oci.digest import CHUNK, HashingReader, Readable
from modelcar.oci.tarstream import TarReader

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass
class Unpacked:
    """What one layer did: files written (path -> size, sha256), directories made,
    and what its whiteouts removed from lower layers."""

    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    opaque: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, object]:
        return {
            "files": self.files,
            "dirs": sorted(self.dirs),
            "removed": sorted(self.removed),
            "opaque": sorted(self.opaque),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Unpacked:
        return cls(
            {k: (int(v[0]), str(v[1])) for k, v in data["files"].items()},
            set(data["dirs"]),
            set(data["removed"]),
            set(data["opaque"]),
        )


#: A compressed layer may expand to at most this many times its size (and always to
#: RATIO_FLOOR): model weights compress by 1.0-1.3x, text files by 3-10x; a layer past
#: this is a decompression bomb, refused before it fills the disk.
MAX_RATIO = 100
RATIO_FLOOR = 64 << 20
#: The largest zstd window a frame may ask for (zstd's own default decoding limit).
ZSTD_MAX_WINDOW = 1 << 27


def expansion_limit(compressed: int) -> int:
    """The most bytes a compressed layer of ``compressed`` bytes may decompress to."""
    return max(RATIO_FLOOR, compressed * MAX_RATIO)


class _Bounded:
    """A decompressor's output, counted against a limit; the decoder's own errors
    (``zlib.error``, ``ZstdError``) become UnsafeArchive here, at the boundary."""

    def __init__(self, inner: Readable, kind: str, limit: int, errors: tuple[type[Exception], ...]):
        self.inner, self.kind, self.limit, self.errors = inner, kind, limit, errors
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.inner.read(n)
        except UnsafeArchive:
            raise
        except self.errors as e:
            raise UnsafeArchive(f"corrupt {self.kind} stream ({e})") from None
        self.count += len(data)
        if self.count > self.limit:
            raise UnsafeArchive(
                f"{self.kind} layer expands past {self.limit} bytes (over {MAX_RATIO}x its size)",
                hint="a decompression bomb, or a layer that should not be compressed; "
                "nothing was published",
            )
        return data


class _Gunzip:
    """A read()-able gunzip of a stream, across concatenated members."""

    def __init__(self, raw: Readable):
        self.raw = raw
        self.d = zlib.decompressobj(31)
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n < 0 else n
        while not self.eof:
            if self.d.unconsumed_tail:
                out = self.d.decompress(self.d.unconsumed_tail, n)
            else:
                data = self.raw.read(CHUNK)
                if not data:
                    if not self.d.eof:
                        raise UnsafeArchive("truncated gzip stream")
                    self.eof = True
                    break
                out = self.d.decompress(data, n)
            if self.d.eof and self.d.unused_data:  # another member follows
                rest = self.d.unused_data
                self.d = zlib.decompressobj(31)
                out += self.d.decompress(rest, max(1, n - len(out)))
            if out:
                return out
        return b""


def decompressed(stream: Readable, compression: Compression, limit: int) -> Readable:
    """``stream`` decompressed, its output bounded by ``limit`` bytes."""
    if compression == "gzip":
        return _Bounded(_Gunzip(stream), "gzip", limit, (zlib.error,))
    if compression == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
            cast(Any, stream), read_across_frames=True
        )
        return _Bounded(cast(Readable, reader), "zstd", limit, (zstandard.ZstdError,))
    return stream


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _clear_lower(root: Path, directory: str, keep: set[str]) -> None:
    """Remove what lower layers put in ``directory``, keeping ``keep`` (this layer's)."""
    base = root / directory if directory else root
    if not base.is_dir():
        return
    for child in base.iterdir():
        rel = f"{directory}/{child.name}" if directory else child.name
        if rel in keep:
            if child.is_dir() and not child.is_symlink():
                _clear_lower(root, rel, keep)
            continue
        _remove(child)


class _Layer:
    def __init__(
        self,
        part: Part,
        root: Path | None,
        claim: Callable[[str], None] | None,
        on_bytes: Callable[[int], None] | None,
    ):
        self.part, self.root, self.claim, self.on_bytes = part, root, claim, on_bytes
        self.done = Unpacked()
        self.subject = part.layer.digest

    def refuse(self, why: str, name: str) -> UnsafeArchive:
        return UnsafeArchive(why, subject=f"{self.subject}: {shown(name)}")

    def _keep(self) -> set[str]:
        keep = set(self.done.dirs)
        for path in self.done.files:
            parts = path.split("/")
            keep.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        return keep

    def whiteout(self, rel: str) -> bool:
        """Apply ``rel`` if it is a whiteout (hand-built images only); True if it was."""
        parent, _, base = rel.rpartition("/")
        if not self.part.prefix or not base.startswith(WHITEOUT):
            return False
        if base == OPAQUE:
            if parent and (problem := path_problem(parent)) is not None:
                raise self.refuse(f"{problem} in a whiteout", rel)
            self.done.opaque.add(parent)
            if self.root is not None:
                _clear_lower(self.root, parent, self._keep())
            return True
        target = f"{parent}/{base[len(WHITEOUT) :]}" if parent else base[len(WHITEOUT) :]
        if (problem := path_problem(target)) is not None:
            raise self.refuse(f"{problem} in a whiteout", rel)
        if target not in self._keep():
            self.done.removed.add(target)
            if self.root is not None:
                _remove(self.root / target)
        return True

    def _parents(self, rel: str) -> None:
        """Directories up to ``rel``; a lower layer's file in the way is replaced."""
        parts = rel.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d in self.done.files:
                raise self.refuse("a directory over a file of the same layer", d)
            self.done.dirs.add(d)
            if self.root is not None:
                p = self.root / d
                if p.is_symlink() or (p.exists() and not p.is_dir()):
                    p.unlink()
                if not p.exists():
                    p.mkdir(mode=0o755)

    def directory(self, rel: str) -> None:
        if rel in self.done.files:
            raise self.refuse("a directory over a file of the same layer", rel)
        self._parents(rel + "/x")

    def raw(self, stream: Readable, resume: int) -> None:
        path, layer = self.part.raw_path or "", self.part.layer
        self.file(path, stream, layer.size - resume, known=layer.digest, offset=resume)

    def file(
        self, rel: str, body: Readable, size: int, known: str | None = None, offset: int = 0
    ) -> None:
        """Write a file of ``size`` bytes (after ``offset`` bytes already there); its
        sha256 is computed unless ``known`` (a raw layer, checked as the layer's digest)."""
        if rel in self.done.files or rel in self.done.dirs:
            raise self.refuse("duplicate entry in layer", rel)
        if self.claim is not None:
            self.claim(rel)
        self._parents(rel)
        out = None
        if self.root is not None:
            target = self.root / rel
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # a lower layer's directory: this file replaces it
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (0 if offset else os.O_TRUNC)
            fd = os.open(target, flags, 0o644)
            os.fchmod(fd, 0o644)
            if offset:
                os.ftruncate(fd, offset)
                os.lseek(fd, offset, os.SEEK_SET)
            out = os.fdopen(fd, "wb")
        h = hashlib.sha256() if known is None else None
        written = 0
        try:
            while block := body.read(CHUNK):
                if h is not None:
                    h.update(block)
                if out is not None:
                    out.write(block)
                written += len(block)
                if self.on_bytes:
                    self.on_bytes(len(block))
        finally:
            if out is not None:
                out.close()
        if written != size:
            raise self.refuse(f"file of {written} bytes where {size} were announced", rel)
        sha = known if h is None else "sha256:" + h.hexdigest()
        self.done.files[rel] = (offset + size, sha or "")

    def tar(self, stream: Readable) -> None:
        top = self.part.prefix.rstrip("/")
        for entry, body in TarReader(stream):
            name = _normalised(entry.name, runtime=bool(self.part.prefix))
            if self.part.prefix:  # a container image: only models/ counts, the rest is skipped
                if name in (WHITEOUT + top, OPAQUE):  # /models (or /) deleted below this layer
                    self.whiteout(OPAQUE)
                    continue
                if name == top or not name.startswith(self.part.prefix):
                    continue
                rel = name[len(self.part.prefix) :]
            else:
                rel = name
                if rel in ("", "."):
                    continue
            if self.whiteout(rel):
                continue
            if (problem := path_problem(rel)) is not None:
                raise self.refuse(f"{problem} in layer", entry.name)
            if entry.mode & 0o7000:
                raise self.refuse("setuid/setgid/sticky bit in layer", entry.name)
            if entry.kind == "dir":
                self.directory(rel)
            elif entry.kind == "file":
                self.file(rel, body, entry.size)
            else:
                raise self.refuse(
                    f"{entry.kind} entry in layer (only files and dirs allowed)", entry.name
                )


def _normalised(name: str, runtime: bool) -> str:
    """A member's name without ``./`` or a trailing ``/``; for a container image's layer
    (``runtime``) also without a leading ``/``, as runtimes apply it. An artifact's
    absolute path stays, and the path rule refuses it."""
    while name.startswith("./") or (runtime and name.startswith("/")):
        name = name[2:] if name.startswith("./") else name[1:]
    return name.rstrip("/")


def unpack_layer(
    stream: Readable,
    part: Part,
    root: Path | None,
    *,
    claim: Callable[[str], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    resume: int = 0,
) -> Unpacked:
    """Apply one layer under ``root`` (None: read and check only); what it did.

    ``resume``: for a raw layer, the bytes of its file already in place (``stream``
    starts there); they are hashed again from disk, not fetched.
    """
    layer = _Layer(part, root, claim, on_bytes)
    hashing = HashingReader(stream)
    if part.raw_path is not None:
        if resume and root is not None:
            with open(root / part.raw_path, "rb") as f:
                for _ in range(resume // CHUNK + 1):
                    block = f.read(min(CHUNK, resume - hashing.count))
                    if not block:
                        break
                    hashing.hasher.update(block)
                    hashing.count += len(block)
        layer.raw(hashing, resume)
    else:
        inner = decompressed(hashing, part.compression, expansion_limit(part.layer.size))
        layer.tar(inner)
        while inner.read(CHUNK):  # the tar's end padding, the compressed stream's tail
            pass
    hashing.drain()
    if hashing.digest != part.layer.digest or hashing.count != part.layer.size:
        raise DigestMismatch(
            f"layer digest mismatch (got {hashing.digest})", subject=part.layer.digest
        )
    return layer.done


def index_of(layers: list[tuple[str, Unpacked]]) -> FileIndex:
    """The files a stack of unpacked layers leaves, in order, as a file index."""
    files: dict[str, FileEntry] = {}

    def drop_under(path: str) -> None:
        for p in [p for p in files if p == path or p.startswith(path + "/")]:
            del files[p]

    for digest, done in layers:
        for d in done.opaque:
            for p in [p for p in files if not d or p.startswith(d + "/")]:
                del files[p]
        for path in done.removed:
            drop_under(path)
        for d in done.dirs:
            files.pop(d, None)  # a lower file where this layer makes a directory
        for path, (size, sha) in done.files.items():
            drop_under(path)
            files[path] = FileEntry(path=path, size=size, sha256=sha, mode=0o644, layer=digest)
    return FileIndex(files=[files[p] for p in sorted(files)])
