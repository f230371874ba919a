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
import hashlib
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
# what goes into the images: a build whose inputs are unchanged is not done again
INPUTS = [
    "Dockerfile",
    ".dockerignore",
    "pyproject.toml",
    "README.md",
    "LICENSE",
    "modelcar",
    "builder",
    "cache_daemon",
    "api",
]
STAMP = "dev.modelcar.build-inputs"
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
    proc = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return proc.stdout.strip() or "unknown"


def source() -> str:
    proc = subprocess.run(
        ["git", "remote", "get-url", "origin"], cwd=ROOT, capture_output=True, text=True
    )
    url = proc.stdout.strip()
    return url if url.startswith("https://") else "unknown"


def podman_env() -> dict[str, str]:
    WORK.mkdir(exist_ok=True)
    conf = WORK / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE")}
    return {**env, "CONTAINERS_CONF": str(conf)}


def podman(*args: str, quiet: bool = False) -> str:
    cmd = [
        "podman",
        "--storage-driver",
        "vfs",
        "--root",
        str(WORK / "storage"),
        "--runroot",
        str(WORK / "run"),
        *args,
    ]
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
        [
            "mmdebstrap",
            "--variant=apt",
            f"--include={','.join(BASE_PACKAGES)}",
            "bookworm",
            str(tar),
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise Failed(f"mmdebstrap failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    podman("import", "-q", str(tar), BASE)
    tar.unlink()


def wheelhouse() -> None:
    step("wheels for modelcar[all] and dumb-init into dist/wheels")
    shutil.rmtree(DIST / "wheels", ignore_errors=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "-w",
            str(DIST / "wheels"),
            f"{ROOT}[all]",
            "dumb-init",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if proc.returncode:
        raise Failed(f"pip wheel failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")


def inputs_digest() -> str:
    """sha256 over the build's inputs (names and bytes), the base and the labels."""
    h = hashlib.sha256(f"{BASE}\0{version()}\0{revision()}\0{source()}\0".encode())
    for top in INPUTS:
        path = ROOT / top
        files = (
            [path]
            if path.is_file()
            else sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        )
        for f in files:
            h.update(f"{f.relative_to(ROOT)}\0".encode() + f.read_bytes() + b"\0")
    return h.hexdigest()


def up_to_date(stamp: str) -> bool:
    """Every image in podman's storage built from these inputs, and its archive there."""
    for name in ROLES:
        tag = f"localhost/{name}:{version()}"
        found = podman(
            "images", "--filter", f"label={STAMP}={stamp}", "--filter", f"reference={tag}", "-q"
        ).strip()
        if not found or not (DIST / f"{name}-{version()}.oci.tar").exists():
            return False
    return True


def build(stamp: str) -> list[Path]:
    v, rev = version(), revision()
    archives = []
    for name, target in ROLES.items():
        tag = f"localhost/{name}:{v}"
        started = time.monotonic()
        step(f"building {tag} (target {target})")
        # --layers=false: one commit per image (with vfs, every layer is a full copy)
        podman(
            "build",
            "-q",
            "--layers=false",
            "--isolation",
            "chroot",
            "--target",
            target,
            "--build-arg",
            f"BASE={BASE}",
            "--build-arg",
            f"VERSION={v}",
            "--build-arg",
            f"REVISION={rev}",
            "--build-arg",
            f"SOURCE={source()}",
            "--label",
            f"{STAMP}={stamp}",
            "-t",
            tag,
            "-f",
            str(ROOT / "Dockerfile"),
            str(ROOT),
        )
        archive = DIST / f"{name}-{v}.oci.tar"
        archive.unlink(missing_ok=True)
        podman("save", "--format", "oci-archive", "-o", str(archive), tag)
        archives.append(archive)
        step(f"{tag}: {archive.stat().st_size / 1e6:.0f} MB in {time.monotonic() - started:.0f}s")
    return archives


def push(to: str) -> None:
    for name in ROLES:
        tag = f"localhost/{name}:{version()}"
        step(f"pushing {tag} to {to.rstrip('/')}/{name}:{version()}")
        podman("push", "--tls-verify=false", tag, f"{to.rstrip('/')}/{name}:{version()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--push", help="also push each image as HOST/REPO/<name>:<version>")
    args = ap.parse_args()
    missing = [pkg for tool, pkg in NEEDS.items() if shutil.which(tool) is None]
    if missing:
        print(
            f"make image: error: needs {', '.join(missing)} (apt-get install {' '.join(missing)})",
            file=sys.stderr,
        )
        return 2
    try:
        base_image()
        stamp = inputs_digest()
        if up_to_date(stamp):
            step("images up to date (same inputs); delete .image/ to build them again")
        else:
            wheelhouse()
            build(stamp)
            podman("image", "prune", "-f")  # the build stages (vfs keeps a full copy of each)
        for name in ROLES:
            print(DIST / f"{name}-{version()}.oci.tar")
        if args.push:
            push(args.push)
    except Failed as e:
        print(f"make image: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
