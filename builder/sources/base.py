"""The interface every source implements (local dir now; Hugging Face, MLflow, S3 later).

A source lists its files with size (and sha256 where it already knows it),
opens each as a stream, names itself by an immutable URI, and says when its
content was made (commit time), which becomes the image's ``created``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative, '/'-separated, e.g. "tokenizer/vocab.txt"
    size: int
    opener: Callable[[], BinaryIO] = field(compare=False)
    origin: str = ""  # what to name in messages: an absolute path or a URI
    sha256: str | None = None  # known up front (HF LFS oid, S3 checksum), else None
    identity: str | None = None  # stat identity for the stat cache; None disables caching
    remote: bool = False  # reading it costs a download: read it once, while uploading


class Source(Protocol):
    """What a build reads. ``files`` is required; the rest are optional capabilities
    with defaults here, which a source class inherits by naming ``Source`` as its base
    (a structural match without them is a type error, not a silent ``getattr``)."""

    uri: str  # immutable name of what was read: file:///abs, hf://org/name@<sha>, ...
    created: int | None  # seconds since the epoch of the source's commit, if it has one

    def files(self) -> list[SourceFile]: ...

    def where(self) -> str:
        """Where the files are read from, for messages (a local root, or the URI)."""
        return self.uri

    def annotations(self) -> dict[str, str]:
        """What the source adds to the image's annotations (MLflow: the run id)."""
        return {}

    def provenance(self) -> dict[str, dict[str, str]] | None:
        """The object versions read, for the config and provenance (S3: ETags)."""
        return None


def source_annotations(source: Source) -> dict[str, str]:
    """What a source adds to an image's annotations (MLflow: the run id), if anything."""
    return dict(source.annotations())


def _matches(path: str, pattern: str) -> bool:
    if pattern.endswith("/"):
        return path.startswith(pattern) or f"/{pattern}" in f"/{path}"
    if fnmatch.fnmatchcase(path, pattern):
        return True
    return "/" not in pattern and fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)


@dataclass(frozen=True)
class Selection:
    """Include/exclude globs. ``dir/`` matches a directory; a bare glob also matches basenames."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()

    def excluded(self, path: str) -> bool:
        return any(_matches(path, p) for p in self.exclude)

    def wants(self, path: str) -> bool:
        if self.include and not any(_matches(path, p) for p in self.include):
            return False
        return not self.excluded(path)
