"""The pushed image is a plain OCI image: skopeo copies it, umoci unpacks it, busybox runs in it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers import run_cli, unpack_with_umoci

pytestmark = pytest.mark.skipif(
    not shutil.which("skopeo") or not shutil.which("umoci"),
    reason="skopeo/umoci not installed (make test installs them)",
)

KSERVE_INIT_CHECK = '[ -d /models ] && [ "$(ls -A /models)" ]'


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def unpacked(registry, tmp_path_factory):
    from harness.models import minilm_dir

    work = tmp_path_factory.mktemp("interop")
    result = run_cli(
        "build", str(minilm_dir()), f"{registry.host}/interop/minilm:v1", "--plain-http", "-q"
    )
    return result.last_line, unpack_with_umoci(result.last_line, work)


def test_skopeo_umoci_roundtrip_is_byte_exact(unpacked, minilm):
    ref, rootfs = unpacked
    assert "@sha256:" in ref
    models = rootfs / "models"
    assert _tree(models) == _tree(minilm)
    for p in models.rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))
    assert stat.S_IMODE(models.stat().st_mode) == 0o755


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_kserve_commands_run_in_the_image(unpacked):
    _, rootfs = unpacked
    for tool in ("sh", "ln", "ls", "sleep", "mkdir"):
        assert (rootfs / "bin" / tool).exists(), tool
    ok = subprocess.run(["chroot", str(rootfs), "/bin/sh", "-c", KSERVE_INIT_CHECK])
    assert ok.returncode == 0
    # The sidecar's link-and-sleep, with a bounded sleep.
    out = subprocess.run(
        [
            "chroot",
            str(rootfs),
            "/bin/sh",
            "-c",
            "ln -sf /models /tmp/models && ls /tmp/models/ && sleep 0",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "model.safetensors" in out.stdout


def test_umoci_reads_oci_layout_target(tmp_path, minilm):
    ref = run_cli("build", str(minilm), f"oci:{tmp_path / 'lay'}:v1", "-q").last_line
    assert ref.startswith(f"oci:{tmp_path / 'lay'}@sha256:")
    args = ["umoci", "unpack", "--image", f"{tmp_path / 'lay'}:v1", str(tmp_path / "b")]
    if os.geteuid() != 0:
        args.insert(2, "--rootless")
    subprocess.run(args, check=True, capture_output=True)
    assert _tree(tmp_path / "b" / "rootfs" / "models") == _tree(minilm)
