"""``build --format modelpack|both``: a CNCF ModelPack artifact, one raw layer per file.

Each file is read once from the source and streamed to the registry as a raw blob,
hashed on the way; a blob the target already holds (its sha256 known from the source
or from the stat cache) is not read at all. With ``both``, the modelcar is then built
from those blobs, not from the source again, and the ModelPack manifest refers to the
modelcar's (``subject``), tagged ``<tag>-modelpack`` and listed by the referrers API or
its tag-schema fallback.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from modelcar.builder.build import (
    BuildOptions,
    created_time,
    source_files,
    tags_for,
    utc_now,
)
from modelcar.builder.progress import Progress
from modelcar.builder.sources.base import Source, SourceFile, source_annotations
from modelcar.builder.statcache import StatCache, default_path, layer_key
from modelcar.contract.build import BuildRecord, LayerRecord
from modelcar.errors import DigestMismatch, SourceFileError
from modelcar.format import keys as mk
from modelcar.format import modelpack
from modelcar.format.fileindex import FileEntry, FileIndex
from modelcar.format.paths import path_problem, shown
from modelcar.oci import mediatypes as mt
from modelcar.oci import referrers
from modelcar.oci.digest import sha256_bytes
from modelcar.oci.manifest import Descriptor
from modelcar.oci.reference import Ref
from modelcar.oci.store import ImageStore

MiB = 1 << 20


@dataclass
class RawBlobs:
    """The source's files, each now a blob in the target (path -> digest, size)."""

    files: dict[str, tuple[str, int]] = field(default_factory=dict)
    uploaded: dict[str, bool] = field(default_factory=dict)
    bytes_sent: int = 0


def upload_raw(
    target: ImageStore, files: list[SourceFile], options: BuildOptions, progress: Progress
) -> RawBlobs:
    for f in files:
        if (problem := path_problem(f.path)) is not None:
            raise SourceFileError(
                f"cannot package this file: {problem}", subject=shown(f.origin or f.path)
            )
    cache = StatCache(default_path() if options.stat_cache else None)
    out = RawBlobs()
    progress.add_total("upload", sum(f.size for f in files))

    def one(f: SourceFile) -> tuple[str, int, bool]:
        key = layer_key([b"modelpack-raw", f.path.encode()], [f.identity]) if f.identity else None
        known = f.sha256 or ((cache.get(key) or (None,))[0] if key else None)
        if known and target.has_blob(known):
            progress.advance("upload", f.size)
            return known, 0, False

        def chunks() -> Iterator[bytes]:
            with f.opener() as fh:
                while block := fh.read(MiB):
                    progress.advance("upload", len(block))
                    yield block

        pushed = target.push_blob(f.size, chunks)
        if pushed is None:  # this store needs the digest first: hash, then send
            digest = known or _hash(f)
            sent = target.put_blob(digest, f.size, chunks)
        else:
            digest, sent = pushed
        if f.sha256 and digest != f.sha256:
            raise DigestMismatch(
                "file does not match the sha256 its source reported", subject=f.origin or f.path
            )
        if key:
            cache.put(key, digest, f.size, {}, {})
        return digest, sent, True

    try:
        with ThreadPoolExecutor(max_workers=max(1, options.jobs)) as pool:
            results = list(pool.map(one, files))
    finally:
        cache.close()
    for f, (digest, sent, uploaded) in zip(files, results, strict=True):
        out.files[f.path] = (digest, f.size)
        out.uploaded[f.path] = uploaded
        out.bytes_sent += sent
    return out


def _hash(f: SourceFile) -> str:
    import hashlib

    h = hashlib.sha256()
    with f.opener() as fh:
        while block := fh.read(MiB):
            h.update(block)
    return "sha256:" + h.hexdigest()


class _BlobFile:
    """A blob of the target, opened like a source file."""

    def __init__(self, store: ImageStore, digest: str):
        self._stack = contextlib.ExitStack()
        self._f = self._stack.enter_context(store.open_blob(digest))

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> _BlobFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StoredSource(Source):
    """The source again, its files now read from their raw blobs in the target."""

    def __init__(self, inner: Source, target: ImageStore, raw: RawBlobs, files: list[SourceFile]):
        self.inner = inner
        self.uri, self.created = inner.uri, inner.created
        self._files = [_stored(f, target, raw.files[f.path][0]) for f in files]

    def files(self) -> list[SourceFile]:
        return self._files

    def where(self) -> str:
        return self.inner.where()

    def annotations(self) -> dict[str, str]:
        return self.inner.annotations()

    def provenance(self) -> dict[str, dict[str, str]] | None:
        return self.inner.provenance()


