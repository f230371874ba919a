"""Deterministic tar layers, written and read as streams.

Writer: PAX format, entries sorted by path, one fixed mtime, owner 0:0, no
user/group names, dirs 0755 and files 0644 unless told otherwise. A layer's
bytes therefore depend only on the paths, modes and contents of its members,
and its size is known before a byte of content is read (so a registry upload
can announce it). Files larger than 8 GiB get a PAX ``size`` record.

Reader: a small ustar/PAX parser that never buffers more than a bounded header,
yields each member with a reader limited to its declared size, and reports
truncation. Policy (which members are allowed) is the caller's.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

from modelcar.errors import SourceChanged, SourceFileError, UnsafeArchive
from modelcar.oci.digest import Readable

BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
FIXED_MTIME = 0
CHUNK = 1 << 20
MAX_PAX_HEADER = 1 << 20  # a PAX/GNU-longname record larger than this is hostile

Kind = Literal["file", "dir", "symlink"]


@dataclass(frozen=True)
class Member:
    """One tar entry to write. File content comes from ``opener`` or ``data``."""

    name: str  # archive path, no leading '/', e.g. "models/config.json"
    kind: Kind = "file"
    size: int = 0
    mode: int | None = None
    linkname: str = ""
    opener: Callable[[], BinaryIO] | None = field(default=None, compare=False)
    data: bytes | None = None
    origin: str = ""  # what to name in error messages (the source path or URI)

    @property
    def effective_mode(self) -> int:
        if self.mode is not None:
            return self.mode
        return {"dir": 0o755, "symlink": 0o777}.get(self.kind, 0o644)


def _padding(size: int) -> int:
    return (BLOCK - size % BLOCK) % BLOCK


def header_bytes(m: Member) -> bytes:
    info = tarfile.TarInfo(m.name)
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = m.effective_mode
    if m.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif m.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = m.linkname
    else:
        info.type = tarfile.REGTYPE
        info.size = m.size
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def sort_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def with_parents(members: Iterable[Member]) -> list[Member]:
    """Add a 0755 directory entry for every parent, and sort by path (byte order)."""
    out: dict[str, Member] = {}
    for m in members:
        parts = m.name.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            out.setdefault(d, Member(name=d, kind="dir"))
        out[m.name.strip("/")] = m
    return [out[k] for k in sorted(out, key=sort_key)]


def archive_size(members: Iterable[Member]) -> int:
    total = len(END_OF_ARCHIVE)
    for m in members:
        total += len(header_bytes(m))
        if m.kind == "file":
            total += m.size + _padding(m.size)
    return total


@dataclass(frozen=True)
class Segment:
    """A run of a layer's bytes: fixed bytes (headers, padding, the end), or ``size``
    bytes of the content of member ``member`` (an index into the layout's members)."""

    start: int
    size: int
    fixed: bytes | None = None
    member: int = -1


class TarLayout:
    """Where every byte of the deterministic tar of ``members`` lies, without reading a
    file: the fixed bytes, and where each file's content goes.

    Two uses. A node that received a layer checks that each fixed byte it received is
    the one here (:meth:`matches`): then, its files verified, the tar this layout writes
    is byte for byte the layer it received, and it can serve the layer again from the
    files alone (:meth:`segments` for any byte range)."""

    def __init__(self, members: list[Member]):
        self.members = members
        self.segments_: list[Segment] = []
        #: Where each file member's content starts in the layer (by member index).
        self.content_at: dict[int, int] = {}
        pos = 0
        for i, m in enumerate(members):
            head = header_bytes(m)
            self.segments_.append(Segment(pos, len(head), fixed=head))
            pos += len(head)
            if m.kind != "file":
                continue
            self.content_at[i] = pos
            if m.size:
                self.segments_.append(Segment(pos, m.size, member=i))
                pos += m.size
            if pad := _padding(m.size):
                self.segments_.append(Segment(pos, pad, fixed=b"\0" * pad))
                pos += pad
        self.segments_.append(Segment(pos, len(END_OF_ARCHIVE), fixed=END_OF_ARCHIVE))
        self.size = pos + len(END_OF_ARCHIVE)
        self._starts = [s.start for s in self.segments_]

    def _first(self, pos: int) -> int:
        return max(0, bisect.bisect_right(self._starts, pos) - 1)

    def segments(self, start: int = 0, end: int | None = None) -> Iterator[Segment]:
        """The segments covering ``[start, end)``, the first and last cut to fit."""
        end = self.size if end is None else min(end, self.size)
        i = self._first(start)
        while i < len(self.segments_) and start < end:
            seg = self.segments_[i]
            lo, hi = max(start, seg.start), min(end, seg.start + seg.size)
            if lo < hi:
                cut = seg.fixed[lo - seg.start : hi - seg.start] if seg.fixed else None
                yield Segment(lo, hi - lo, fixed=cut, member=seg.member)
            i += 1

    def matches(self, pos: int, data: bytes | memoryview) -> bool:
        """True if every fixed byte of the layout within ``[pos, pos+len(data))`` equals
        the byte of ``data`` there (content bytes are the files' to check)."""
        if pos + len(data) > self.size:
            return False
        view = memoryview(data)
        for seg in self.segments(pos, pos + len(data)):
            if (
                seg.fixed is not None
                and view[seg.start - pos : seg.start - pos + seg.size] != seg.fixed
            ):
                return False
        return True


class TarWriter:
    """Yield a layer's bytes; record each file's sha256 as its content passes."""

    def __init__(self, members: list[Member], chunk: int = CHUNK, piece: int | None = None):
        """``piece``: also record the sha256 (hex) of each ``piece`` bytes of every file,
        the chunk digests of contract v1.1, in ``file_pieces``."""
        self.members = members
        self.chunk = chunk
        self.piece = piece
        self.file_digests: dict[str, str] = {}
        self.file_pieces: dict[str, list[str]] = {}

    def __iter__(self) -> Iterator[bytes]:
        for m in self.members:
            yield header_bytes(m)
            if m.kind != "file":
                continue
            if m.data is not None:
                self._check_size(m, len(m.data))
                self.file_digests[m.name] = "sha256:" + hashlib.sha256(m.data).hexdigest()
                if self.piece:
                    pieces = Pieces(self.piece)
                    pieces.update(m.data)
                    self.file_pieces[m.name] = pieces.done()
                yield m.data
            else:
                yield from self._file_chunks(m)
            if pad := _padding(m.size):
                yield b"\0" * pad
        yield END_OF_ARCHIVE

    @staticmethod
    def _check_size(m: Member, actual: int) -> None:
        if actual != m.size:
            raise SourceChanged(
                f"file size changed during the build ({m.size} -> {actual} bytes)",
                subject=m.origin or m.name,
            )

    def _file_chunks(self, m: Member) -> Iterator[bytes]:
        assert m.opener is not None, m.name
        try:
            f = m.opener()
        except FileNotFoundError:
            raise SourceChanged(
                "file vanished during the build", subject=m.origin or m.name
            ) from None
        except PermissionError:
            raise SourceFileError(
                "cannot read file (permission denied)",
                subject=m.origin or m.name,
                hint="make it readable or --exclude it",
            ) from None
        except OSError as e:
            raise SourceFileError(
                f"cannot read file ({e.strerror})", subject=m.origin or m.name
            ) from None
        h = hashlib.sha256()
        pieces = Pieces(self.piece) if self.piece else None
        remaining = m.size
        with f:
            try:
                while remaining > 0:
                    block = f.read(min(self.chunk, remaining))
                    if not block:
                        break
                    h.update(block)
                    if pieces is not None:
                        pieces.update(block)
                    remaining -= len(block)
                    yield block
                extra = f.read(1) if remaining == 0 else b""
            except OSError as e:
                raise SourceFileError(
                    f"cannot read file ({e.strerror or e})", subject=m.origin or m.name
                ) from None
        if remaining or extra:
            raise SourceChanged("file size changed during the build", subject=m.origin or m.name)
        self.file_digests[m.name] = "sha256:" + h.hexdigest()
        if pieces is not None:
            self.file_pieces[m.name] = pieces.done()


class Pieces:
    """The sha256 (hex) of each ``size`` bytes of a stream, fed in blocks of any size."""

    def __init__(self, size: int):
        self.size = size
        self.digests: list[str] = []
        self._h = hashlib.sha256()
        self._n = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.size - self._n)
            self._h.update(view[:take])
            self._n += take
            view = view[take:]
            if self._n == self.size:
                self.digests.append(self._h.hexdigest())
                self._h, self._n = hashlib.sha256(), 0

    def done(self) -> list[str]:
        """Every digest, the last (short) piece's included."""
        if self._n:
            self.digests.append(self._h.hexdigest())
            self._h, self._n = hashlib.sha256(), 0
        return self.digests


