"""Manifest, index and descriptor models (pydantic v2), and their parsing.

Serialisation is canonical: fields in declaration order, no ``None`` fields,
compact separators. The bytes of a manifest are what its digest covers, so we
always keep the bytes we wrote or read next to any parsed model.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelcar import decode
from modelcar.errors import ImageFormatError
from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import Digest


class JsonModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def canonical(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class Platform(JsonModel):
    architecture: str
    os: str
    variant: str | None = None


class Descriptor(JsonModel):
    mediaType: str
    digest: Digest
    size: int = Field(ge=0)
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    artifactType: str | None = None


class Manifest(JsonModel):
    schemaVersion: int = 2
    mediaType: str = mt.OCI_MANIFEST
    artifactType: str | None = None
    config: Descriptor
    layers: list[Descriptor]
    #: OCI 1.1: the manifest this one refers to (an attestation's image).
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class Index(JsonModel):
    schemaVersion: int = 2
    mediaType: str = mt.OCI_INDEX
    manifests: list[Descriptor]
    annotations: dict[str, str] | None = None


def parse_manifest(data: bytes) -> Manifest:
    try:
        return Manifest.model_validate(decode.json_object(data, "manifest"))
    except ValidationError as e:
        raise ImageFormatError(f"invalid image manifest: {first_error(e)}") from None


def parse_index(data: bytes) -> Index:
    try:
        return Index.model_validate(decode.json_object(data, "image index"))
    except ValidationError as e:
        raise ImageFormatError(f"invalid image index: {first_error(e)}") from None


def error_at(e: ValidationError) -> tuple[str, str]:
    """Where pydantic's first error is (dotted, "" at the top) and what it says: the
    one reading of a validation error, for every message that names a field."""
    err = e.errors()[0]
    return ".".join(str(p) for p in err.get("loc", ())), str(err.get("msg"))


def first_error(e: ValidationError) -> str:
    loc, msg = error_at(e)
    return f"{loc}: {msg}" if loc else msg


def media_type_of(data: bytes, declared: str | None) -> str:
    """Media type of a manifest-ish document: the header if given, else its own field."""
    if declared and declared.split(";")[0].strip() in (*mt.MANIFEST_TYPES, *mt.INDEX_TYPES):
        return declared.split(";")[0].strip()
    obj = decode.json_object(data, "manifest")
    declared_type = obj.get("mediaType")
    if isinstance(declared_type, str):
        return declared_type
    return mt.OCI_INDEX if "manifests" in obj else mt.OCI_MANIFEST


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON for dict-shaped documents (image config)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
