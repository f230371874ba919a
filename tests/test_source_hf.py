"""Building from Hugging Face through the real huggingface_hub, against a local hub."""

from __future__ import annotations

import json

import pytest

from harness.hfhub import HubServer
from modelcar.oci.digest import hex_of
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import assert_one_line_error, pull, run_cli, tree


def _in_process(hub) -> dict:
    """huggingface_hub reads HF_ENDPOINT and HF_HOME once, at import: name them per call."""
    import os

    return {"endpoint": hub.url, "cache_dir": os.path.join(os.environ["HF_HOME"], "hub")}


def _read_dir(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def hub(minilm, tmp_path, monkeypatch):
    server = HubServer(token="hf_secret").start()
    files = _read_dir(minilm)
    repo = server.add_repo("org/minilm")
    v1 = {
        **files,
        "pytorch_model.bin": b"duplicate weights" * 100,
        "original/consolidated.pth": b"x" * 1000,
    }
    server.sha_v1 = repo.add_commit(v1, refs=("v1",), date="2025-01-02T03:04:05.000Z")
    v2 = {**v1, "config.json": files["config.json"].replace(b"}", b', "revision": 2}', 1)}
    server.sha_v2 = repo.add_commit(v2, refs=("main",), date="2025-02-03T04:05:06.000Z")
    server.files_v1, server.files_v2 = v1, v2
    gated = server.add_repo("org/gated", gated=True)
    gated.add_commit({"config.json": b"{}", "model.safetensors": b"w" * 2000}, refs=("main",))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield server
    server.stop()


def _expected(files: dict[str, bytes]) -> dict[str, bytes]:
    skipped = (".gitattributes", "pytorch_model.bin", "original/consolidated.pth")
    return {p: d for p, d in files.items() if p not in skipped}


def _build(source, target, *extra, check=True):
    r = run_cli("build", source, target, "--plain-http", "--json", *extra, check=check)
    if r.code:
        return r, None
    return r, json.loads(r.stdout.strip().splitlines()[-2])


def test_build_from_the_hub_is_pinned_and_byte_exact(hub, registry, tmp_path):
    r, record = _build("hf://org/minilm@main", f"{registry.host}/hf/minilm:main")
    assert record["source"] == f"hf://org/minilm@{hub.sha_v2}"
    assert record["created"] == "2025-02-03T04:05:06Z"
    _, pulled = pull(tmp_path / "cache", r.last_line, "--plain-http")
    model_dir = tmp_path / "cache" / "models" / f"sha256-{hex_of(pulled['digest'])}"
    assert tree(model_dir) == _expected(hub.files_v2)

    # a tag and a short sha resolve to their commit; the same commit gives the same digest
    _, by_tag = _build("hf://org/minilm@v1", f"{registry.host}/hf/minilm:v1")
    _, by_sha = _build(f"hf://org/minilm@{hub.sha_v1[:10]}", f"{registry.host}/hf/minilm:v1b")
    assert by_tag["source"] == by_sha["source"] == f"hf://org/minilm@{hub.sha_v1}"
    assert by_tag["digest"] == by_sha["digest"] != record["digest"]
    # the second commit changed config.json only: the weights' layer was already there
    assert record["bytes_uploaded"] < 1 << 20 or by_tag["bytes_uploaded"] < 1 << 20
    weights = len(hub.files_v2["model.safetensors"])
    assert by_sha["bytes_skipped"] >= weights


def test_list_shows_what_would_be_packaged(hub):
    r = run_cli("build", "hf://org/minilm", "--list")
    lines = r.stdout.strip().splitlines()
    paths = [ln.split()[-1] for ln in lines[:-1]]
    assert sorted(paths) == sorted(_expected(hub.files_v2))
    assert "model.safetensors" in paths and "pytorch_model.bin" not in paths
    assert f"hf://org/minilm@{hub.sha_v2}" in lines[-1]
    # an explicit --include brings a skipped file back
    r = run_cli("build", "hf://org/minilm", "--list", "--include", "*.bin")
    assert [ln.split()[-1] for ln in r.stdout.strip().splitlines()[:-1]] == ["pytorch_model.bin"]


def test_rate_limits_are_waited_out(hub, registry):
    hub.rate_limit["config.json"] = 2
    r, record = _build("hf://org/minilm", f"{registry.host}/hf/limited:1", "--no-stat-cache")
    assert record is not None
    assert "retrying" in r.stderr and "config.json" in r.stderr


def test_errors_are_one_line(hub, registry):
    target = f"{registry.host}/hf/err:1"
    hub.rate_limit["config.json"] = 100
    persistent = _build("hf://org/minilm", target, "--no-stat-cache", check=False)[0]
    assert_one_line_error(persistent, "HTTP 429", "config.json")
    hub.rate_limit.clear()
    assert_one_line_error(_build("hf://org/nope", target, check=False)[0], "repo not found")
    assert_one_line_error(
        _build("hf://org/minilm@nope", target, check=False)[0], "revision not found"
    )
    assert_one_line_error(_build("hf://org/gated", target, check=False)[0], "HF_TOKEN")
    assert_one_line_error(_build("hf://onlyname", target, check=False)[0], "hf://ORG/NAME")
    store = open_store(parse_ref(target), StoreOptions(plain_http=True))
    assert store.head_manifest("1") is None  # nothing was tagged


def test_a_token_opens_a_gated_repo(hub, registry, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    _, record = _build("hf://org/gated", f"{registry.host}/hf/gated:1")
    assert record["files"] == 2


def test_a_dropped_download_is_resumed_byte_exact(hub, registry, tmp_path):
    hub.drop["model.safetensors"] = True
    r, record = _build("hf://org/minilm", f"{registry.host}/hf/dropped:1", "--no-stat-cache")
    assert record is not None
    assert any(code == 206 for (_, path, code) in hub.log if "model.safetensors" in path)
    _, pulled = pull(tmp_path / "cache", r.last_line, "--plain-http")
    model_dir = tmp_path / "cache" / "models" / f"sha256-{hex_of(pulled['digest'])}"
    assert tree(model_dir) == _expected(hub.files_v2)


def test_bytes_that_differ_from_the_reported_sha256_fail_with_nothing_tagged(hub, registry):
    hub.corrupt["model.safetensors"] = True
    target = f"{registry.host}/hf/corrupt:1"
    r, _ = _build("hf://org/minilm", target, "--no-stat-cache", check=False)
    assert_one_line_error(r, "sha256", "model.safetensors")
    store = open_store(parse_ref(target), StoreOptions(plain_http=True))
    assert store.head_manifest("1") is None


def _gets(hub, name):
    """Downloads of the file at repo path ``name``."""
    return sum(
        1
        for (m, p, code) in hub.log
        if m == "GET"
        and "/resolve/" in p
        and p.split("/resolve/")[1].split("/", 1)[1] == name
        and code > 0
    )


def test_each_file_is_downloaded_once_and_unchanged_layers_not_at_all(
    hub, registry, tmp_path, monkeypatch
):
    target = f"{registry.host}/hf/once:latest"
    _, first = _build("hf://org/minilm@v1", target)
    assert _gets(hub, "model.safetensors") == 1  # hashed while it uploaded: one download
    assert first["bytes_uploaded"] > len(hub.files_v1["model.safetensors"])

    # another machine (empty stat cache) builds the next commit into the same tag: the
    # weights' sha256 from the Hub matches the previous image's index, so the registry
    # is asked (HEAD) and the file is never downloaded
    monkeypatch.setenv("MODELCAR_CACHE_DIR", str(tmp_path / "other-machine"))
    _, second = _build("hf://org/minilm@main", target)
    assert _gets(hub, "model.safetensors") == 1
    assert second["bytes_skipped"] >= len(hub.files_v2["model.safetensors"])
    assert second["bytes_uploaded"] < 1 << 20
    assert _gets(hub, "config.json") == 2  # what changed (and small files) are read again


def test_files_in_the_local_hf_cache_are_read_from_there(hub, registry):
    from huggingface_hub import hf_hub_download

    hf_hub_download("org/minilm", "model.safetensors", revision=hub.sha_v2, **_in_process(hub))
    before = _gets(hub, "model.safetensors")
    _, record = _build("hf://org/minilm", f"{registry.host}/hf/cached:1", "--no-stat-cache")
    assert record["source"] == f"hf://org/minilm@{hub.sha_v2}"
    assert _gets(hub, "model.safetensors") == before  # not downloaded again


def test_a_hf_cache_snapshot_dir_builds_as_a_local_source(hub, registry, tmp_path):
    from huggingface_hub import snapshot_download

    snapshot = snapshot_download("org/minilm", revision=hub.sha_v2, **_in_process(hub))
    r, _ = _build(
        snapshot,
        f"{registry.host}/hf/snapshot:1",
        "--exclude",
        "*.bin",
        "--exclude",
        "original/",
        "--exclude",
        ".gitattributes",
    )
    _, pulled = pull(tmp_path / "cache", r.last_line, "--plain-http")
    model_dir = tmp_path / "cache" / "models" / f"sha256-{hex_of(pulled['digest'])}"
    assert tree(model_dir) == _expected(hub.files_v2)


def test_offline_builds_come_from_the_local_hf_cache(hub, registry, tmp_path):
    from huggingface_hub import snapshot_download

    snapshot_download("org/minilm", revision="main", **_in_process(hub))
    offline = {"HF_HUB_OFFLINE": "1"}
    requests = len(hub.log)
    r = run_cli(
        "build",
        "hf://org/minilm@main",
        f"{registry.host}/hf/offline:1",
        "--plain-http",
        "--json",
        env=offline,
    )
    assert len(hub.log) == requests  # not one request to the hub
    assert json.loads(r.stdout.splitlines()[-2])["source"] == f"hf://org/minilm@{hub.sha_v2}"
    _, pulled = pull(tmp_path / "cache", r.last_line, "--plain-http")
    model_dir = tmp_path / "cache" / "models" / f"sha256-{hex_of(pulled['digest'])}"
    assert tree(model_dir) == _expected(hub.files_v2)
    missing = run_cli(
        "build",
        "hf://org/other",
        f"{registry.host}/hf/offline:2",
        "--plain-http",
        env=offline,
        check=False,
    )
    assert_one_line_error(missing, "HF_HUB_OFFLINE")
