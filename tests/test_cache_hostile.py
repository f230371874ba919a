"""Hostile layers, pushed as real images: every one is refused, nothing lands outside staging."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pytest

from harness.proxy import QuirkProxy
from modelcar.format import keys as mk
from modelcar.oci import mediatypes as mt
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import assert_one_line_error, make_tar, published, pull, tar_member


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_image(registry, repo: str, layer: bytes, files: dict[str, bytes | int]) -> str:
    """An image with one layer and a file index claiming ``files`` (bytes, or a size)."""
    layer_digest = _sha(layer)
    index = {
        "version": 1,
        "files": [
            {
                "path": path,
                "size": len(v) if isinstance(v, bytes) else v,
                "sha256": _sha(v) if isinstance(v, bytes) else _sha(b"x" * v),
                "mode": 0o644,
                "layer": layer_digest,
            }
            for path, v in sorted(files.items())
        ],
    }
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            mk.CONFIG_INDEX_KEY: index,
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": _sha(config), "size": len(config)},
            "layers": [{"mediaType": mt.OCI_LAYER_TAR, "digest": layer_digest, "size": len(layer)}],
        }
    ).encode()
    ref = parse_ref(f"{registry.host}/hostile/{repo}:t")
    store = open_store(ref, StoreOptions(plain_http=True))
    for blob in (layer, config):
        store.put_blob(_sha(blob), len(blob), lambda b=blob: [b])
    digest = store.put_manifest(manifest, mt.OCI_MANIFEST, "t")
    return f"{registry.host}/hostile/{repo}@{digest}"


def _cases(outside):
    good = b"weights" * 100
    big_pax = {"comment": "x" * (2 << 20)}
    truncated = make_tar([tar_member("models/a", b"y" * 5000)])[:3000]
    bad_checksum = bytearray(make_tar([tar_member("models/a", good)]))
    bad_checksum[0] ^= 0x20
    return {
        "tar slip": ([tar_member(f"models/../../../{outside.name}/slip.txt", good)], {"a": good}),
        "absolute path": ([tar_member(f"{outside}/abs.txt", good)], {"a": good}),
        "outside models/": ([tar_member("etc/passwd", good)], {"a": good}),
        "symlink then write through it": (
            [
                tar_member("models/link", kind=tarfile.SYMTYPE, link=str(outside)),
                tar_member("models/link/evil.txt", good),
            ],
            {"link/evil.txt": good},
        ),
        "hard link": (
            [
                tar_member("models/a", good),
                tar_member("models/b", kind=tarfile.LNKTYPE, link="models/a"),
            ],
            {"a": good, "b": good},
        ),
        "char device": ([tar_member("models/dev", kind=tarfile.CHRTYPE)], {"dev": 0}),
        "block device": ([tar_member("models/blk", kind=tarfile.BLKTYPE)], {"blk": 0}),
        "fifo": ([tar_member("models/fifo", kind=tarfile.FIFOTYPE)], {"fifo": 0}),
        "setuid": ([tar_member("models/a", good, mode=0o4755)], {"a": good}),
        "duplicate entry": (
            [tar_member("models/a", good), tar_member("models/a", good)],
            {"a": good},
        ),
        "huge PAX header": ([tar_member("models/a", good, pax=big_pax)], {"a": good}),
        "truncated tar": (truncated, {"a": b"y" * 5000}),
        "size mismatch": ([tar_member("models/a", good)], {"a": len(good) + 10}),
        "file not in the index": (
            [tar_member("models/a", good), tar_member("models/extra", good)],
            {"a": good},
        ),
        "index file missing from the layer": (
            [tar_member("models/a", good)],
            {"a": good, "b": good},
        ),
        "content differs from the index": ([tar_member("models/a", good)], {"a": b"other" * 140}),
        "bad header checksum": (bytes(bad_checksum), {"a": good}),
        "GNU long name with ..": (
            make_tar(
                [tar_member("models/" + "d" * 120 + "/../../../escape.txt", good)],
                tarfile.GNU_FORMAT,
            ),
            {"a": good},
        ),
        "directory over a file": (
            [
                tar_member("models/a", good),
                tar_member("models/a", kind=tarfile.DIRTYPE, mode=0o755),
            ],
            {"a": good},
        ),
    }


def test_hostile_layers_are_all_refused(registry, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    cache = tmp_path / "cache"
    cases = _cases(outside)
    assert len(cases) >= 15
    for i, (name, (members, files)) in enumerate(cases.items()):
        layer = members if isinstance(members, bytes) else make_tar(members)
        ref = push_image(registry, f"case{i}", layer, files)
        result, _ = pull(cache, ref, "--plain-http", check=False)
        assert result.code != 0, name
        assert_one_line_error(result)
        assert published(cache) == [], name
        assert list(outside.iterdir()) == [], name
        assert [p.name for p in (cache / "staging").iterdir()] == [], name
    # nothing anywhere in the cache but its own bookkeeping
    allowed = {
        ".lock",
        "state.db",
        "state.db-wal",
        "state.db-shm",
        "models",
        "staging",
        "index",
        "quarantine",
        "served",
        "blobs",
    }
    assert {p.name for p in cache.iterdir()} <= allowed
    assert list((cache / "index").iterdir()) == []
    # a refused image serves nothing: no record, no kept manifest or config
    assert list((cache / "served").iterdir()) == list((cache / "blobs").iterdir()) == []


@pytest.mark.parametrize("field", ["manifests", "blobs"])
def test_a_manifest_or_config_altered_in_transit_is_refused(registry, tmp_path, field):
    good = b"w" * 100
    ref = push_image(
        registry, f"transit-{field}", make_tar([tar_member("models/a", good)]), {"a": good}
    )

    def alter(method, path, body):
        if f"/{field}/" in path and body.startswith(b"{"):
            return body.replace(b'"', b' "', 1)  # same JSON, other bytes
        return body

    with QuirkProxy(f"http://{registry.host}", body_filter=alter) as proxy:
        result, _ = pull(
            tmp_path / "cache", ref.replace(registry.host, proxy.host), "--plain-http", check=False
        )
    assert_one_line_error(result, "does not match")
    assert published(tmp_path / "cache") == []