# --- reading ---------------------------------------------------------------

EntryKind = Literal["file", "dir", "symlink", "hardlink", "char", "block", "fifo", "other"]
_TYPES: dict[bytes, EntryKind] = {
    b"0": "file",
    b"\0": "file",
    b"7": "file",
    b"5": "dir",
    b"2": "symlink",
    b"1": "hardlink",
    b"3": "char",
    b"4": "block",
    b"6": "fifo",
}


@dataclass
class Entry:
    name: str
    kind: EntryKind
    size: int
    mode: int
    linkname: str = ""
    pax: dict[str, str] = field(default_factory=dict)


def _nts(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _num(field_: bytes) -> int:
    if field_ and field_[0] & 0x80:  # base-256 (GNU) encoding
        value = int.from_bytes(field_[1:], "big")
        return value
    text = field_.split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise UnsafeArchive("malformed number in tar header") from None


def _parse_pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise UnsafeArchive("malformed PAX record") from None
        if length <= 0 or pos + length > len(data):
            raise UnsafeArchive("malformed PAX record length")
        record = data[sp + 1 : pos + length - 1]
        key, eq, value = record.partition(b"=")
        if not eq:
            raise UnsafeArchive("malformed PAX record")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class _Limited(io.RawIOBase):
    """Read at most ``size`` bytes of the current member from the archive."""

    def __init__(self, reader: TarReader, size: int):
        self._r = reader
        self.remaining = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        if n < 0 or n > self.remaining:
            n = self.remaining
        data = self._r._read_some(n)
        self.remaining -= len(data)
        return data


class TarReader:
    """Iterate the members of a tar stream without seeking and with bounded memory."""

    def __init__(self, stream: Readable, max_pax: int = MAX_PAX_HEADER):
        self.stream = stream
        self.max_pax = max_pax
        self.offset = 0
        self._pending: _Limited | None = None
        self._pending_pad = 0

    def _read_some(self, n: int) -> bytes:
        data = self.stream.read(n)
        if not data:
            raise UnsafeArchive("truncated tar (unexpected end of layer)")
        self.offset += len(data)
        return data

    def _read_exact(self, n: int) -> bytes:
        parts = []
        while n > 0:
            d = self._read_some(min(n, CHUNK))
            parts.append(d)
            n -= len(d)
        return b"".join(parts)

    def _read_block(self) -> bytes:
        """One header block; a network stream may hand it over in pieces."""
        block = self.stream.read(BLOCK)
        while 0 < len(block) < BLOCK:
            more = self.stream.read(BLOCK - len(block))
            if not more:
                break
            block += more
        return block

    def _skip_pending(self) -> None:
        if self._pending is not None:
            while self._pending.remaining > 0:
                self._pending.read(CHUNK)
            self._pending = None
        if self._pending_pad:
            self._read_exact(self._pending_pad)
            self._pending_pad = 0

    def _special(self, size: int, what: str) -> bytes:
        if size > self.max_pax:
            raise UnsafeArchive(f"{what} of {size} bytes exceeds the {self.max_pax}-byte bound")
        data = self._read_exact(size)
        self._read_exact(_padding(size))
        return data

    def __iter__(self) -> Iterator[tuple[Entry, Readable]]:
        pax: dict[str, str] = {}
        longname = longlink = None
        while True:
            self._skip_pending()
            block = self._read_block()
            if len(block) < BLOCK:
                if not block and not pax:
                    return  # tolerate a missing end-of-archive marker only at a boundary
                raise UnsafeArchive("truncated tar header")
            self.offset += BLOCK
            if block == b"\0" * BLOCK:
                return
            stored = _num(block[148:156])
            actual = sum(block[:148]) + 8 * 32 + sum(block[156:])
            if stored != actual:
                raise UnsafeArchive(
                    "bad tar header checksum", subject=f"offset {self.offset - BLOCK}"
                )
            typeflag = block[156:157]
            size = _num(block[124:136])
            if typeflag in (b"x", b"g"):
                records = _parse_pax(self._special(size, "PAX header"))
                if typeflag == b"x":
                    pax.update(records)
                continue
            if typeflag in (b"L", b"K"):
                value = _nts(self._special(size, "GNU long name"))
                if typeflag == b"L":
                    longname = value
                else:
                    longlink = value
                continue
            name = _nts(block[0:100])
            prefix = _nts(block[345:500]) if block[257:262] == b"ustar" else ""
            if prefix:
                name = f"{prefix}/{name}"
            name = pax.get("path", longname or name)
            linkname = pax.get("linkpath", longlink or _nts(block[157:257]))
            if "size" in pax:
                try:
                    size = int(pax["size"])
                except ValueError:
                    raise UnsafeArchive("malformed PAX size") from None
            if size < 0:
                raise UnsafeArchive("negative size in tar header")
            kind = _TYPES.get(typeflag, "other")
            entry = Entry(
                name=name,
                kind=kind,
                size=size if kind == "file" else 0,
                mode=_num(block[100:108]),
                linkname=linkname,
                pax=dict(pax),
            )
            pax, longname, longlink = {}, None, None
            # Non-file members with a size (rare; hostile or exotic) have their data skipped.
            data_size = size if kind in ("file", "other") else 0
            self._pending = _Limited(self, data_size)
            self._pending_pad = _padding(data_size)
            yield entry, self._pending
