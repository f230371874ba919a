"""The chunk index (image contract v1.1): each file's place in its layer and the sha256
of each fixed chunk of it.

It travels in the image config under ``dev.modelcar.chunks``, beside the file index,
and lists the files larger than one chunk (a smaller file is one chunk: the whole
file, its sha256 the file index's, its offset where the layer's layout puts it). It is
optional: a v1 image has none and is verified file by file. With it a node can
release a range of a file as soon as the chunks under it verify, and fetch a range of a
layer blob (``offset`` + the chunk's place) ahead of the sequential pull. Chunk ``i`` of
a file covers its bytes ``[i * chunkSize, min((i + 1) * chunkSize, size))``; an empty
file has no chunk. Decision 0034 says why 64 MiB and why the config.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator

from modelcar.errors import ImageFormatError
from modelcar.format import keys as mk
from modelcar.format.fileindex import FileEntry, FileIndex
from modelcar.format.layer import PREFIX, layer_layout
from modelcar.oci.manifest import JsonModel, first_error
from modelcar.oci.tarstream import TarLayout

MiB = 1 << 20
#: The builder's chunk: 2,240 digests (≈ 150 KB of config) for a 140 GB model.
CHUNK_SIZE = 64 * MiB
_HEX = "0123456789abcdef"


class FileChunks(JsonModel):
    """One file: where its content starts in its layer blob, and its chunks' sha256 (hex)."""

    model_config = ConfigDict(extra="forbid")
    offset: int = Field(ge=0)
    sha256: list[str]

    @field_validator("sha256")
    @classmethod
    def _hex(cls, values: list[str]) -> list[str]:
        for v in values:
            if len(v) != 64 or not set(v) <= set(_HEX):
                raise ValueError("a chunk digest is 64 lower-case hex digits")
        return values


class ChunkIndex(JsonModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(1, ge=1, le=1)
    chunkSize: int = Field(ge=MiB, le=1 << 30)
    files: dict[str, FileChunks]

    @field_validator("chunkSize")
    @classmethod
    def _power_of_two(cls, size: int) -> int:
        if size & (size - 1):
            raise ValueError("the chunk size is a power of two")
        return size

    def digests(self, entry: FileEntry) -> list[str]:
        """Each chunk's sha256 (hex) of the file ``entry``."""
        listed = self.files.get(entry.path)
        if listed is not None:
            return listed.sha256
        return [entry.sha256.removeprefix("sha256:")] if entry.size else []

    def count(self, size: int) -> int:
        """How many chunks a file of ``size`` bytes has."""
        return -(-size // self.chunkSize)

    def span(self, size: int, first: int, end: int) -> range:
        """The chunks under bytes ``[first, end)`` of a file of ``size`` bytes."""
        if end <= first:
            return range(0)
        return range(first // self.chunkSize, min(self.count(size), -(-end // self.chunkSize)))

    def bounds(self, size: int, i: int) -> tuple[int, int]:
        """Chunk ``i``'s bytes ``[start, end)`` in its file."""
        start = i * self.chunkSize
        return start, min(size, start + self.chunkSize)


def content_offsets(layout: TarLayout) -> dict[str, int]:
    """Where each file's content starts in the layer ``layout`` writes, by model path."""
    return {
        m.name.removeprefix(PREFIX): layout.content_at[i]
        for i, m in enumerate(layout.members)
        if i in layout.content_at
    }


def chunk_index_from_config(config: dict[str, Any], index: FileIndex) -> ChunkIndex | None:
    """The chunk index in an image config, held to its file index, or None (a v1 image).

    Every file of the index is there with one digest per chunk, and its offset is where
    the deterministic layer the builder writes puts its content: a node that fetches a
    range at that offset reads the bytes the chunk digest covers, or fails its check."""
    raw = config.get(mk.CONFIG_CHUNKS_KEY)
    if raw is None:
        return None
    try:
        chunks = ChunkIndex.model_validate(raw)
    except ValidationError as e:
        raise ImageFormatError(f"invalid modelcar chunk index: {first_error(e)}") from None
    if set(chunks.files) != {f.path for f in index.files if f.size > chunks.chunkSize}:
        raise ImageFormatError(
            "the chunk index does not list the file index's files larger than a chunk"
        )
    by_layer: dict[str, list[FileEntry]] = {}
    for f in index.files:
        by_layer.setdefault(f.layer, []).append(f)
    for files in by_layer.values():
        own = sorted(files, key=lambda f: f.path)
        offsets = content_offsets(layer_layout(own))
        for f in own:
            entry = chunks.files.get(f.path)
            if entry is None:
                continue
            if len(entry.sha256) != chunks.count(f.size):
                raise ImageFormatError(
                    "the chunk index has the wrong number of chunks", subject=f.path
                )
            if offsets.get(f.path) != entry.offset:
                raise ImageFormatError(
                    "the chunk index puts a file where its layer does not", subject=f.path
                )
    return chunks