def _stored(f: SourceFile, target: ImageStore, digest: str) -> SourceFile:
    opener = functools.partial(_open, target, digest)
    return replace(f, sha256=digest, identity=None, remote=True, opener=opener)


def _open(store: ImageStore, digest: str) -> BinaryIO:
    return _BlobFile(store, digest)  # type: ignore[return-value]  # read/close/with, as used


def push(
    target: ImageStore,
    target_ref: Ref,
    raw: RawBlobs,
    source: Source,
    name: str,
    tags: list[str],
    subject: Descriptor | None = None,
) -> tuple[str, Descriptor]:
    """The ModelPack manifest over ``raw``; its digest and descriptor."""
    layers = [
        modelpack.layer(path, digest, size) for path, (digest, size) in sorted(raw.files.items())
    ]
    run_id = source_annotations(source).get(mk.SOURCE_RUN_ID)
    pinned = mk.hf_commit(source.uri)
    revision = pinned[1] if pinned else run_id
    created = created_time(source)
    config = modelpack.config(name, layers, created if created else None, revision, source.uri)
    config_digest = sha256_bytes(config)
    target.put_blob(config_digest, len(config), lambda: [config])
    annotations = {mk.SOURCE: source.uri}
    manifest = modelpack.manifest(config, config_digest, layers, subject, annotations)
    digest = target.put_manifest(manifest, mt.OCI_MANIFEST, sha256_bytes(manifest))
    described = Descriptor(
        mediaType=mt.OCI_MANIFEST,
        digest=digest,
        size=len(manifest),
        artifactType=modelpack.ARTIFACT_TYPE,
    )
    if subject is not None:
        referrers.link(target, subject.digest, described)
    for tag in tags:  # last, as for a modelcar
        target.put_manifest(manifest, mt.OCI_MANIFEST, tag)
    return digest, described


def record(
    target_ref: Ref,
    digest: str,
    raw: RawBlobs,
    source: Source,
    tags: list[str],
    seconds: float,
    started: str,
    finished: str,
) -> BuildRecord:
    """A build record for a ModelPack-only build."""
    index = FileIndex(
        files=[
            FileEntry(path=p, size=s, sha256=d, layer=d) for p, (d, s) in sorted(raw.files.items())
        ]
    )
    return BuildRecord(
        reference=str(target_ref.pinned(digest)),
        digest=digest,
        tags=tags,
        source=source.uri,
        source_annotations=source_annotations(source),
        created="",
        size=index.total_size,
        files=len(index.files),
        layers=[
            LayerRecord(digest=d, size=s, files=[p], uploaded=raw.uploaded[p])
            for p, (d, s) in sorted(raw.files.items())
        ],
        base="",
        base_digest=None,
        platforms=[],
        index_digest=index.digest(),
        started=started,
        finished=finished,
        seconds=seconds,
        bytes_uploaded=raw.bytes_sent,
        bytes_skipped=sum(s for p, (_, s) in raw.files.items() if not raw.uploaded[p]),
        format="modelpack",
        modelpack_digest=digest,
    )


def build(
    fmt: str, source: Source, target_ref: Ref, options: BuildOptions, progress: Progress
) -> BuildRecord:
    """``--format modelpack`` or ``both`` (``modelcar`` is Builder alone)."""
    import time

    from modelcar.builder.build import Builder
    from modelcar.oci.stores import open_store

    started, started_on = time.monotonic(), utc_now()
    files = source_files(source)
    target = open_store(target_ref, options.store, create=True)
    progress.log(f"uploading {len(files)} files as ModelPack raw layers from {source.uri}")
    raw = upload_raw(target, files, options, progress)
    name = target_ref.name.rsplit("/", 1)[-1]
    tags = tags_for(target_ref, options.tags)
    if fmt == "modelpack":
        digest, _ = push(target, target_ref, raw, source, name, tags)
        return record(
            target_ref,
            digest,
            raw,
            source,
            tags,
            round(time.monotonic() - started, 3),
            started_on,
            utc_now(),
        )
    stored = StoredSource(source, target, raw, files)
    built = Builder(stored, target_ref, options, progress, target=target).run()
    top = target.get_manifest(built.digest)
    subject = Descriptor(mediaType=top.media_type, digest=built.digest, size=len(top.data))
    mp_digest, _ = push(
        target, target_ref, raw, source, name, [f"{t}-modelpack" for t in built.tags], subject
    )
    return built.model_copy(
        update={
            "format": "modelcar",
            "modelpack_digest": mp_digest,
            "started": started_on,
            "seconds": round(time.monotonic() - started, 3),
            "bytes_uploaded": built.bytes_uploaded + raw.bytes_sent,
        }
    )
