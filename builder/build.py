"""Build a modelcar image from a source into a registry repository or an OCI layout.

Per layer, in parallel: know its digest (stat cache, else one hashing pass that
also yields each file's sha256), skip it if the target has it, else stream it
(re-reading the files; the target verifies the digest). Then the base blobs,
the config (with the file index), the manifest by digest, and only then the
tags: a failed build never moves a tag.

A multi-platform base (an image index) gives one config and manifest per platform
over the same model layers, and an index over them: the tags name the index.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelcar.builder.base import BaseImage, load_bases
from modelcar.builder.plan import LayerPlan, plan_layers
from modelcar.builder.progress import Progress
from modelcar.builder.sources.base import Source, SourceFile, source_annotations
from modelcar.builder.statcache import StatCache, default_path, layer_key
from modelcar.contract.build import BuildRecord, LayerRecord
from modelcar.errors import (
    BlobTooLarge,
    DigestMismatch,
    ImageTooLarge,
    ModelcarError,
    SourceChanged,
    SourceEmpty,
    SourceFileError,
)
from modelcar.format import keys as mk
from modelcar.format.chunks import CHUNK_SIZE, ChunkIndex, FileChunks, content_offsets
from modelcar.format.fileindex import FileEntry, FileIndex
from modelcar.format.image import load_model_image
from modelcar.format.layer import model_member
from modelcar.format.paths import path_problem, shown
from modelcar.http.body import MAX_CONFIG_WRITE_BYTES, MAX_MANIFEST_BYTES, human_limit
from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import sha256_bytes
from modelcar.oci.manifest import Descriptor, Index, Manifest, Platform, canonical_json
from modelcar.oci.reference import DEFAULT_TAG, Ref
from modelcar.oci.store import ImageStore, StoreOptions
from modelcar.oci.stores import open_store
from modelcar.oci.tarstream import (
    Member,
    TarLayout,
    TarWriter,
    archive_size,
    header_bytes,
    with_parents,
)

MiB = 1 << 20


@dataclass
class BuildOptions:
    base: str | None = None
    tags: list[str] = field(default_factory=list)
    jobs: int = 4
    max_layers: int = 100
    large_file_threshold: int = 64 * MiB
    max_layer_size: int | None = None
    stat_cache: bool = True
    store: StoreOptions = field(default_factory=StoreOptions)
    #: Platforms to build for (None: every platform of the base).
    platforms: list[Platform] | None = None


@dataclass
class _LayerResult:
    descriptor: Descriptor
    file_digests: dict[str, str]
    uploaded: int
    skipped: int
    #: each file's chunk digests (contract v1.1), by member name
    file_chunks: dict[str, list[str]]


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def created_time(source: Source) -> int:
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        return int(env)
    return source.created or 0


def _members(layer: LayerPlan) -> list[Member]:
    return with_parents(
        model_member(f.path, f.size, opener=f.opener, origin=f.origin) for f in layer.files
    )


def _layer_annotations(layer: LayerPlan, digests: dict[str, str]) -> dict[str, str]:
    paths = [f.path for f in layer.files]
    ann = {mk.LAYER_ROLE: "model"}
    if len(paths) == 1:
        f = layer.files[0]
        ann[mt.TITLE] = f.path
        ann[mk.FILE_SHA256] = digests[f"{mk.MODELS_DIR}/{f.path}"]
        ann[mk.FILE_SIZE] = str(f.size)
    else:
        ann[mt.TITLE] = f"{paths[0]} … {paths[-1]} ({len(paths)} files)"
    return ann


@dataclass
class PreviousImage:
    """What the target tag held before this build: enough to skip unchanged layers."""

    files: dict[str, FileEntry]
    layer_sizes: dict[str, int]
    chunks: ChunkIndex | None


def previous_image(target: ImageStore, ref: Ref) -> PreviousImage | None:
    if ref.digest:
        return None
    try:
        image = load_model_image(target, ref.with_tag(ref.tag or DEFAULT_TAG))
    except ModelcarError:
        return None  # no previous image, or not a modelcar: build everything
    return PreviousImage(
        files=image.files,
        layer_sizes={d.digest: d.size for d in image.model_layers},
        chunks=image.chunks,
    )


def source_files(source: Source) -> list[SourceFile]:
    """The files a build packages; SourceEmpty when there are none."""
    files = source.files()
    if not files:
        raise SourceEmpty("source has no files to package", subject=source.uri)
    return files


def chunk_index(plan: list[LayerPlan], results: list[_LayerResult]) -> ChunkIndex:
    """Contract v1.1: each file's content offset in its layer and its chunks' sha256."""
    files = {}
    for layer, r in zip(plan, results, strict=True):
        offsets = content_offsets(TarLayout(_members(layer)))
        for f in layer.files:
            if f.size > CHUNK_SIZE:  # a smaller file is its one chunk (its sha256)
                files[f.path] = FileChunks(
                    offset=offsets[f.path], sha256=r.file_chunks[f"{mk.MODELS_DIR}/{f.path}"]
                )
    return ChunkIndex(chunkSize=CHUNK_SIZE, files=files)


def tags_for(ref: Ref, extra: list[str]) -> list[str]:
    """The tags a build moves: the target's (``latest`` when it names none), then ``--tag``s."""
    return list(dict.fromkeys([ref.tag or DEFAULT_TAG, *extra]))


