"""Build behaviour against the real registry: reproducibility, incremental pushes, layering."""

from __future__ import annotations

import json

from harness.models import write_safetensors
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import run_cli


def _build(*args: str) -> tuple[dict, str]:
    r = run_cli("build", *args, "--json", "-q")
    lines = r.stdout.strip().splitlines()
    return json.loads(lines[-2]), lines[-1]


def test_two_builds_and_both_targets_give_one_digest(
    registry, sharded_model, tmp_path, monkeypatch
):
    rec1, ref1 = _build(str(sharded_model), f"{registry.host}/repro/a:one", "--plain-http")
    # A cold stat cache for the second build: digests must come from content alone.
    monkeypatch.setenv("MODELCAR_CACHE_DIR", str(tmp_path / "other-cache"))
    rec2, _ = _build(str(sharded_model), f"{registry.host}/repro/b:two", "--plain-http")
    rec3, ref3 = _build(str(sharded_model), f"oci:{tmp_path / 'layout'}:v1")
    assert rec1["digest"] == rec2["digest"] == rec3["digest"]
    assert ref1 == f"{registry.host}/repro/a@{rec1['digest']}"
    assert ref3 == f"oci:{tmp_path / 'layout'}@{rec1['digest']}"
    assert rec1["created"] == "1970-01-01T00:00:00Z"


def test_copy_of_the_tree_elsewhere_gives_the_same_digest(registry, sharded_model, tmp_path):
    import shutil

    copy = tmp_path / "elsewhere" / sharded_model.name
    shutil.copytree(sharded_model, copy)
    a, _ = _build(str(sharded_model), f"oci:{tmp_path / 'l1'}")
    b, _ = _build(str(copy), f"oci:{tmp_path / 'l2'}")
    assert a["digest"] == b["digest"]


def test_changing_one_shard_uploads_only_that_layer(registry, sharded_model):
    repo = f"{registry.host}/incr/m"
    first, _ = _build(
        str(sharded_model), f"{repo}:v1", "--plain-http", "--large-file-threshold", "1MiB"
    )
    shards = [layer for layer in first["layers"] if layer["files"][0].endswith(".safetensors")]
    assert len(shards) == 3 and all(len(s["files"]) == 1 for s in shards)
    changed = sharded_model / "model-00002-of-00003.safetensors"
    write_safetensors(changed, changed.stat().st_size, seed=99)

    second, _ = _build(
        str(sharded_model), f"{repo}:v2", "--plain-http", "--large-file-threshold", "1MiB"
    )
    uploaded = [layer for layer in second["layers"] if layer["uploaded"]]
    assert [layer["files"] for layer in uploaded] == [["model-00002-of-00003.safetensors"]]
    shard_layer = uploaded[0]["size"]
    # Only that shard's layer plus config and manifest travelled.
    assert shard_layer <= second["bytes_uploaded"] < shard_layer + 64 * 1024
    assert second["digest"] != first["digest"]
    # The unchanged layers have the same digests as in v1.
    same = {layer["digest"] for layer in first["layers"]} & {
        layer["digest"] for layer in second["layers"]
    }
    assert len(same) == len(first["layers"]) - 1
    # v1 still points at the first build.
    store = open_store(parse_ref(f"{repo}:v1"), StoreOptions(plain_http=True))
    assert store.get_manifest("v1").digest == first["digest"]


def test_unchanged_rebuild_sends_only_config_and_manifest(registry, sharded_model):
    target = f"{registry.host}/noop/m:v1"
    _build(str(sharded_model), target, "--plain-http")
    again, _ = _build(str(sharded_model), target, "--plain-http")
    assert again["bytes_uploaded"] < 64 * 1024
    assert not any(layer["uploaded"] for layer in again["layers"])


def test_more_files_than_layers_are_grouped(tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(30):
        (src / f"w{i:02d}.bin").write_bytes(bytes([i]) * (2048 + i))
    rec, _ = _build(
        str(src), f"oci:{tmp_path / 'lay'}", "--max-layers", "5", "--large-file-threshold", "1KiB"
    )
    assert len(rec["layers"]) == 4  # 5 minus the base layer
    assert sum(len(layer["files"]) for layer in rec["layers"]) == 30
    flat = [f for layer in rec["layers"] for f in layer["files"]]
    assert flat == sorted(flat)


def test_base_scratch_and_base_from_layout(tmp_path, sharded_model):
    base_ref = run_cli("base", "create", f"oci:{tmp_path / 'base'}:bb").last_line
    rec, _ = _build(str(sharded_model), f"oci:{tmp_path / 'a'}", "--base", base_ref)
    default, _ = _build(str(sharded_model), f"oci:{tmp_path / 'b'}")
    # The default base is the same image `modelcar base create` writes.
    assert rec["base_digest"] == default["base_digest"] == base_ref.split("@")[1]
    assert rec["digest"] != default["digest"] or rec["base"] != default["base"]
    scratch, _ = _build(str(sharded_model), f"oci:{tmp_path / 'c'}", "--base", "scratch")
    assert scratch["base_digest"] is None
    info = json.loads(run_cli("inspect", f"oci:{tmp_path / 'c'}", "--json").stdout)
    assert all(layer["role"] == "model" for layer in info["layers"])


def test_include_exclude_and_symlinks(tmp_path):
    src = tmp_path / "src"
    (src / "original").mkdir(parents=True)
    (src / "blobs").mkdir()
    (src / "blobs" / "abc").write_bytes(b"weights")
    (src / "model.safetensors").symlink_to(src / "blobs" / "abc")
    (src / "pytorch_model.bin").write_bytes(b"dup")
    (src / "original" / "consolidated.pth").write_bytes(b"orig")
    (src / "empty").mkdir()
    rec, _ = _build(
        str(src),
        f"oci:{tmp_path / 'lay'}",
        "--exclude",
        "*.bin",
        "--exclude",
        "original/",
        "--exclude",
        "blobs/",
    )
    files = [f for layer in rec["layers"] for f in layer["files"]]
    assert files == ["model.safetensors"]


def test_inspect_and_verify(tmp_path, minilm):
    ref = run_cli("build", str(minilm), f"oci:{tmp_path / 'lay'}:v1", "-q").last_line
    text = run_cli("inspect", ref).stdout
    assert "model.safetensors" in text and "modelcar-busybox" in text
    info = json.loads(run_cli("inspect", f"oci:{tmp_path / 'lay'}:v1", "--json").stdout)
    assert info["source"] == "file:model" and len(info["files"]) == 13
    out = run_cli("verify", ref).stdout
    assert out.startswith("ok: 4 layers and 13 files verified")


def test_verify_catches_a_corrupt_blob(tmp_path, minilm):
    ref = run_cli("build", str(minilm), f"oci:{tmp_path / 'lay'}:v1", "-q").last_line
    info = json.loads(run_cli("inspect", ref, "--json").stdout)
    big = max(info["layers"], key=lambda layer: layer["size"])
    blob = tmp_path / "lay" / "blobs" / "sha256" / big["digest"].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    r = run_cli("verify", ref, check=False)
    assert r.code != 0 and "model.safetensors" in r.stderr and "Traceback" not in r.stderr
