"""Bad input: one clear line, a non-zero exit, and the existing tag left as it was."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from harness.localregistry import LocalRegistry, free_port
from modelcar.builder.build import Builder, BuildOptions
from modelcar.builder.sources.local import LocalSource
from modelcar.errors import SourceChanged
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import ROOT, assert_one_line_error, run_cli

PLAIN = StoreOptions(plain_http=True)


def _tag_digest(ref: str) -> str | None:
    r = parse_ref(ref)
    return open_store(r, PLAIN).head_manifest(r.reference)  # type: ignore[attr-defined]


@pytest.fixture
def tagged(registry, minilm):
    """A repo whose :v1 tag already points to a good build."""
    target = f"{registry.host}/errors/m{time.monotonic_ns()}:v1"
    ref = run_cli("build", str(minilm), target, "--plain-http", "-q").last_line
    return target, ref.split("@")[1]


def test_missing_source_dir(tagged, tmp_path):
    target, digest = tagged
    r = run_cli("build", str(tmp_path / "nope"), target, "--plain-http", check=False)
    assert_one_line_error(r, "source directory does not exist", str(tmp_path / "nope"))
    assert _tag_digest(target) == digest


def test_empty_source(tagged, tmp_path):
    target, digest = tagged
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    r = run_cli("build", str(tmp_path / "empty"), target, "--plain-http", check=False)
    assert_one_line_error(r, "no files")
    assert _tag_digest(target) == digest


def test_unreachable_registry(minilm):
    r = run_cli(
        "build", str(minilm), f"127.0.0.1:{free_port()}/x/y:v1", "--plain-http", check=False
    )
    assert_one_line_error(r, "cannot connect to registry")


def test_https_to_a_plain_http_registry_hints_plain_http(registry, minilm):
    r = run_cli("build", str(minilm), f"{registry.host}/x/y:v1", check=False)
    assert_one_line_error(r, "--plain-http")


def test_bad_references(minilm):
    assert_one_line_error(run_cli("build", str(minilm), "Bad Ref", check=False), "invalid")
    assert_one_line_error(
        run_cli("build", str(minilm), "127.0.0.1:5000/UPPER/x", check=False),
        "invalid repository name",
    )
    r = run_cli("build", str(minilm), "127.0.0.1:5000/a@sha256:" + "0" * 64, check=False)
    assert_one_line_error(r, "cannot name a digest")


def test_unreadable_file(tagged, tmp_path):
    target, digest = tagged
    src = tmp_path / "src"
    src.mkdir(parents=True)
    (src / "ok.json").write_text("{}")
    secret = src / "secret.bin"
    secret.write_bytes(b"x" * 100)
    secret.chmod(0o000)
    r = run_cli("build", str(src), target, "--plain-http", check=False, honour_permissions=True)
    assert_one_line_error(r, "permission denied", "secret.bin")
    assert _tag_digest(target) == digest


def test_symlink_outside_and_loop(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "outside.txt").write_text("x")
    (src / "link.txt").symlink_to(tmp_path / "outside.txt")
    r = run_cli("build", str(src), f"oci:{tmp_path / 'lay'}", check=False)
    assert_one_line_error(r, "symlink points outside the source", "link.txt")
    (src / "link.txt").unlink()
    (src / "sub").mkdir()
    (src / "sub" / "f").write_text("x")
    (src / "sub" / "loop").symlink_to(src)
    r = run_cli("build", str(src), f"oci:{tmp_path / 'lay'}", check=False)
    assert_one_line_error(r, "symlink loop")
    assert (
        not (tmp_path / "lay" / "index.json").exists()
        or 'manifests":[]' in (tmp_path / "lay" / "index.json").read_text()
    )


def test_layer_over_the_size_limit(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(b"\1" * (3 << 20))
    r = run_cli(
        "build", str(src), f"oci:{tmp_path / 'lay'}", "--max-layer-size", "2MiB", check=False
    )
    assert_one_line_error(r, "exceeds the registry's limit", "big.bin")


def test_file_vanishing_during_the_build_leaves_the_tag(tagged, tmp_path):
    target, digest = tagged
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.json").write_text("{}")
    (src / "b.safetensors").write_bytes(b"\2" * 4096)
    source = LocalSource(str(src))
    listed = source.files()
    (src / "b.safetensors").unlink()  # gone between listing and reading
    source.files = lambda: listed  # type: ignore[method-assign]
    with pytest.raises(SourceChanged) as err:
        Builder(source, parse_ref(target), BuildOptions(store=PLAIN)).run()
    assert "vanished" in err.value.one_line() and "b.safetensors" in err.value.one_line()
    assert _tag_digest(target) == digest


def test_registry_killed_mid_push_keeps_the_old_tag(tmp_path, minilm):
    reg = LocalRegistry(tmp_path / "reg").start()
    try:
        target = f"{reg.host}/killed/m:latest"
        old = run_cli("build", str(minilm), target, "--plain-http", "-q").last_line.split("@")[1]
        big = tmp_path / "big"
        big.mkdir()
        with open(big / "weights.safetensors", "wb") as f:  # 1.5 GiB, mostly sparse
            f.seek((3 << 29) - 1)
            f.write(b"\1")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelcar.builder.cli",
                "build",
                str(big),
                target,
                "--plain-http",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        uploads = (
            tmp_path
            / "reg"
            / "storage"
            / "docker"
            / "registry"
            / "v2"
            / "repositories"
            / "killed"
            / "m"
            / "_uploads"
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            sizes = [p.stat().st_size for p in uploads.rglob("data")] if uploads.exists() else []
            if any(s > (1 << 20) for s in sizes):
                break
            time.sleep(0.01)
        reg.kill()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode != 0, (out, err)
        errors = [ln for ln in err.splitlines() if "error:" in ln]
        assert len(errors) == 1 and "Traceback" not in err, err
        assert "@sha256:" not in out
    finally:
        reg.stop()
    reg = LocalRegistry(tmp_path / "reg", port=reg.port).start()
    try:
        assert _tag_digest(target) == old
    finally:
        reg.stop()
