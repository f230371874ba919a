"""The runtime images, built once per session by `make image`'s script, run for real
under podman (vfs storage, chroot isolation, the project's containers.conf)."""

from __future__ import annotations

import json
import subprocess
import time

from tests.helpers import ROOT, VERSION


def test_every_cli_runs_in_the_image_as_the_charts_uid(images, podman):
    # one container (with vfs every container is a full copy of the image)
    script = "modelcar --help && modelcar-cache --help && modelcar-api --help && id -u"
    r = podman("run", "--rm", images["modelcar"], "sh", "-c", script)
    assert r.stdout.count("Usage:") == 3
    assert r.stdout.strip().splitlines()[-1] == "65532"
    info = json.loads(podman("inspect", images["modelcar"]).stdout)[0]
    labels = info["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.revision"] not in ("", "unknown")
    assert labels["org.opencontainers.image.source"]  # the remote's URL, or "unknown"
    assert info["Config"]["Entrypoint"][0].endswith("dumb-init")


PROBE = (
    "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))"
)


def test_each_role_carries_only_its_extra(images, podman):
    heavy = ["fastapi", "sqlalchemy", "boto3", "mlflow", "huggingface_hub", "kubernetes"]
    r = podman(
        "run",
        "--rm",
        images["modelcar-cache"],
        "sh",
        "-c",
        'python3 -c "$0" "$@" && modelcar-cache --help && docker-credential-ecr-login version',
        PROBE,
        *heavy,
    )
    found, *rest = r.stdout.splitlines()
    assert found.split() == ["kubernetes"]  # the node image labels its Node, nothing else
    assert "Usage:" in "\n".join(rest)
    assert rest[-1].strip()  # ECR's credential helper (credHelpers: ecr-login) runs
    r = podman(
        "run",
        "--rm",
        images["modelcar-api"],
        "sh",
        "-c",
        'python3 -c "$0" "$@" && modelcar-api --help',
        PROBE,
        *heavy,
    )
    found, *rest = r.stdout.splitlines()
    assert found.split() == ["fastapi", "sqlalchemy"]
    assert "Usage:" in "\n".join(rest)


def test_the_archives_are_oci_images_that_independent_tools_read(images):
    for name in images:
        archive = ROOT / "dist" / f"{name}-{VERSION}.oci.tar"
        r = subprocess.run(
            ["skopeo", "inspect", f"oci-archive:{archive}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["Labels"]["org.opencontainers.image.version"] == VERSION


def test_sigterm_stops_the_daemon_in_the_container_at_once(images, podman, tmp_path):
    (tmp_path / "models.yaml").write_text("models: []\n")
    tmp_path.chmod(0o777)
    name = "modelcar-sigterm-test"
    podman("rm", "-f", name, check=False)
    podman(
        "run",
        "-d",
        "--name",
        name,
        "-v",
        f"{tmp_path}:/var/lib/modelcar:z",
        images["modelcar-cache"],
        "modelcar-cache",
        "run",
        "--node",
        "n1",
        "--config",
        "/var/lib/modelcar/models.yaml",
        "--cache-dir",
        "/var/lib/modelcar/cache",
        "--listen",
        "",
        "--interval",
        "3600",
    )
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
