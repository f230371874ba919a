"""`make image`: build the runtime images here, without Docker or a public registry.

1. A Debian bookworm base from Debian's packages (mmdebstrap), imported into podman.
2. The wheels of modelcar and everything it needs, built on the host (dist/wheels),
   so the image build installs offline.
3. `podman build` of each role (Dockerfile targets): modelcar (all), modelcar-cache,
   modelcar-api; each left in podman's storage as localhost/<name>:<version> and
   written to dist/<name>-<version>.oci.tar (`podman load`, `skopeo copy oci-archive:`).
4. With --push HOST/REPO (make image PUSH=…), each is pushed as HOST/REPO/<name>:<version>.

podman runs with the vfs storage driver, chroot isolation and its own
containers.conf (ulimits this machine's runc can set), all under .image/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".image"
DIST = ROOT / "dist"
BASE = "localhost/modelcar-base:bookworm-2"  # bump when the included packages change
BASE_PACKAGES = ["python3", "python3-venv", "ca-certificates", "amazon-ecr-credential-helper"]
ROLES = {"modelcar": "all", "modelcar-cache": "cache", "modelcar-api": "api"}
NEEDS = {"podman": "podman", "mmdebstrap": "mmdebstrap"}
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
"""


class Failed(Exception):
    pass


def version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise Failed("no version in pyproject.toml")


def revision() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    return proc.stdout.strip() or "unknown"


def source() -> str:
    proc = subprocess.run(["git", "remote", "get-url", "origin"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    url = proc.stdout.strip()
    return url if url.startswith("https://") else "unknown"


def podman_env() -> dict[str, str]:
    WORK.mkdir(exist_ok=True)
    conf = WORK / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE")}
    return {**env, "CONTAINERS_CONF": str(conf)}


def podman(*args: str, quiet: bool = False) -> str:
    cmd = ["podman", "--storage-driver", "vfs", "--root", str(WORK / "storage"),
           "--runroot", str(WORK / "run"), *args]  # fmt: skip
    proc = subprocess.run(cmd, env=podman_env(), capture_output=True, text=True)
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise Failed(f"podman {args[0]} failed: {tail}")
    return proc.stdout


def step(what: str) -> None:
    print(f"image: {what}", file=sys.stderr, flush=True)


def base_image() -> None:
    """The Debian base, made once (delete .image/ to make it again)."""
    if podman("images", "-q", BASE).strip():
        return
    tar = WORK / "bookworm.tar"
    step(f"a Debian bookworm base with mmdebstrap ({', '.join(BASE_PACKAGES)})")
    proc = subprocess.run(
        ["mmdebstrap", "--variant=apt", f"--include={','.join(BASE_PACKAGES)}", "bookworm",
         str(tar)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode:
        raise Failed(f"mmdebstrap failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    podman("import", "-q", str(tar), BASE)
    tar.unlink()


def wheelhouse() -> None:
    step("wheels for modelcar[all] and dumb-init into dist/wheels")
    shutil.rmtree(DIST / "wheels", ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(DIST / "wheels"),
         f"{ROOT}[all]", "dumb-init"],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    if proc.returncode:
        raise Failed(f"pip wheel failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")


def build(push: str | None) -> list[Path]:
    v, rev = version(), revision()
    archives = []
    for name, target in ROLES.items():
        tag = f"localhost/{name}:{v}"
        started = time.monotonic()
        step(f"building {tag} (target {target})")
        podman("build", "-q", "--isolation", "chroot", "--target", target,
               "--build-arg", f"BASE={BASE}", "--build-arg", f"VERSION={v}",
               "--build-arg", f"REVISION={rev}", "--build-arg", f"SOURCE={source()}",
               "-t", tag, "-f", str(ROOT / "Dockerfile"),
               str(ROOT))  # fmt: skip
        archive = DIST / f"{name}-{v}.oci.tar"
        archive.unlink(missing_ok=True)
        podman("save", "--format", "oci-archive", "-o", str(archive), tag)
        archives.append(archive)
        step(f"{tag}: {archive.stat().st_size / 1e6:.0f} MB in {time.monotonic() - started:.0f}s")
        if push:
            podman("push", "--tls-verify=false", tag, f"{push.rstrip('/')}/{name}:{v}")
    return archives


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--push", help="also push each image as HOST/REPO/<name>:<version>")
    args = ap.parse_args()
    missing = [pkg for tool, pkg in NEEDS.items() if shutil.which(tool) is None]
    if missing:
        print(f"make image: error: needs {', '.join(missing)} "
              f"(apt-get install {' '.join(missing)})", file=sys.stderr)  # fmt: skip
        return 2
    try:
        base_image()
        wheelhouse()
        for archive in build(args.push):
            print(archive)
        podman("image", "prune", "-f")  # the build stages (vfs keeps a full copy of each)
    except Failed as e:
        print(f"make image: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
