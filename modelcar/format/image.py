"""Fetch a modelcar's manifest, config and file index, each checked against its digest."""

from __future__ import annotations

from dataclasses import dataclass

from modelcar.errors import DigestMismatch, ImageFormatError
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
    load_json,
    parse_manifest,
)
from modelcar.oci.reference import Ref
from modelcar.oci.store import ImageStore


@dataclass(frozen=True)
class ModelImage:
    digest: str
    manifest: Manifest
    index: FileIndex
    #: The layers the file index names, in manifest order (base layers are not here).
    model_layers: list[Descriptor]

    @property
    def files(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.index.files}

    @property
    def size(self) -> int:
        return sum(f.size for f in self.index.files)


def load_model_image(store: ImageStore, ref: Ref) -> ModelImage:
    """The image ``ref`` names; a pinned reference must match the manifest's own sha256."""
    fetched = store.get_manifest(ref.reference)
    actual = sha256_bytes(fetched.data)
    if ref.digest and actual != ref.digest:
        raise DigestMismatch(
            f"manifest does not match the pinned digest (got {actual})", subject=str(ref)
        )
    if fetched.media_type in mt.INDEX_TYPES:
        raise ImageFormatError(
            "expected a single-platform modelcar image, got an image index",
            subject=str(ref),
            hint="pin one of its manifests by digest",
        )
    manifest = parse_manifest(fetched.data)
    config_bytes = store.read_blob(manifest.config.digest)
    if sha256_bytes(config_bytes) != manifest.config.digest:
        raise DigestMismatch("image config does not match its digest", subject=str(ref))
    index = file_index_from_config(load_json(config_bytes, "image config"))
    if index is None:
        raise ImageFormatError(
            "image has no modelcar file index",
            subject=str(ref),
            hint="it was not built by modelcar build",
        )
    named = {f.layer for f in index.files}
    layers = [d for d in manifest.layers if d.digest in named]
    missing = named - {d.digest for d in layers}
    if missing:
        raise ImageFormatError(
            "the file index names layers the manifest does not have",
            subject=f"{ref}: {sorted(missing)[0]}",
        )
    return ModelImage(digest=actual, manifest=manifest, index=index, model_layers=layers)
