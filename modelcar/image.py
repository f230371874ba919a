"""Manifest, index, config and file-index models (pydantic v2).

Serialisation is canonical: fields in declaration order, no ``None`` fields,
compact separators. The bytes of a manifest are what its digest covers, so we
always keep the bytes we wrote or read next to any parsed model.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelcar import mediatypes as mt
from modelcar.digest import Digest, sha256_bytes
from modelcar.errors import ImageFormatError


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def canonical(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class Platform(_Model):
    architecture: str
    os: str
    variant: str | None = None


class Descriptor(_Model):
    mediaType: str
    digest: Digest
    size: int = Field(ge=0)
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    artifactType: str | None = None


class Manifest(_Model):
    schemaVersion: int = 2
    mediaType: str = mt.OCI_MANIFEST
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] | None = None


class Index(_Model):
    schemaVersion: int = 2
    mediaType: str = mt.OCI_INDEX
    manifests: list[Descriptor]
    annotations: dict[str, str] | None = None


class FileEntry(_Model):
    """One model file: its path under /models, size, sha256, mode and the layer holding it."""

    model_config = ConfigDict(extra="forbid")
    path: str
    size: int = Field(ge=0)
    sha256: Digest
    mode: int = 0o644
    layer: Digest


class FileIndex(_Model):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    files: list[FileEntry]

    def digest(self) -> str:
        return sha256_bytes(self.canonical())

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ImageFormatError(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ImageFormatError(f"{what} is not a JSON object")
    return obj


def parse_manifest(data: bytes) -> Manifest:
    try:
        return Manifest.model_validate(load_json(data, "manifest"))
    except ValidationError as e:
        raise ImageFormatError(f"invalid image manifest: {_first_error(e)}") from None


def parse_index(data: bytes) -> Index:
    try:
        return Index.model_validate(load_json(data, "image index"))
    except ValidationError as e:
        raise ImageFormatError(f"invalid image index: {_first_error(e)}") from None


def file_index_from_config(config: dict[str, Any]) -> FileIndex | None:
    """The modelcar file index carried in an image config, or None if absent."""
    raw = config.get(mt.CONFIG_INDEX_KEY)
    if raw is None:
        return None
    try:
        return FileIndex.model_validate(raw)
    except ValidationError as e:
        raise ImageFormatError(f"invalid modelcar file index: {_first_error(e)}") from None


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err.get('msg')}" if loc else str(err.get("msg"))


def media_type_of(data: bytes, declared: str | None) -> str:
    """Media type of a manifest-ish document: the header if given, else its own field."""
    if declared and declared.split(";")[0].strip() in (*mt.MANIFEST_TYPES, *mt.INDEX_TYPES):
        return declared.split(";")[0].strip()
    obj = load_json(data, "manifest")
    if isinstance(obj.get("mediaType"), str):
        return obj["mediaType"]
    return mt.OCI_INDEX if "manifests" in obj else mt.OCI_MANIFEST


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON for dict-shaped documents (image config)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
