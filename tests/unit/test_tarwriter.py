"""The tar writer's header bytes: what makes layers reproducible."""

from __future__ import annotations

import io
import tarfile

from modelcar.oci.tarstream import (
    BLOCK,
    Member,
    TarReader,
    TarWriter,
    archive_size,
    header_bytes,
    with_parents,
)


def test_a_file_header_is_fixed_by_path_size_and_mode_only():
    h = header_bytes(Member(name="models/config.json", size=12))
    assert len(h) == BLOCK
    info = tarfile.TarInfo.frombuf(h, "utf-8", "surrogateescape")
    assert (info.name, info.size, info.mode, info.mtime) == ("models/config.json", 12, 0o644, 0)
    assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
    assert h == header_bytes(Member(name="models/config.json", size=12))


def test_dirs_are_0755_and_long_names_get_pax_records():
    d = tarfile.TarInfo.frombuf(
        header_bytes(Member(name="models", kind="dir"))[:BLOCK], "utf-8", "surrogateescape"
    )
    assert d.type == tarfile.DIRTYPE and d.mode == 0o755
    long = header_bytes(Member(name="models/" + "x" * 200, size=1))
    assert len(long) > BLOCK and b"path=models/" in long


def test_parents_are_added_and_members_sorted_by_bytes():
    members = with_parents(
        [Member(name="models/b/z.bin", size=1), Member(name="models/a.bin", size=1)]
    )
    assert [m.name for m in members] == ["models", "models/a.bin", "models/b", "models/b/z.bin"]


def test_written_layers_have_the_announced_size_and_read_back():
    members = with_parents(
        [
            Member(name="models/a.bin", size=5, data=b"hello"),
            Member(name="models/sub/b.txt", size=700, data=b"y" * 700),
        ]
    )
    writer = TarWriter(members)
    data = b"".join(writer)
    assert len(data) == archive_size(members)
    assert writer.file_digests["models/a.bin"].startswith("sha256:")
    names = {}
    for entry, body in TarReader(io.BytesIO(data)):
        names[entry.name.rstrip("/")] = body.read()
    assert names == {
        "models": b"",
        "models/a.bin": b"hello",
        "models/sub": b"",
        "models/sub/b.txt": b"y" * 700,
    }
    with tarfile.open(fileobj=io.BytesIO(data)) as t:  # and the stdlib reads it too
        assert t.extractfile("models/a.bin").read() == b"hello"
