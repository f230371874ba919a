"""Hostile images over an in-memory store (issue: one hostile tag must never take a node
down): each case failed before its fix, with a traceback, a published model or a full disk."""

from __future__ import annotations

import gzip
import io
import json

import pytest
import zstandard

from modelcar.cache_daemon.cachedir import MAX_QUARANTINED, CacheDir
from modelcar.cache_daemon.evict import Budget, Evictor, InsufficientSpace
from modelcar.cache_daemon.pull import Puller, PullOptions
from modelcar.cache_daemon.sources import origin_only
from modelcar.errors import ImageFormatError, ModelcarError, SignatureError, UnsafeArchive
from modelcar.format import keys as mk
from modelcar.format.fileindex import file_index_from_config
from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import sha256_bytes as sha
from modelcar.oci.manifest import Descriptor, Platform
from modelcar.oci.memory import MemoryStore
from modelcar.oci.platform import platform_images
from modelcar.oci.reference import parse_ref
from modelcar.trust import cosign, provenance
from tests.helpers import make_tar

MiB = 1 << 20


def _tar_of(files: dict[str, bytes]) -> bytes:
    return make_tar(list(files.items()))


REF = parse_ref("memory.invalid/hostile/m:t")


def _push(store: MemoryStore, config: bytes, layers: list[tuple[str, bytes]]) -> str:
    for blob in (config, *(data for _, data in layers)):
        store.blobs[sha(blob)] = blob
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": m, "digest": sha(d), "size": len(d)} for m, d in layers],
        }
    ).encode()
    store.manifests[sha(manifest)] = manifest
    return f"memory.invalid/hostile/m@{sha(manifest)}"


def _hand_built(store: MemoryStore, layer: bytes, media: str = mt.OCI_LAYER_GZIP) -> str:
    config = b'{"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}'
    return _push(store, config, [(media, layer)])


def _modelcar(store: MemoryStore, layer: bytes, files: list[dict]) -> str:
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha(layer)]},
            mk.CONFIG_INDEX_KEY: {"version": 1, "files": files},
        }
    ).encode()
    return _push(store, config, [(mt.OCI_LAYER_TAR, layer)])


def _entry(path: str, data: bytes, layer: bytes) -> dict:
    return {
        "path": path,
        "size": len(data),
        "sha256": sha(data),
        "mode": 0o644,
        "layer": sha(layer),
    }


def _pull(tmp_path, store: MemoryStore, ref: str):
    with CacheDir(tmp_path / "cache") as cache:
        puller = Puller(cache, PullOptions(jobs=1, attempts=1), sources=origin_only(store))
        try:
            return puller.pull(ref)
        finally:
            row = cache.db.get(ref.split("@")[1])
            assert row is None or row.state in ("failed", "ready")
            if row is not None and row.state == "failed":
                assert cache.published() == [] and "\n" not in (row.error or "")


# --- 1. decoders convert their errors at the boundary ---------------------------------


def test_a_bad_deflate_stream_is_an_unsafe_archive(tmp_path):
    store = MemoryStore(REF)
    good = gzip.compress(_tar_of({"models/a.txt": b"x" * 100_000}))
    bad = bytearray(good)
    bad[40:60] = b"\xff" * 20  # the deflate stream, past the gzip header
    with pytest.raises(UnsafeArchive, match="corrupt gzip"):
        _pull(tmp_path, store, _hand_built(store, bytes(bad)))


@pytest.mark.parametrize("case", ["corrupt frame", "2 GiB window"])
def test_a_bad_zstd_frame_is_an_unsafe_archive(tmp_path, case):
    store = MemoryStore(REF)
    body = _tar_of({"models/a.txt": b"y" * 100_000})
    if case == "corrupt frame":  # its checksum no longer matches
        corrupt = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(body))
        corrupt[-2] ^= 0xFF
        layer = bytes(corrupt)
    else:  # a frame of unknown size that asks for a 2 GiB window
        params = zstandard.ZstdCompressionParameters(
            window_log=31, enable_ldm=True, write_content_size=False
        )
        out = io.BytesIO()
        with zstandard.ZstdCompressor(compression_params=params).stream_writer(
            out, closefd=False
        ) as w:
            w.write(body)
        layer = out.getvalue()
    with pytest.raises(UnsafeArchive, match="corrupt zstd"):
        _pull(tmp_path, store, _hand_built(store, layer, mt.OCI_LAYER_ZSTD))


def test_json_nested_200000_deep_is_an_image_format_error_everywhere(tmp_path):
    deep = b"[" * 200_000 + b"]" * 200_000
    obj = b'{"a": ' + deep + b"}"
    store = MemoryStore(REF)
    store.manifests[sha(deep)] = deep
    with pytest.raises(ImageFormatError, match="not valid JSON"):
        _pull(tmp_path, store, f"memory.invalid/hostile/m@{sha(deep)}")
    with pytest.raises(ImageFormatError, match="not valid JSON"):  # the config
        _pull(tmp_path, store, _push(store, obj, [(mt.OCI_LAYER_TAR, _tar_of({"models/a": b"a"}))]))
    with pytest.raises(SignatureError, match=r"malformed|not valid JSON"):  # a .sig payload
        cosign.signer(obj, "AAAA", "sha256:" + "0" * 64, [])


