"""The runtime images, built once per session by `make image`'s script, run for real
under podman (vfs storage, chroot isolation, the project's containers.conf)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT

VERSION = next(
    line.split('"')[1]
    for line in (ROOT / "pyproject.toml").read_text().splitlines()
    if line.startswith("version = ")
)


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "image.py")],
        capture_output=True, text=True, cwd=ROOT, timeout=1500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: f"localhost/{name}:{VERSION}" for name in ("modelcar", "modelcar-cache",
                                                           "modelcar-api")}  # fmt: skip


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    import image  # the same storage and containers.conf as make image

    cmd = ["podman", "--storage-driver", "vfs", "--root", str(image.WORK / "storage"),
           "--runroot", str(image.WORK / "run"), *args]  # fmt: skip
    proc = subprocess.run(cmd, env=image.podman_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_every_cli_runs_in_the_image_as_the_charts_uid(images):
    for script in ("modelcar", "modelcar-cache", "modelcar-api"):
        r = podman("run", "--rm", images["modelcar"], script, "--help")
        assert "Usage:" in r.stdout
    assert podman("run", "--rm", images["modelcar"], "id", "-u").stdout.strip() == "65532"
    info = json.loads(podman("inspect", images["modelcar"]).stdout)[0]
    labels = info["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.revision"] not in ("", "unknown")
    assert labels["org.opencontainers.image.source"]  # the remote's URL, or "unknown"
    assert info["Config"]["Entrypoint"][0].endswith("dumb-init")


def test_each_role_carries_only_its_extra(images):
    probe = "import importlib.util as u, sys; sys.exit(0 if u.find_spec(sys.argv[1]) else 3)"
    for absent in ("fastapi", "sqlalchemy", "boto3", "mlflow", "huggingface_hub"):
        r = podman("run", "--rm", images["modelcar-cache"], "python3", "-c", probe, absent,
                   check=False)  # fmt: skip
        assert r.returncode == 3, f"{absent} is in the node image"
    r = podman("run", "--rm", images["modelcar-cache"], "modelcar-cache", "--help")
    assert "Usage:" in r.stdout
    # the node image can use ECR's credential helper (credHelpers: ecr-login)
    r = podman("run", "--rm", images["modelcar-cache"], "docker-credential-ecr-login", "version")
    assert r.stdout.strip()
    r = podman("run", "--rm", images["modelcar-api"], "modelcar-api", "--help")
    assert "Usage:" in r.stdout
    r = podman("run", "--rm", images["modelcar-api"], "python3", "-c", probe, "kubernetes",
               check=False)  # fmt: skip
    assert r.returncode == 3


def test_the_archives_are_oci_images_that_independent_tools_read(images):
    for name in images:
        archive = ROOT / "dist" / f"{name}-{VERSION}.oci.tar"
        r = subprocess.run(["skopeo", "inspect", f"oci-archive:{archive}"], capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["Labels"]["org.opencontainers.image.version"] == VERSION


def test_sigterm_stops_the_daemon_in_the_container_at_once(images, tmp_path):
    (tmp_path / "models.yaml").write_text("models: []\n")
    tmp_path.chmod(0o777)
    name = "modelcar-sigterm-test"
    podman("rm", "-f", name, check=False)
    podman("run", "-d", "--name", name, "-v", f"{tmp_path}:/var/lib/modelcar:z",
           images["modelcar-cache"], "modelcar-cache", "run", "--node", "n1",
           "--config", "/var/lib/modelcar/models.yaml", "--cache-dir", "/var/lib/modelcar/cache",
           "--listen", "", "--interval", "3600")  # fmt: skip
    try:
        deadline_log = ""
        for _ in range(100):  # bounded: until its first pass has run
            deadline_log = podman("logs", name).stderr + podman("logs", name).stdout
            if "state" in deadline_log or (tmp_path / "cache" / "state.db").exists():
                break
            time.sleep(0.2)
        started = time.monotonic()
        r = podman("stop", "-t", "20", name)
        assert r.returncode == 0
        assert time.monotonic() - started < 10  # SIGTERM reached it: no SIGKILL after 20 s
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] in (0, 143), state
        finished = state["FinishedAt"]
        assert finished
    finally:
        podman("rm", "-f", name, check=False)
