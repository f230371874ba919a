"""Resume a layer in the middle after a crash, without keeping a copy of the blob.

While a layer streams into staging, its journal records the bytes that are not
file contents (tar headers, padding) and where each file's body starts. Every
``checkpoint_bytes`` the open file and the journal are fsynced and the layer
offset is recorded. After a restart, the bytes up to the last checkpoint are
rebuilt from the journal and the staged files (local reads, no network), fed
through the same hashing and tar checks, and the download continues with an
HTTP range request at the checkpoint. So every byte is still verified, and the
layer digest is still computed over all of it.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

from modelcar.oci.digest import CHUNK

#: One journal record: ``{"at", "raw"}``, ``{"at", "file", "size"}`` or ``{"ckpt"}``.
Segment = dict[str, Any]


class LayerJournal:
    def __init__(self, path: Path, staging: Path):
        self.path = path
        self.staging = staging
        self.resume_at = 0
        self._segments: list[Segment] = []
        self._fh: BinaryIO | None = None

    def load(self) -> int:
        """Read the journal; keep what the last checkpoint covers; return its offset."""
        if not self.path.exists():
            return 0
        kept: list[Segment] = []
        good_len = 0
        pending: list[Segment] = []
        length = 0
        with open(self.path, "rb") as f:
            for line in f:
                length += len(line)
                if not line.endswith(b"\n"):
                    break  # torn last write
                try:
                    rec = json.loads(line)
                except ValueError:
                    break
                if "ckpt" in rec:
                    kept.extend(pending)
                    pending = []
                    self.resume_at = rec["ckpt"]
                    good_len = length
                else:
                    pending.append(rec)
        self._segments = kept
        with open(self.path, "r+b") as f:
            f.truncate(good_len)
        return self.resume_at

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")  # noqa: SIM115

    def _append(self, rec: Segment) -> None:
        assert self._fh is not None
        self._fh.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")

    def raw(self, offset: int, data: bytes) -> None:
        self._append({"at": offset, "raw": base64.b64encode(data).decode()})

    def file_start(self, offset: int, path: str, size: int) -> None:
        self._append({"at": offset, "file": path, "size": size})

    def checkpoint(self, offset: int, fd: int | None) -> None:
        """Make everything before ``offset`` durable, then say so."""
        assert self._fh is not None
        if fd is not None:
            os.fsync(fd)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._append({"ckpt": offset})
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def replay(self) -> Replay:
        return Replay(self._segments, self.staging, self.resume_at)


class Replay:
    """The layer's bytes ``[0, end)``, rebuilt from journal segments and staged files."""

    def __init__(self, segments: list[Segment], staging: Path, end: int):
        self._segments = sorted(segments, key=lambda r: r["at"])
        self._staging = staging
        self.end = end
        self.pos = 0
        self._i = 0
        self._file: BinaryIO | None = None

    def read(self, n: int) -> bytes:
        while self.pos < self.end and self._i < len(self._segments):
            seg = self._segments[self._i]
            seg_end = seg["at"] + (seg["size"] if "file" in seg else len(self._raw(seg)))
            if self.pos >= seg_end:
                self._next()
                continue
            if self.pos < seg["at"]:
                raise OSError("journal has a gap; the layer restarts from zero")
            want = min(n, self.end - self.pos, seg_end - self.pos, CHUNK)
            inner = self.pos - seg["at"]
            if "file" in seg:
                if self._file is None:
                    self._file = open(self._staging / seg["file"], "rb")  # noqa: SIM115
                self._file.seek(inner)
                data = self._file.read(want)
                if len(data) != want:
                    raise OSError("a staged file is shorter than its journal says")
            else:
                data = self._raw(seg)[inner : inner + want]
            self.pos += len(data)
            return data
        if self.pos < self.end:
            raise OSError("journal ends before its checkpoint")
        return b""

    def _next(self) -> None:
        self._i += 1
        if self._file is not None:
            self._file.close()
            self._file = None

    @staticmethod
    def _raw(seg: Segment) -> bytes:
        if "_bytes" not in seg:
            seg["_bytes"] = base64.b64decode(seg["raw"])
        data: bytes = seg["_bytes"]
        return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
