"""The file index: every model file's path, size, sha256, mode and layer.

It travels in the image config under ``dev.modelcar.index`` (decision 0001), so a
node can verify an unpacked tree file by file.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, ValidationError

from modelcar.errors import ImageFormatError
from modelcar.format import keys as mt
from modelcar.oci.digest import Digest, sha256_bytes
from modelcar.oci.manifest import JsonModel, first_error


class FileEntry(JsonModel):
    """One model file: its path under /models, size, sha256, mode and the layer holding it."""

    model_config = ConfigDict(extra="forbid")
    path: str
    size: int = Field(ge=0)
    sha256: Digest
    mode: int = 0o644
    layer: Digest


class FileIndex(JsonModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    files: list[FileEntry]

    def digest(self) -> str:
        return sha256_bytes(self.canonical())

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def file_index_from_config(config: dict[str, Any]) -> FileIndex | None:
    """The modelcar file index carried in an image config, or None if absent."""
    raw = config.get(mt.CONFIG_INDEX_KEY)
    if raw is None:
        return None
    try:
        return FileIndex.model_validate(raw)
    except ValidationError as e:
        raise ImageFormatError(f"invalid modelcar file index: {first_error(e)}") from None
