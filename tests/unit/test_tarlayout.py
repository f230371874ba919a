"""TarLayout: where every byte of a deterministic layer lies, for checking and serving."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from modelcar.format.fileindex import FileEntry
from modelcar.format.layer import layer_layout, model_member
from modelcar.oci.tarstream import TarWriter, with_parents

ZERO = "sha256:" + "0" * 64


def _files(sizes: dict[str, int]) -> tuple[list[FileEntry], dict[str, bytes]]:
    data = {p: os.urandom(n) for p, n in sizes.items()}
    entries = [
        FileEntry(
            path=p,
            size=len(b),
            sha256="sha256:" + hashlib.sha256(b).hexdigest(),
            layer=ZERO,
        )
        for p, b in sorted(data.items())
    ]
    return entries, data


def _built(files: list[FileEntry], data: dict[str, bytes]) -> bytes:
    """The layer as modelcar build writes it."""
    members = with_parents(
        model_member(f.path, f.size, opener=lambda b=data[f.path]: io.BytesIO(b)) for f in files
    )
    return b"".join(TarWriter(members))


def _regenerated(files, data, start=0, end=None) -> bytes:
    layout = layer_layout(files)
    out = b""
    for seg in layout.segments(start, end):
        if seg.fixed is not None:
            out += seg.fixed
        else:
            name = layout.members[seg.member].name.removeprefix("models/")
            at = seg.start - layout.content_at[seg.member]
            out += data[name][at : at + seg.size]
    return out


SIZES = [
    {"a.bin": 1},
    {"w/model.safetensors": 700_001, "w/empty": 0, "config.json": 512, "z/y/x.txt": 513},
]


@pytest.mark.parametrize("sizes", SIZES)
def test_the_layout_regenerates_the_built_layer_byte_for_byte(sizes):
    files, data = _files(sizes)
    built = _built(files, data)
    layout = layer_layout(files)
    assert layout.size == len(built)
    assert _regenerated(files, data) == built
    for start, end in [(0, 1), (511, 1537), (1000, len(built) - 3), (len(built) - 1024, None)]:
        assert _regenerated(files, data, start, end) == built[start:end]


@pytest.mark.parametrize("sizes", SIZES)
def test_matches_sees_every_fixed_byte_and_ignores_content(sizes):
    files, data = _files(sizes)
    built = _built(files, data)
    layout = layer_layout(files)
    # fed in uneven pieces, the built layer matches everywhere
    pos = 0
    for n in (1, 700, 4096, 10**9):
        piece = built[pos : pos + n]
        assert layout.matches(pos, piece)
        pos += len(piece)
    # a changed header byte (the mtime field of the first header) does not
    first = bytearray(built[:512])
    first[136] ^= 1
    assert not layout.matches(0, bytes(first))
    # a changed content byte is not the layout's business (the file's sha256 is)
    content_at = layout.content_at[max(layout.content_at)]
    changed = bytearray(built)
    changed[content_at] ^= 1
    assert layout.matches(0, bytes(changed))
    # past the end never matches
    assert not layout.matches(len(built), b"\0")
