"""Read one model layer as a stream and hold it to the file index.

Only directories and regular files under ``models/`` are allowed; absolute
paths, ``..``, links, devices, FIFOs, setuid/setgid bits, duplicates, files the
index does not name or whose size or sha256 differ are all refused. The
layer's own digest is checked over every byte read. An optional ``sink``
receives each file's bytes (the cache daemon writes them; ``verify`` does not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

from modelcar.errors import DigestMismatch, ImageFormatError, UnsafeArchive
from modelcar.format import keys as mk
from modelcar.format.fileindex import FileEntry
from modelcar.format.paths import path_problem, shown
from modelcar.oci.digest import CHUNK, HashingReader, Readable
from modelcar.oci.tarstream import Member, TarLayout, TarReader, with_parents

PREFIX = mk.MODELS_DIR + "/"


class FileSink(Protocol):
    def write(self, data: bytes) -> int: ...
    def close(self) -> None: ...


def model_member(path: str, size: int, **more: object) -> Member:
    """A model file as the builder writes it into a layer: under ``models/``, 0644
    unless a ``mode`` is given (``more``: ``opener``, ``origin``, ``mode``)."""
    return Member(name=f"{PREFIX}{path}", size=size, **more)  # type: ignore[arg-type]


def layer_layout(files: list[FileEntry]) -> TarLayout:
    """The layout of the deterministic layer holding ``files`` (with their parents),
    as ``modelcar build`` writes it: what a node regenerates the layer from."""
    return TarLayout(with_parents(model_member(f.path, f.size, mode=f.mode) for f in files))


def member_path(name: str, layer: str) -> str | None:
    """The path under models/ for a tar member name, None for the models/ dir itself.
    The path must pass the same rule the builder applies (:mod:`modelcar.modelpath`)."""
    clean = name.removeprefix("./").rstrip("/")
    if clean == mk.MODELS_DIR:
        return None
    rel = clean.removeprefix(PREFIX)
    problem = path_problem(rel)
    if problem is not None:
        raise UnsafeArchive(f"{problem} in layer", subject=f"{layer}: {shown(name)}")
    if rel == clean:
        raise UnsafeArchive("path outside /models in layer", subject=f"{layer}: {shown(name)}")
    return rel


def read_model_layer(
    stream: Readable,
    digest: str,
    expected: dict[str, FileEntry],
    sink: Callable[[str, FileEntry], FileSink] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_file: Callable[[str], None] | None = None,
    sink_checks: bool = False,
) -> set[str]:
    """Walk a layer; return the paths it held. Raises on anything unsafe or wrong.
    ``on_file`` is called with each file's path once its sha256 matched the index.
    ``sink_checks``: the sink checks every byte of a non-empty file itself (against
    the chunk digests of contract v1.1, which the config pins as it pins the index),
    so the file's sha256 is not computed a second time."""
    hashing = HashingReader(stream)
    seen: set[str] = set()
    dirs: set[str] = set()
    for entry, body in TarReader(hashing):
        rel = member_path(entry.name, digest)
        if entry.mode & 0o7000:
            raise UnsafeArchive(
                "setuid/setgid/sticky bit in layer", subject=f"{digest}: {entry.name}"
            )
        if entry.kind == "dir":
            if rel is not None:
                if rel in seen:
                    raise UnsafeArchive(
                        "directory over a file in layer", subject=f"{digest}: {rel}"
                    )
                dirs.add(rel)
            continue
        if entry.kind != "file":
            raise UnsafeArchive(
                f"{entry.kind} entry in layer (only files and dirs allowed)",
                subject=f"{digest}: {entry.name}",
            )
        if rel is None:
            raise UnsafeArchive("file named like the models dir", subject=f"{digest}: {entry.name}")
        if rel in seen or rel in dirs:
            raise UnsafeArchive("duplicate entry in layer", subject=f"{digest}: {rel}")
        want = expected.get(rel)
        if want is None:
            raise UnsafeArchive("file not in the image's file index", subject=f"{digest}: {rel}")
        if want.layer != digest:
            raise UnsafeArchive(
                "file is in another layer than the index says", subject=f"{digest}: {rel}"
            )
        if entry.size != want.size:
            raise UnsafeArchive(
                f"file size {entry.size} differs from the index ({want.size})",
                subject=f"{digest}: {rel}",
            )
        seen.add(rel)
        out = sink(rel, want) if sink else None
        h = hashlib.sha256()
        rehash = not (sink_checks and out is not None and want.size)
        try:
            while block := body.read(CHUNK):
                if rehash:
                    h.update(block)
                if out is not None:
                    out.write(block)
                if on_bytes:
                    on_bytes(len(block))
        finally:
            if out is not None:
                out.close()
        actual = "sha256:" + h.hexdigest()
        if rehash and actual != want.sha256:
            raise DigestMismatch(
                f"file sha256 differs from the index (got {actual})", subject=f"{digest}: {rel}"
            )
        if on_file is not None:
            on_file(rel)
    hashing.drain()
    if hashing.digest != digest:
        raise DigestMismatch(f"layer digest mismatch (got {hashing.digest})", subject=digest)
    absent = next((p for p, f in expected.items() if f.layer == digest and p not in seen), None)
    if absent is not None:
        raise ImageFormatError(
            "a file of the file index is not in the layer it names", subject=f"{digest}: {absent}"
        )
    return seen
