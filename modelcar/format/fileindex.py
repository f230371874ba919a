"""The file index: every model file's path, size, sha256, mode and layer.

It travels in the image config under ``dev.modelcar.index`` (decision 0001), so a
node can verify an unpacked tree file by file.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from modelcar.errors import ImageFormatError
from modelcar.format import keys as mk
from modelcar.format.paths import path_problem, shown
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

    @field_validator("path")
    @classmethod
    def _model_path(cls, path: str) -> str:
        """Every path passes the one model-path rule (no ``/etc/hostname``, no ``..``)."""
        if (problem := path_problem(path)) is not None:
            raise ValueError(f"{problem}: {shown(path)}")
        return path


class FileIndex(JsonModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    files: list[FileEntry]

    @model_validator(mode="after")
    def _one_entry_per_path(self) -> FileIndex:
        """No path twice, and no file where another entry needs a directory."""
        paths: set[str] = set()
        for f in self.files:
            if f.path in paths:
                raise ValueError(f"the same path twice: {shown(f.path)}")
            paths.add(f.path)
        for f in self.files:
            parts = f.path.split("/")
            for i in range(1, len(parts)):
                if (parent := "/".join(parts[:i])) in paths:
                    raise ValueError(f"a file where a directory must be: {shown(parent)}")
        return self

    def digest(self) -> str:
        return sha256_bytes(self.canonical())

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


def file_index_from_config(config: dict[str, Any]) -> FileIndex | None:
    """The modelcar file index carried in an image config, or None if absent."""
    raw = config.get(mk.CONFIG_INDEX_KEY)
    if raw is None:
        return None
    try:
        return FileIndex.model_validate(raw)
    except ValidationError as e:
        raise ImageFormatError(f"invalid modelcar file index: {first_error(e)}") from None
