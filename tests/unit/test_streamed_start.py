"""Streamed start's pure parts: SigV4 (checked against botocore's own signer), byte
ranges, the board readers wait on, and the chunk index held to its layer."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from email.message import Message

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from modelcar.cache_daemon import sigv4
from modelcar.cache_daemon.s3 import byte_range
from modelcar.cache_daemon.verified import Board
from modelcar.errors import ImageFormatError
from modelcar.format.chunks import (
    ChunkIndex,
    FileChunks,
    chunk_index_from_config,
    content_offsets,
)
from modelcar.format.fileindex import FileEntry, FileIndex
from modelcar.format.keys import CONFIG_CHUNKS_KEY
from modelcar.format.layer import layer_layout

SECRET = "fleet-token-0123456789abcdef"
MiB = 1 << 20


def signed(url: str, secret: str = SECRET, region: str = "eu-west-3", **headers: str):
    """A request as botocore signs it: (method, target, headers)."""
    request = AWSRequest(method="GET", url=url, headers=headers)
    S3SigV4Auth(Credentials("AKID", secret), "s3", region).add_auth(request)
    target = url.split("//", 1)[1].partition("/")[2]
    msg = Message()
    for k, v in request.headers.items():
        msg[k] = v
    msg["Host"] = url.split("//", 1)[1].split("/", 1)[0]
    return "GET", "/" + target, msg


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5050/modelcar/sha256-ab/model.safetensors",
        "http://127.0.0.1:5050/modelcar?list-type=2&prefix=sha256-ab%2F&delimiter=%2F",
        "http://node:5050/modelcar/sha256-ab/sub%20dir/a%2Bb.bin",
    ],
)
def test_a_botocore_signature_holds_and_any_change_breaks_it(url):
    method, target, headers = signed(url, Range="bytes=0-7")
    assert sigv4.check(method, target, headers, SECRET) is None
    assert "does not match" in sigv4.check(method, target, headers, "another-secret-12345")
    assert "does not match" in sigv4.check("HEAD", target, headers, SECRET)
    headers.replace_header("Range", "bytes=0-8")
    assert "does not match" in sigv4.check(method, target, headers, SECRET)


def test_stale_unsigned_and_foreign_signatures_are_refused():
    method, target, headers = signed("http://h/modelcar/sha256-ab/x")
    later = datetime.now(UTC) + timedelta(minutes=16)
    assert "15 minutes" in sigv4.check(method, target, headers, SECRET, now=later)
    assert "not an AWS4" in sigv4.check(method, target, Message(), SECRET)
    other = headers.get("Authorization").replace("/s3/", "/sts/")
    headers.replace_header("Authorization", other)
    assert "another service" in sigv4.check(method, target, headers, SECRET)


@pytest.mark.parametrize(
    ("header", "size", "want"),
    [
        ("bytes=0-7", 100, (0, 8)),
        ("bytes=90-", 100, (90, 100)),
        ("bytes=90-1000", 100, (90, 100)),
        ("bytes=-5", 100, (95, 100)),
        ("bytes=-500", 100, (0, 100)),
        ("bytes=100-", 100, None),
        ("bytes=5-4", 100, None),
        ("bytes=-", 100, None),
        ("bytes=0-1,5-6", 100, None),
        ("items=0-1", 100, None),
        ("bytes=-0", 100, None),
    ],
)
def test_byte_ranges(header, size, want):
    assert byte_range(header, size) == want


def _index() -> tuple[FileIndex, ChunkIndex]:
    layer = "sha256:" + "1" * 64
    big = FileEntry(path="big.bin", size=130 * MiB, sha256="sha256:" + "2" * 64, layer=layer)
    small = FileEntry(path="small.json", size=10, sha256="sha256:" + "3" * 64, layer=layer)
    offset = content_offsets(layer_layout([big, small]))["big.bin"]
    chunks = ChunkIndex(
        chunkSize=64 * MiB,
        files={"big.bin": FileChunks(offset=offset, sha256=["a" * 64, "b" * 64, "c" * 64])},
    )
    return FileIndex(files=[big, small]), chunks


def test_the_chunk_index_is_held_to_the_file_index_and_the_layer_layout():
    index, chunks = _index()
    config = {CONFIG_CHUNKS_KEY: chunks.model_dump(mode="json")}
    loaded = chunk_index_from_config(config, index)
    assert loaded == chunks and chunk_index_from_config({}, index) is None
    assert loaded.digests(index.files[1]) == ["3" * 64]  # one chunk: the file's sha256
    assert loaded.span(130 * MiB, 64 * MiB - 1, 64 * MiB + 1) == range(0, 2)
    assert loaded.span(130 * MiB, 0, 0) == range(0)
    for broken, message in (
        ({"offset": 512}, "puts a file where its layer does not"),
        ({"sha256": ["a" * 64]}, "wrong number of chunks"),
        ({"sha256": ["A" * 64] * 3}, "64 lower-case hex"),
    ):
        raw = chunks.model_dump(mode="json")
        raw["files"]["big.bin"].update(broken)
        with pytest.raises(ImageFormatError, match=message):
            chunk_index_from_config({CONFIG_CHUNKS_KEY: raw}, index)
    raw = chunks.model_dump(mode="json")
    raw["chunkSize"] = 3 * MiB
    with pytest.raises(ImageFormatError, match="power of two"):
        chunk_index_from_config({CONFIG_CHUNKS_KEY: raw}, index)


def test_the_board_releases_a_range_only_when_every_chunk_under_it_verified(tmp_path):
    index, chunks = _index()
    board = Board()
    model = "sha256:" + "9" * 64
    assert board.wait(model, "big.bin", 0, 10, 0) == "gone"
    board.begin(model, tmp_path, index, chunks)
    assert board.wait(model, "big.bin", 0, 10, 0) == "timeout"
    board.verified(model, "big.bin", 0)
    assert board.wait(model, "big.bin", 0, 64 * MiB, 0) == "ready"
    assert board.wait(model, "big.bin", 0, 64 * MiB + 1, 0) == "timeout"
    assert board.wait(model, "small.json", 0, 0, 0) == "ready"  # nothing asked

    waiter: dict[str, str] = {}
    t = threading.Thread(
        target=lambda: waiter.setdefault(
            "got", board.wait(model, "big.bin", 70 * MiB, 71 * MiB, 60)
        )
    )
    t.start()
    board.verified(model, "big.bin", 1)
    t.join(60)
    assert waiter["got"] == "ready"

    board.failed(model, "chunk 2 differs")
    assert board.wait(model, "big.bin", 0, 10, 0) == "failed"  # nothing of it any more
    assert not board.is_verified(model, "big.bin", 0) and model not in board.models()
    board.begin(model, tmp_path, index, chunks)  # a new pull starts over
    assert board.wait(model, "big.bin", 0, 10, 0) == "timeout"
    board.end(model)
    assert board.wait(model, "big.bin", 0, 10, 0) == "gone"
