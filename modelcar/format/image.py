"""Fetch a modelcar's manifest, config and file index, each checked against its digest.

A multi-platform modelcar is an image index whose manifests differ only in their base:
every one must carry the same model layers and file index, or it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelcar import decode
from modelcar.errors import DigestMismatch, ImageFormatError, NotAModelcar
from modelcar.format.chunks import ChunkIndex, chunk_index_from_config
from modelcar.format.fileindex import (
    FileEntry,
    FileIndex,
    file_index_from_config,
)
from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import sha256_bytes
from modelcar.oci.manifest import (
    Descriptor,
    Manifest,
    parse_index,
    parse_manifest,
)
from modelcar.oci.platform import host_platform, platform_images, platform_str, same_platform
from modelcar.oci.reference import Ref
from modelcar.oci.store import ImageStore


@dataclass(frozen=True)
class ModelImage:
    digest: str
    manifest: Manifest
    index: FileIndex
    #: The layers the file index names, in manifest order (base layers are not here).
    model_layers: list[Descriptor]
    #: An index's images by platform (``linux/arm64``, …), their model content alike;
    #: empty for a single manifest. ``manifest`` is then this machine's platform's, or
    #: the first's.
    variants: dict[str, ModelImage] = field(default_factory=dict)
    #: The manifests and configs read, by digest (bytes, media type), every variant's:
    #: what a node keeps to serve the image again.
    documents: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    #: Contract v1.1: each file's offset in its layer and its chunks' sha256; None: v1.
    chunks: ChunkIndex | None = None

    @property
    def platforms(self) -> list[str]:
        return list(self.variants)

    @property
    def files(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.index.files}

    @property
    def size(self) -> int:
        return sum(f.size for f in self.index.files)


MAX_PLATFORMS = 64


def load_model_image(store: ImageStore, ref: Ref) -> ModelImage:
    """The image ``ref`` names; a pinned reference must match the manifest's own sha256."""
    fetched = store.get_manifest(ref.reference)
    actual = sha256_bytes(fetched.data)
    if ref.digest and actual != ref.digest:
        raise DigestMismatch(
            f"manifest does not match the pinned digest (got {actual})", subject=str(ref)
        )
    if fetched.media_type in mt.INDEX_TYPES:
        return _load_index(store, ref, fetched.data, actual, fetched.media_type)
    return _load_manifest(store, str(ref), fetched.data, actual, fetched.media_type)


def _load_index(
    store: ImageStore, ref: Ref, data: bytes, digest: str, media_type: str
) -> ModelImage:
    children = platform_images(parse_index(data).manifests, str(ref))
    if not children:
        raise ImageFormatError("image index lists no platform images", subject=str(ref))
    if len(children) > MAX_PLATFORMS:
        raise ImageFormatError(
            f"image index lists over {MAX_PLATFORMS} platforms", subject=str(ref)
        )
    images = {}
    for d in children:
        name = platform_str(d.platform)  # type: ignore[arg-type]  # is_runnable: not None
        child = store.get_manifest(d.digest)
        if sha256_bytes(child.data) != d.digest:
            raise DigestMismatch(
                "a platform manifest does not match its digest", subject=f"{ref}: {name}"
            )
        images[name] = (
            d,
            _load_manifest(store, f"{ref} ({name})", child.data, d.digest, child.media_type),
        )
    first = next(iter(images.values()))[1]
    for name, (_, image) in images.items():
        if (
            image.index.digest() != first.index.digest()
            or image.chunks != first.chunks
            or [(d.digest, d.size) for d in image.model_layers]
            != [(d.digest, d.size) for d in first.model_layers]
        ):
            raise ImageFormatError(
                "platform variants differ in model content",
                subject=f"{ref}: {name}",
                hint="every platform's manifest must carry the same model layers and file index",
            )
    host = host_platform()
    chosen = next((img for d, img in images.values() if same_platform(d.platform, host)), first)  # type: ignore[arg-type]  # is_runnable: not None
    return ModelImage(
        digest=digest,
        manifest=chosen.manifest,
        index=chosen.index,
        model_layers=chosen.model_layers,
        chunks=chosen.chunks,
        variants={name: img for name, (_, img) in images.items()},
        documents={
            digest: (data, media_type),
            **{k: v for _, img in images.values() for k, v in img.documents.items()},
        },
    )


def _load_manifest(
    store: ImageStore, subject: str, data: bytes, digest: str, media_type: str
) -> ModelImage:
    manifest = parse_manifest(data)
    config_bytes = store.read_blob(manifest.config.digest)
    if sha256_bytes(config_bytes) != manifest.config.digest:
        raise DigestMismatch("image config does not match its digest", subject=subject)
    config = decode.json_object(config_bytes, "image config")
    index = file_index_from_config(config)
    if index is None:
        raise NotAModelcar(
            "image has no modelcar file index",
            subject=subject,
            hint="it was not built by modelcar build",
        )
    named = {f.layer for f in index.files}
    layers = [d for d in manifest.layers if d.digest in named]
    missing = named - {d.digest for d in layers}
    if missing:
        raise ImageFormatError(
            "the file index names layers the manifest does not have",
            subject=f"{subject}: {sorted(missing)[0]}",
        )
    try:
        chunks = chunk_index_from_config(config, index)
    except ImageFormatError as e:
        where = f"{subject}: {e.subject}" if e.subject else subject
        raise ImageFormatError(e.message, subject=where) from None
    return ModelImage(
        digest=digest,
        manifest=manifest,
        index=index,
        model_layers=layers,
        chunks=chunks,
        documents={
            digest: (data, media_type),
            manifest.config.digest: (config_bytes, manifest.config.mediaType),
        },
    )
