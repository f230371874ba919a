"""What a build records, typed: the builder writes it (``--json``, the API's version
record, provenance), the API keeps it with the version, the web UI reads it. Here in
the core so the apps share one model instead of reading a dict by string keys."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError


class LayerRecord(BaseModel):
    digest: str
    size: int
    files: list[str]
    uploaded: bool


class SigningRecord(BaseModel):
    key_id: str
    attestations: list[str]  # predicate types
    seconds: float


class BuildRecord(BaseModel):
    reference: str
    digest: str
    tags: list[str]
    source: str
    created: str
    size: int
    files: int
    layers: list[LayerRecord]
    base: str
    base_digest: str | None
    #: One manifest per platform, under an index, when there is more than one.
    platforms: list[str]
    index_digest: str
    #: Wall-clock start and end (UTC), for provenance; ``seconds`` is measured monotonic.
    started: str = ""
    finished: str = ""
    seconds: float
    bytes_uploaded: int
    bytes_skipped: int
    #: Filled by `build --sign-key` once the image is signed and attested.
    signed: SigningRecord | None = None
    #: modelcar, or modelpack (`--format modelpack`: ``digest`` is the ModelPack's).
    format: str = "modelcar"
    #: The ModelPack manifest's digest (`--format modelpack|both`).
    modelpack_digest: str | None = None
    #: What the source adds to the image's annotations (an MLflow run id).
    source_annotations: dict[str, str] = {}


def read_build(data: dict[str, Any]) -> BuildRecord | None:
    """A version's stored build record, or None where it is absent or not one (a
    version registered by hand, or by an older builder)."""
    try:
        return BuildRecord.model_validate(data)
    except ValidationError:
        return None
