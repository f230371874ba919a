"""The tar writer and reader on their own: determinism, >8 GiB files, hostile archives."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from modelcar.errors import DigestMismatch, UnsafeArchive
from modelcar.format.fileindex import FileEntry
from modelcar.format.layer import read_model_layer
from modelcar.oci.tarstream import Member, TarReader, TarWriter, archive_size, with_parents

SHA0 = "sha256:" + "0" * 64


class _IterReader:
    """A read()-able stream over the writer's chunks: no whole layer in memory."""

    def __init__(self, chunks):
        self._it = iter(chunks)
        self._buf = b""

    def read(self, n=-1):
        while len(self._buf) < n or n < 0:
            block = next(self._it, b"")
            if not block:
                break
            self._buf += block
        out, self._buf = (self._buf, b"") if n < 0 else (self._buf[:n], self._buf[n:])
        return out


def test_writer_is_deterministic_and_sized():
    members = with_parents(
        [Member("models/b/x", size=3, data=b"abc"), Member("models/a", size=1, data=b"z")]
    )
    one = b"".join(TarWriter(members))
    two = b"".join(TarWriter(list(reversed(members))[::-1]))
    assert one == two and len(one) == archive_size(members)
    infos = tarfile.open(fileobj=io.BytesIO(one)).getmembers()
    assert [i.name for i in infos] == ["models", "models/a", "models/b", "models/b/x"]
    assert all(i.mtime == 0 and i.uid == 0 and i.gid == 0 and i.uname == "" for i in infos)


class _Sparse(io.RawIOBase):
    """A file of ``size`` bytes, all zero but the last five ("tail!"), read from memory:
    what a sparse file gives, without the kernel's cost of reading 8 GiB of holes."""

    ZEROS = bytes(1 << 20)

    def __init__(self, size: int):
        self.size, self.pos = size, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = min(n if n >= 0 else self.size, self.size - self.pos, len(self.ZEROS))
        if n <= 0:
            return b""
        start, end = self.pos, self.pos + n
        self.pos = end
        tail = self.size - 5
        if end <= tail:
            return self.ZEROS[:n]
        zeros = max(0, tail - start)
        return self.ZEROS[:zeros] + b"tail!"[max(start, tail) - tail : end - tail]


@pytest.mark.slow
def test_file_over_8_gib_round_trips():
    size = (8 << 30) + 4097  # past the 8 GiB ustar limit: needs a PAX size record
    members = with_parents(
        [
            Member(
                "models/huge.safetensors",
                size=size,
                opener=lambda: _Sparse(size),
                origin="huge.safetensors",
            )
        ]
    )
    writer = TarWriter(members)
    seen = {}
    zeros = _Sparse.ZEROS
    for entry, body in TarReader(_IterReader(writer)):
        if entry.kind == "file":  # every byte read back: zeros, then the tail
            total, last = 0, b""
            while block := body.read(1 << 20):
                if block != zeros[: len(block)]:
                    last = block[-5:]
                    assert block[:-5] == zeros[: len(block) - 5]
                total += len(block)
            seen[entry.name] = (total, last)
    assert seen["models/huge.safetensors"] == (size, b"tail!")
    # the writer's sha256 of the file against sha256sum of the same bytes (8 GiB + 4092
    # zero bytes, then "tail!"), computed once
    assert writer.file_digests["models/huge.safetensors"] == (
        "sha256:c880ad4ae9795e741a0fb0d5244529ec0068b193805a1fe8d11a1047c67737e8"
    )
    # The standard library reads the header (a PAX size record) the same way.
    head = b"".join(_take(TarWriter(members), 8192))
    tf = tarfile.open(fileobj=io.BytesIO(head), mode="r|")
    infos = [tf.next(), tf.next()]
    assert infos[1].name == "models/huge.safetensors" and infos[1].size == size


def _take(chunks, n):
    got = 0
    for c in chunks:
        yield c[: n - got]
        got += len(c)
        if got >= n:
            return


def _tar(*entries: tuple[tarfile.TarInfo, bytes | None], fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def _special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, None


def _check(layer: bytes, files: dict[str, bytes]):
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    index = {
        p: FileEntry(
            path=p, size=len(d), sha256="sha256:" + hashlib.sha256(d).hexdigest(), layer=digest
        )
        for p, d in files.items()
    }
    return read_model_layer(io.BytesIO(layer), digest, index)


GOOD = {"a.bin": b"weights"}


def test_good_layer_passes():
    assert _check(_tar(_file("models/a.bin", b"weights")), GOOD) == {"a.bin"}


@pytest.mark.parametrize(
    "layer, reason",
    [
        (_tar(_file("models/../etc/passwd", b"x")), "'..'"),
        (_tar(_file("/models/a.bin", b"weights")), "absolute"),
        (_tar(_file("etc/a.bin", b"weights")), "outside /models"),
        (_tar(_special("models/a.bin", tarfile.SYMTYPE, "/etc/passwd")), "symlink"),
        (_tar(_special("models/a.bin", tarfile.LNKTYPE, "models/b")), "hardlink"),
        (_tar(_special("models/dev", tarfile.CHRTYPE)), "char"),
        (_tar(_special("models/fifo", tarfile.FIFOTYPE)), "fifo"),
        (_tar(_file("models/a.bin", b"weights", mode=0o4755)), "setuid"),
        (_tar(_file("models/a.bin", b"weights"), _file("models/a.bin", b"weights")), "duplicate"),
        (_tar(_file("models/other.bin", b"weights")), "not in the image's file index"),
        (_tar(_file("models/a.bin", b"weightz")), "sha256 differs"),
        (_tar(_file("models/a.bin", b"weights!")), "size"),
        (_tar(_file("models/a.bin", b"weights"))[:700], "truncated"),
    ],
)
def test_hostile_layers_are_refused(layer, reason):
    with pytest.raises((UnsafeArchive, DigestMismatch)) as err:
        _check(layer, GOOD)
    assert reason in err.value.one_line()


def test_huge_pax_header_is_refused_before_it_is_read():
    header = tarfile.TarInfo("x")
    header.type, header.size = tarfile.XHDTYPE, 1 << 32
    block = header.tobuf(tarfile.USTAR_FORMAT)
    with pytest.raises(UnsafeArchive, match="exceeds"):
        list(TarReader(io.BytesIO(block + b"\0" * 4096)))


def test_bad_checksum_is_refused():
    layer = bytearray(_tar(_file("models/a.bin", b"weights")))
    layer[0] ^= 1
    with pytest.raises(UnsafeArchive, match="checksum"):
        list(TarReader(io.BytesIO(bytes(layer))))


class _Dribble(io.RawIOBase):
    """A stream that hands out at most 1..7 bytes per read, like a socket after a resume."""

    def __init__(self, data: bytes):
        self._data, self._pos, self._n = data, 0, 0

    def read(self, n: int = -1) -> bytes:
        self._n = self._n % 7 + 1
        take = self._n if n < 0 else min(n, self._n)
        out = self._data[self._pos : self._pos + take]
        self._pos += len(out)
        return out


def test_short_reads_are_not_truncation():
    layer = _tar(_file("models/a.bin", b"weights" * 300))
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    body = b"weights" * 300
    entry = FileEntry(
        path="a.bin",
        size=len(body),
        sha256="sha256:" + hashlib.sha256(body).hexdigest(),
        layer=digest,
    )
    assert read_model_layer(_Dribble(layer), digest, {"a.bin": entry}) == {"a.bin"}
