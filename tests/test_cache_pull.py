"""`modelcar-cache pull` against the real registry: correctness, crash resume, bad bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from harness.models import write_safetensors
from harness.proxy import QuirkProxy
from modelcar.format.image import load_model_image
from modelcar.oci.digest import hex_of
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import ROOT, assert_one_line_error, build, cache_cli, published, pull, tree


def test_pull_publishes_exactly_the_built_files(registry, sharded_model, tmp_path):
    ref = build(sharded_model, f"{registry.host}/cache/exact", "--plain-http")
    cache = tmp_path / "cache"
    result, record = pull(cache, ref, "--plain-http")
    digest = ref.split("@")[1]
    model_dir = cache / "models" / f"sha256-{hex_of(digest)}"
    assert result.last_line == str(model_dir)
    assert tree(model_dir) == tree(sharded_model)  # files at the top, like /mnt/models
    assert record["layers"] >= 4 and record["files"] == 7  # 3 shards + small files
    assert record["bytes_fetched"] >= record["size"] and record["bytes_resumed"] == 0
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in model_dir.rglob("*") if p.is_file())
    assert os.listdir(cache / "staging") == []
    assert "ok" in cache_cli("verify", "--cache-dir", str(cache)).stdout
    assert digest in cache_cli("ls", "--cache-dir", str(cache)).stdout

    # a second pull is a no-op; the lock keeps a second process out while one runs
    _, again = pull(cache, ref, "--plain-http")
    assert again["bytes_fetched"] == 0

    # verify notices a changed byte and an extra file
    victim = model_dir / "model-00002-of-00003.safetensors"
    data = bytearray(victim.read_bytes())
    data[12345] ^= 0xFF
    victim.write_bytes(bytes(data))
    (model_dir / "stray.txt").write_text("x")
    bad = cache_cli("verify", "--cache-dir", str(cache), check=False)
    assert bad.code != 0 and "CORRUPT" in bad.stdout
    assert_one_line_error(bad, "differ from their file index")


def test_pull_from_an_oci_layout(sharded_model, tmp_path):
    ref = build(sharded_model, f"oci:{tmp_path / 'layout'}")
    _, record = pull(tmp_path / "cache", ref)
    assert tree(tmp_path / "cache" / "models" / f"sha256-{hex_of(record['digest'])}") == tree(
        sharded_model
    )


def test_unpinned_and_missing_images_are_one_line(registry, tmp_path):
    r, _ = pull(tmp_path / "c", f"{registry.host}/cache/x:latest", "--plain-http", check=False)
    assert_one_line_error(r, "pinned images only")
    missing = f"{registry.host}/cache/none@sha256:{'0' * 64}"
    r, _ = pull(tmp_path / "c", missing, "--plain-http", check=False)
    assert_one_line_error(r, "not found")
    assert published(tmp_path / "c") == []


def _big_model(root, files=3, size=8 << 20):
    root.mkdir()
    for i in range(files):
        write_safetensors(root / f"model-{i}.safetensors", size, seed=i + 10)
    (root / "config.json").write_text("{}")
    return root


def _staged_bytes(cache) -> int:
    total = 0
    for dirpath, _, files in os.walk(cache / "staging"):
        if ".journal" in dirpath:
            continue
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def _complete_or_absent(cache, model) -> None:
    """Under models/ there is nothing, or the whole verified model: never a part of it."""
    for name in published(cache):
        assert tree(cache / "models" / name) == tree(model)


def test_kill_9_at_many_points_resumes_and_never_shows_a_partial_model(registry, tmp_path):
    model = _big_model(tmp_path / "model")
    ref = build(model, f"{registry.host}/cache/killme", "--plain-http")
    total = sum(p.stat().st_size for p in model.iterdir())
    cache = tmp_path / "cache"
    args = [
        sys.executable,
        "-m",
        "modelcar.cache_daemon.cli",
        "pull",
        ref,
        "--cache-dir",
        str(cache),
        "--plain-http",
        "--json",
        "-q",
        "--max-rate",
        "16MiB",
        "--checkpoint",
        "512KiB",
        "--jobs",
        "2",
    ]
    kills = 0
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.9):
        target = max(fraction * total, _staged_bytes(cache) + (1 << 20))
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            _complete_or_absent(cache, model)
            if _staged_bytes(cache) >= target:
                break
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=30)
        _complete_or_absent(cache, model)
        if published(cache):
            break  # it finished between two looks
    assert kills >= 3
    final = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    import json

    record = json.loads(final.stdout.splitlines()[-2])
    if record["bytes_fetched"]:  # not already finished inside the loop
        assert record["bytes_fetched"] < total, record  # resumed, not from zero
        assert record["bytes_resumed"] > 0
    assert tree(cache / "models" / f"sha256-{hex_of(record['digest'])}") == tree(model)
    assert cache_cli("verify", "--cache-dir", str(cache)).code == 0
    assert not any((cache / "staging").iterdir())


def test_a_flipped_byte_never_becomes_ready(registry, tmp_path):
    model = _big_model(tmp_path / "model", files=2, size=2 << 20)
    ref = build(model, f"{registry.host}/cache/flip", "--plain-http")
    digest = ref.split("@")[1]
    from modelcar.format.image import load_model_image
    from modelcar.oci.reference import parse_ref
    from modelcar.oci.store import StoreOptions
    from modelcar.oci.stores import open_store

    pinned_ref = parse_ref(ref)
    image = load_model_image(open_store(pinned_ref, StoreOptions(plain_http=True)), pinned_ref)
    target = image.model_layers[-1].digest

    def flip(method, path, body):
        if method == "GET" and path.endswith(target):
            b = bytearray(body)
            b[len(b) // 2] ^= 0x01
            return bytes(b)
        return body

    with QuirkProxy(f"http://{registry.host}", body_filter=flip) as proxy:
        bad_ref = ref.replace(registry.host, proxy.host)
        r, _ = pull(tmp_path / "cache", bad_ref, "--plain-http", check=False)
    assert_one_line_error(r, target)
    assert published(tmp_path / "cache") == []
    assert "failed" in cache_cli("ls", "--cache-dir", str(tmp_path / "cache")).stdout
    # from a clean source, the same cache pulls it
    _, record = pull(tmp_path / "cache", ref, "--plain-http")
    assert record["digest"] == digest and published(tmp_path / "cache")


def test_a_dropped_connection_resumes_with_a_range_request(registry, tmp_path):
    model = _big_model(tmp_path / "model", files=1, size=6 << 20)
    ref = build(model, f"{registry.host}/cache/drop", "--plain-http")
    cut = {"done": False}

    def drop_once(method, path, body):
        if method == "GET" and "/blobs/" in path and len(body) > 1 << 20 and not cut["done"]:
            cut["done"] = True
            return body[: len(body) // 2]  # the connection "ends" halfway
        return body

    with QuirkProxy(f"http://{registry.host}", body_filter=drop_once) as proxy:
        _, record = pull(tmp_path / "cache", ref.replace(registry.host, proxy.host), "--plain-http")
        ranges = [p for (m, p, s) in proxy.log if s == 206]
    assert cut["done"] and ranges, proxy.log
    parsed = parse_ref(ref)
    image = load_model_image(open_store(parsed, StoreOptions(plain_http=True)), parsed)
    size = sum(d.size for d in image.manifest.layers)  # the model's and the base's
    assert record["bytes_fetched"] < size * 1.01  # the second request did not start over


def test_mirrors_are_tried_first_and_the_origin_last(registry, sharded_model, tmp_path):
    from harness.localregistry import free_port

    ref = build(sharded_model, f"{registry.host}/cache/mirrored", "--plain-http")
    with QuirkProxy(f"http://{registry.host}") as mirror:
        _, record = pull(tmp_path / "c1", ref, "--plain-http", "--mirror", f"http://{mirror.host}")
        served = [p for (m, p, s) in mirror.log if m == "GET" and "/blobs/" in p and s == 200]
    assert record["layers"] and len(served) >= record["layers"]  # every layer from the mirror
    # a mirror that is down costs a retry, not the pull
    down = f"http://127.0.0.1:{free_port()}"
    _, record = pull(tmp_path / "c2", ref, "--plain-http", "--mirror", down)
    assert tree(tmp_path / "c2" / "models" / f"sha256-{hex_of(record['digest'])}") == tree(
        sharded_model
    )
