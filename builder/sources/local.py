"""A local directory (``./dir``, ``/abs/dir`` or ``file:///abs/dir``).

Symlinks are followed, but only to targets inside the source tree (or, for a
Hugging Face cache snapshot, into that repo's ``blobs/``); a link that leaves
the tree or loops is an error. Empty directories are skipped; anything that
is not a regular file or directory is refused.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from modelcar.builder.sources.base import Selection, Source, SourceFile
from modelcar.errors import SourceError, SourceFileError, SourceNotFound

DEFAULT_EXCLUDE = (".git/", ".modelcar/")


def path_from_uri(text: str) -> Path:
    if text.startswith("file://"):
        parsed = urlparse(text)
        return Path(unquote(parsed.path))
    return Path(text)


class LocalSource(Source):
    def __init__(self, location: str, selection: Selection | None = None, uri: str | None = None):
        self.root = path_from_uri(location).expanduser()
        self.selection = selection or Selection()
        if not self.root.exists():
            raise SourceNotFound("source directory does not exist", subject=str(self.root))
        if not self.root.is_dir():
            raise SourceNotFound("source is not a directory", subject=str(self.root))
        self.real_root = self.root.resolve()
        # The image records content provenance, not where this machine keeps it: the same
        # tree in two checkouts must give one digest (docs/decisions/0004-local-source-uri.md).
        self.uri = uri or f"file:{self.real_root.name}"
        self.created: int | None = None  # a plain directory has no commit time

    def _inside(self, real: Path) -> bool:
        if real == self.real_root or self.real_root in real.parents:
            return True
        # A Hugging Face cache snapshot (…/models--ORG--NAME/snapshots/<sha>/) is symlinks
        # into the repo's own blobs/ directory: those targets belong to the snapshot.
        blobs = self.real_root.parent.parent / "blobs"
        return self.real_root.parent.name == "snapshots" and blobs in real.parents

    def where(self) -> str:
        return str(self.root)

    def files(self) -> list[SourceFile]:
        out: list[SourceFile] = []
        seen_dirs: set[tuple[int, int]] = set()
        self._walk(self.root, "", seen_dirs, out)
        out.sort(key=lambda f: f.path.encode("utf-8", "surrogateescape"))
        return out

    def _walk(
        self, directory: Path, rel: str, seen: set[tuple[int, int]], out: list[SourceFile]
    ) -> None:
        try:
            st = directory.stat()
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except PermissionError:
            raise SourceFileError(
                "cannot read directory (permission denied)",
                subject=str(directory),
                hint="make it readable or --exclude it",
            ) from None
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise SourceError(
                "symlink loop in source",
                subject=str(directory),
                hint="remove the link or --exclude it",
            )
        seen.add(key)
        for entry in entries:
            path = rel + entry.name
            full = Path(entry.path)
            if entry.is_symlink():
                real = full.resolve()
                if not self._inside(real):
                    if self.selection.excluded(path) or self.selection.excluded(path + "/"):
                        continue
                    raise SourceError(
                        "symlink points outside the source",
                        subject=f"{full} -> {real}",
                        hint="copy the target into the tree or --exclude the link",
                    )
                if not real.exists():
                    raise SourceError("dangling symlink in source", subject=str(full))
            try:
                st = full.stat()
            except OSError as e:
                raise SourceFileError(f"cannot stat ({e.strerror})", subject=str(full)) from None
            if stat.S_ISDIR(st.st_mode):
                # Includes apply to files; a directory is only pruned by an exclude.
                if path + "/" in DEFAULT_EXCLUDE or self.selection.excluded(path + "/"):
                    continue
                self._walk(full, path + "/", seen, out)
                continue
            if not self.selection.wants(path):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise SourceFileError("not a regular file", subject=str(full), hint="--exclude it")
            identity = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
            out.append(
                SourceFile(
                    path=path,
                    size=st.st_size,
                    opener=_opener(full),
                    origin=str(full),
                    identity=identity,
                )
            )
        seen.discard(key)


def _opener(path: Path) -> Callable[[], BinaryIO]:
    return lambda: open(path, "rb")