# --- 3. the file index's paths --------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/etc/hostname", "sub/../a.txt", "./a.txt", "a//b", "a\\b", "a.txt"]
)
def test_every_index_path_passes_the_path_rule_and_no_path_twice(path):
    files = [
        {"path": "a.txt", "size": 1, "sha256": sha(b"a"), "layer": sha(b"l")},
        {"path": path, "size": 1, "sha256": sha(b"b"), "layer": sha(b"l")},
    ]
    with pytest.raises(ImageFormatError, match="invalid modelcar file index"):
        file_index_from_config({mk.CONFIG_INDEX_KEY: {"version": 1, "files": files}})


def test_a_file_under_another_file_of_the_index_is_refused():
    files = [
        {"path": "a", "size": 1, "sha256": sha(b"a"), "layer": sha(b"l")},
        {"path": "a/b", "size": 1, "sha256": sha(b"b"), "layer": sha(b"l")},
    ]
    with pytest.raises(ImageFormatError, match="a file where a directory must be"):
        file_index_from_config({mk.CONFIG_INDEX_KEY: {"version": 1, "files": files}})


def test_an_index_file_its_layer_does_not_hold_is_refused(tmp_path):
    store = MemoryStore(REF)
    layer = _tar_of({"models/a.txt": b"a" * 10})
    files = [_entry("a.txt", b"a" * 10, layer), _entry("ghost.txt", b"g" * 5, layer)]
    with pytest.raises(ImageFormatError, match="not in the layer it names"):
        _pull(tmp_path, store, _modelcar(store, layer, files))


def test_quarantine_keeps_the_newest_few_and_counts_against_the_budget(tmp_path):
    with CacheDir(tmp_path / "cache") as cache:
        for i in range(5):
            digest = "sha256:" + f"{i:064x}"
            cache.model_dir(digest).mkdir(parents=True)
            (cache.model_dir(digest) / "w").write_bytes(b"q" * MiB)
            cache.quarantine(digest)
        assert len(cache.quarantined()) == MAX_QUARANTINED
        evictor = Evictor(cache, Budget(max_bytes=3 * MiB), set)
        assert evictor.used() == MAX_QUARANTINED * MiB
        evictor.make_room("sha256:" + "f" * 64, 2 * MiB)  # room made by dropping quarantine
        assert cache.quarantined() == [] and evictor.used() == 0


# --- 4. one image per platform ---------------------------------------------------------


def test_an_index_naming_a_platform_twice_is_refused():
    amd = Platform(os="linux", architecture="amd64")
    children = [
        Descriptor(mediaType=mt.OCI_MANIFEST, digest=sha(bytes([i])), size=1, platform=amd)
        for i in range(2)
    ]
    with pytest.raises(ImageFormatError, match="linux/amd64 twice"):
        platform_images(children, "r")
    arm = [
        Platform(os="linux", architecture="arm64"),
        Platform(os="linux", architecture="arm64", variant="v8"),
    ]
    twins = [c.model_copy(update={"platform": p}) for c, p in zip(children, arm, strict=True)]
    with pytest.raises(ImageFormatError, match="twice"):
        platform_images(twins, "r")


# --- 5. decompression bombs ------------------------------------------------------------


def test_a_gzip_bomb_stops_at_the_ratio_cap(tmp_path):
    store = MemoryStore(REF)
    bomb = gzip.compress(_tar_of({"models/zero.bin": bytes(300 * MiB)}), compresslevel=9)
    assert len(bomb) < 400_000
    with pytest.raises(UnsafeArchive, match="expands past"):
        _pull(tmp_path, store, _hand_built(store, bomb))


def test_a_zstd_layer_that_outgrows_the_budget_fails_before_the_disk_fills(tmp_path):
    store = MemoryStore(REF)
    layer = zstandard.ZstdCompressor(level=19).compress(_tar_of({"models/z.bin": bytes(50 * MiB)}))
    assert len(layer) < 20_000
    with CacheDir(tmp_path / "cache") as cache:
        evictor = Evictor(cache, Budget(max_bytes=10 * MiB), set)
        puller = Puller(
            cache,
            PullOptions(jobs=1, attempts=1),
            sources=origin_only(store),
            make_room=evictor.make_room,
        )
        ref = _hand_built(store, layer, mt.OCI_LAYER_ZSTD)
        with pytest.raises(InsufficientSpace):
            puller.pull(ref)
        assert cache.published() == []
        staged = sum(
            p.stat().st_size for p in (tmp_path / "cache" / "staging").rglob("*") if p.is_file()
        )
        assert staged == 0  # dropped, not left to fill the disk


# --- 15. provenance prefixes by path segment -------------------------------------------


@pytest.mark.parametrize(
    ("source", "prefix", "under"),
    [
        ("hf://acme/m@abc", "hf://acme", True),
        ("hf://acme-evil/m@abc", "hf://acme", False),
        ("hf://acme/m@abc", "hf://acme/", True),
        ("hf://acme/m@abc", "hf://acme/m", True),
        ("hf://acme/model2@abc", "hf://acme/m", False),
        ("s3://b/models/x", "s3://b/models/x", True),
        ("anything", "", True),
        ("file:m", "file:", True),
    ],
)
def test_a_source_prefix_matches_whole_path_segments(source, prefix, under):
    assert provenance.under(source, prefix) is under


def test_a_model_error_is_one_line_with_its_class():
    e = UnsafeArchive("corrupt gzip stream (Error -3)", subject="sha256:" + "0" * 64)
    assert isinstance(e, ModelcarError) and "\n" not in e.one_line()