class Builder:
    def __init__(
        self,
        source: Source,
        target_ref: Ref,
        options: BuildOptions,
        progress: Progress | None = None,
        *,
        target: ImageStore | None = None,
    ):
        self.source = source
        self.target_ref = target_ref
        self.target = target  # default: the store target_ref names
        self.options = options
        self.progress = progress or Progress(quiet=True)
        self.cache = StatCache(default_path() if options.stat_cache else None)
        self.previous: PreviousImage | None = None

    # --- one layer -------------------------------------------------------

    @staticmethod
    def _cache_key(members: list[Member], layer: LayerPlan) -> str | None:
        identities = [f.identity for f in layer.files]
        if not all(identities):
            return None
        return layer_key([header_bytes(m) for m in members], identities)  # type: ignore[arg-type]  # identities: all checked non-None above

    def _known_digest(
        self, members: list[Member], layer: LayerPlan
    ) -> tuple[str, dict[str, str], dict[str, list[str]]] | None:
        """The layer's digest without reading a byte: from the stat cache, or from the
        target's previous image when the source reports every file's sha256. (Whether
        the target holds it is the caller's one HEAD.)"""
        key = self._cache_key(members, layer)
        hit = self.cache.get(key) if key else None
        if hit:
            self.progress.advance("hash", layer.size)
            return hit[0], hit[2], hit[3]
        prev = self.previous
        chunks = prev.chunks if prev else None
        if prev is None or chunks is None or chunks.chunkSize != CHUNK_SIZE:
            return None  # a v1 image's layers are read again, for their chunks
        if not all(f.sha256 for f in layer.files):
            return None
        entries = [prev.files.get(f.path) for f in layer.files]
        if not all(
            e and e.size == f.size and e.sha256 == f.sha256
            for e, f in zip(entries, layer.files, strict=True)
        ):
            return None
        digest = entries[0].layer  # type: ignore[union-attr]  # entries: all checked non-None above
        same_layer = {p for p, e in prev.files.items() if e.layer == digest}
        if same_layer != {f.path for f in layer.files}:
            return None
        if prev.layer_sizes.get(digest) != archive_size(members):
            return None
        self.progress.advance("hash", layer.size)
        return (
            digest,
            {f"{mk.MODELS_DIR}/{f.path}": f.sha256 for f in layer.files},  # type: ignore[misc]  # sha256: all checked non-None above
            {f"{mk.MODELS_DIR}/{e.path}": chunks.digests(e) for e in entries if e is not None},
        )

    def _digest_layer(
        self, members: list[Member], layer: LayerPlan
    ) -> tuple[str, dict[str, str], dict[str, list[str]]]:
        key = self._cache_key(members, layer)
        writer = TarWriter(members, piece=CHUNK_SIZE)
        h = hashlib.sha256()
        for chunk in writer:
            h.update(chunk)
            self.progress.advance("hash", len(chunk))
        digest = "sha256:" + h.hexdigest()
        if key:
            self.cache.put(
                key, digest, archive_size(members), writer.file_digests, writer.file_pieces
            )
        return digest, writer.file_digests, writer.file_pieces

    def _layer(self, target: ImageStore, layer: LayerPlan) -> _LayerResult:
        members = _members(layer)
        size = archive_size(members)
        limit = self.options.max_layer_size
        if limit and size > limit:
            raise BlobTooLarge(
                f"layer of {size} bytes exceeds the registry's limit of {limit}",
                subject=layer.files[0].origin or layer.files[0].path,
            )
        known = self._known_digest(members, layer)
        if known is None and any(f.remote for f in layer.files):
            pushed = self._push_once(target, members, layer, size)
            if pushed is not None:
                return pushed
        digest, file_digests, file_chunks = known or self._digest_layer(members, layer)
        desc = Descriptor(
            mediaType=mt.OCI_LAYER_TAR,
            digest=digest,
            size=size,
            annotations=_layer_annotations(layer, file_digests),
        )
        if target.has_blob(digest):
            self.progress.advance("upload", size)
            return _LayerResult(desc, file_digests, 0, size, file_chunks)

        def chunks() -> Iterator[bytes]:
            for chunk in TarWriter(members):
                self.progress.advance("upload", len(chunk))
                yield chunk

        try:
            sent = target.put_blob(digest, size, chunks)
        except DigestMismatch:
            names = ", ".join(f.origin or f.path for f in layer.files[:3])
            raise SourceChanged("file content changed during the build", subject=names) from None
        return _LayerResult(desc, file_digests, sent, 0, file_chunks)

    def _push_once(
        self, target: ImageStore, members: list[Member], layer: LayerPlan, size: int
    ) -> _LayerResult | None:
        """Remote files: one download, hashed while it uploads (no local copy)."""
        writers: list[TarWriter] = []

        def chunks() -> Iterator[bytes]:
            writer = TarWriter(members, piece=CHUNK_SIZE)
            writers.append(writer)
            for chunk in writer:
                self.progress.advance("hash", len(chunk))
                self.progress.advance("upload", len(chunk))
                yield chunk

        pushed = target.push_blob(size, chunks)
        if pushed is None:  # the store needs the digest first: hash, then upload
            return None
        digest, sent = pushed
        file_digests, file_chunks = writers[-1].file_digests, writers[-1].file_pieces
        key = self._cache_key(members, layer)
        if key:
            self.cache.put(key, digest, size, file_digests, file_chunks)
        desc = Descriptor(
            mediaType=mt.OCI_LAYER_TAR,
            digest=digest,
            size=size,
            annotations=_layer_annotations(layer, file_digests),
        )
        return _LayerResult(desc, file_digests, sent, 0, file_chunks)

    def _copy_base_blob(self, target: ImageStore, base: BaseImage, desc: Descriptor) -> int:
        if target.has_blob(desc.digest):
            return 0
        if desc.digest in base.blobs:
            data = base.blobs[desc.digest]
            return target.put_blob(desc.digest, len(data), lambda: [data])
        assert base.store is not None
        if target.mount_blob(desc.digest, base.store):
            return 0
        store = base.store

        def chunks() -> Iterator[bytes]:
            with store.open_blob(desc.digest) as f:
                while block := f.read(MiB):
                    yield block

        return target.put_blob(desc.digest, desc.size, chunks)

    # --- the whole image -------------------------------------------------

    def run(self) -> BuildRecord:
        started = time.monotonic()
        started_on = utc_now()
        files = source_files(self.source)
        for f in files:
            problem = path_problem(f.path)
            if problem is not None:
                raise SourceFileError(
                    f"cannot package this file: {problem}",
                    subject=shown(f.origin or f.path),
                    hint="rename it or --exclude it; README: Model paths",
                )
        bases = load_bases(self.options.base, self.options.store, self.options.platforms)
        base_layers = max(len(b.layers) for b in bases.images)
        plan = plan_layers(
            files, self.options.large_file_threshold, self.options.max_layers - base_layers
        )
        for base in bases.images:
            self._check_sizes(files, base, plan)
        target = self.target or open_store(self.target_ref, self.options.store, create=True)
        if any(f.sha256 for f in files):  # only then can its index vouch for a layer
            self.previous = previous_image(target, self.target_ref)
        total = sum(f.size for f in files)
        self.progress.add_total("hash", total)
        self.progress.add_total("upload", sum(archive_size(_members(layer)) for layer in plan))
        on = f" for {', '.join(bases.platforms)}" if bases.is_index else ""
        self.progress.log(
            f"building {len(files)} files ({total} bytes) in {len(plan)} layers{on} "
            f"from {self.source.where()}"
        )
        base_blobs = {d.digest: (b, d) for b in bases.images for d in b.layers}

        with ThreadPoolExecutor(max_workers=max(1, self.options.jobs)) as pool:
            base_futs = [
                pool.submit(self._copy_base_blob, target, b, d) for b, d in base_blobs.values()
            ]
            layer_futs = [pool.submit(self._layer, target, layer) for layer in plan]
            futures: list[Future[Any]] = [*base_futs, *layer_futs]
            _, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in pending:
                fut.cancel()
            for fut in futures:  # re-raise the first failure, in plan order
                error = fut.exception() if fut.done() and not fut.cancelled() else None
                if error is not None:
                    raise error
            base_sent = sum(f.result() for f in base_futs)
            results = [f.result() for f in layer_futs]

        index = FileIndex(
            files=[
                FileEntry(
                    path=f.path,
                    size=f.size,
                    sha256=r.file_digests[f"{mk.MODELS_DIR}/{f.path}"],
                    layer=r.descriptor.digest,
                )
                for layer, r in zip(plan, results, strict=True)
                for f in layer.files
            ]
        )
        chunks = chunk_index(plan, results)
        actual = {e.path: e.sha256 for e in index.files}
        for f in files:
            if f.sha256 and f.sha256 != actual[f.path]:
                raise DigestMismatch(
                    "file does not match the sha256 its source reported", subject=f.origin or f.path
                )

        sent = 0
        children = []
        for base in bases.images:
            config_bytes, manifest_bytes = self._documents(base, plan, results, index, chunks)
            config_digest = sha256_bytes(config_bytes)
            config_chunks: functools.partial[list[bytes]] = functools.partial(list, [config_bytes])
            sent += target.put_blob(config_digest, len(config_bytes), config_chunks)
            child = target.put_manifest(
                manifest_bytes, mt.OCI_MANIFEST, sha256_bytes(manifest_bytes)
            )
            sent += len(manifest_bytes)
            size = len(manifest_bytes)
            children.append(
                Descriptor(
                    mediaType=mt.OCI_MANIFEST, digest=child, size=size, platform=base.platform
                )
            )
        top, media_type = manifest_bytes, mt.OCI_MANIFEST
        if bases.is_index:
            annotations = self._annotations(bases.name, bases.digest, index)
            top = Index(manifests=children, annotations=annotations).canonical()
            media_type = mt.OCI_INDEX
            target.put_manifest(top, media_type, sha256_bytes(top))
            sent += len(top)
        digest = sha256_bytes(top)
        tags = tags_for(self.target_ref, self.options.tags)
        for tag in tags:  # last: the tag moves only once everything it names is in place
            target.put_manifest(top, media_type, tag)

        uploaded = sum(r.uploaded for r in results) + base_sent + sent
        return BuildRecord(
            reference=str(self.target_ref.pinned(digest)),
            digest=digest,
            tags=tags,
            source=self.source.uri,
            source_annotations=source_annotations(self.source),
            created=_iso(created_time(self.source)),
            size=index.total_size,
            files=len(index.files),
            layers=[
                LayerRecord(
                    digest=r.descriptor.digest,
                    size=r.descriptor.size,
                    files=[f.path for f in layer.files],
                    uploaded=r.uploaded > 0,
                )
                for layer, r in zip(plan, results, strict=True)
            ],
            base=bases.name,
            base_digest=bases.digest,
            platforms=bases.platforms,
            index_digest=index.digest(),
            started=started_on,
            finished=utc_now(),
            seconds=round(time.monotonic() - started, 3),
            bytes_uploaded=uploaded,
            bytes_skipped=sum(r.skipped for r in results),
        )

    def _documents(
        self,
        base: BaseImage,
        plan: list[LayerPlan],
        results: list[_LayerResult],
        index: FileIndex,
        chunks: ChunkIndex,
    ) -> tuple[bytes, bytes]:
        """The config and the manifest bytes."""
        created = _iso(created_time(self.source))
        config = self._config(base, results, plan, index, created)
        config[mk.CONFIG_CHUNKS_KEY] = chunks.model_dump(mode="json")
        config_bytes = canonical_json(config)
        annotations = self._annotations(base.name, base.digest, index)
        manifest = Manifest(
            config=Descriptor(
                mediaType=mt.OCI_CONFIG,
                digest=sha256_bytes(config_bytes),
                size=len(config_bytes),
            ),
            layers=[*base.layers, *(r.descriptor for r in results)],
            annotations=annotations,
        )
        return config_bytes, manifest.canonical()

    def _annotations(
        self, base_name: str, base_digest: str | None, index: FileIndex
    ) -> dict[str, str]:
        """The manifest's (and an index's) annotations."""
        annotations = {
            mt.CREATED: _iso(created_time(self.source)),
            mk.CONTRACT: mk.CONTRACT_VERSION,
            mk.SOURCE: self.source.uri,
            mk.SIZE: str(index.total_size),
            mk.FILE_COUNT: str(len(index.files)),
            mk.INDEX_DIGEST: index.digest(),
            mk.BASE_NAME: base_name,
        }
        annotations.update(source_annotations(self.source))  # e.g. the MLflow run id
        if base_digest:
            annotations[mk.BASE_DIGEST] = base_digest
            annotations[mt.BASE_DIGEST_OCI] = base_digest
        return annotations

    def _check_sizes(self, files: list[SourceFile], base: BaseImage, plan: list[LayerPlan]) -> None:
        """Refuse, before a byte is uploaded, an image whose config or manifest would be
        over the 4 MiB that registries and runtimes accept. Digests have a fixed length,
        so placeholder ones give the exact sizes."""
        placeholder = "sha256:" + "0" * 64
        results = []
        hex_placeholder = "0" * 64
        for layer in plan:
            digests = {f"{mk.MODELS_DIR}/{f.path}": placeholder for f in layer.files}
            pieces = {
                f"{mk.MODELS_DIR}/{f.path}": [hex_placeholder] * -(-f.size // CHUNK_SIZE)
                for f in layer.files
            }
            desc = Descriptor(
                mediaType=mt.OCI_LAYER_TAR,
                digest=placeholder,
                size=archive_size(_members(layer)),
                annotations=_layer_annotations(layer, digests),
            )
            results.append(_LayerResult(desc, digests, 0, 0, pieces))
        index = FileIndex(
            files=[
                FileEntry(path=f.path, size=f.size, sha256=placeholder, layer=placeholder)
                for layer in plan
                for f in layer.files
            ]
        )
        config, manifest = self._documents(base, plan, results, index, chunk_index(plan, results))
        for what, size, limit in (
            ("image config", len(config), MAX_CONFIG_WRITE_BYTES),
            ("manifest", len(manifest), MAX_MANIFEST_BYTES),
        ):
            if size > limit:
                raise ImageTooLarge(
                    f"the {what} would be {size} bytes, over the {human_limit(limit)} that "
                    f"registries and runtimes accept ({len(files)} files in {len(plan)} layers; "
                    f"the file index holds one entry per file)",
                    subject=self.source.uri,
                    hint="package many small files into one archive file, or --exclude some",
                )

    def _config(
        self,
        base: BaseImage,
        results: list[_LayerResult],
        plan: list[LayerPlan],
        index: FileIndex,
        created: str,
    ) -> dict[str, Any]:
        config = dict(base.config)
        config["created"] = created
        rootfs = dict(config.get("rootfs") or {"type": "layers"})
        rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), *(r.descriptor.digest for r in results)]
        config["rootfs"] = rootfs
        history = list(config.get("history") or [])
        for layer in plan:
            names = layer.files[0].path if len(layer.files) == 1 else f"{len(layer.files)} files"
            history.append({"created": created, "created_by": f"modelcar build: /models/{names}"})
        config["history"] = history
        config[mk.CONFIG_INDEX_KEY] = index.model_dump(mode="json")
        objects = self.source.provenance()
        if objects is not None:  # which object versions were read (S3 ETags)
            config[mk.SOURCE_OBJECTS] = objects
        return config
