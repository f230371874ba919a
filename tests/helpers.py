"""What the tests share: running the CLIs as a user would, reading a cache, talking to
the API. Fixtures (servers) are in conftest.py and harness/; tests import helpers
from here only.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
VERSION = next(
    line.split('"')[1]
    for line in (ROOT / "pyproject.toml").read_text().splitlines()
    if line.startswith("version = ")
)


def write_docker_config(directory: Path, host: str, user: str, password: str) -> Path:
    """A docker config.json in ``directory`` with credentials for ``host``, written in
    place (the same inode, as a rotated Secret or a `docker login` leaves it)."""
    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    with open(directory / "config.json", "w") as f:
        f.write(json.dumps({"auths": {host: {"auth": auth}}}))
    return directory


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = self.stdout.strip().splitlines()
        return lines[-1] if lines else ""


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    honour_permissions: bool = False,
    timeout: float = 300,
    module: str = "modelcar.builder.cli",
) -> Result:
    """Run ``modelcar`` as a user would: a subprocess, its exit code, stdout and stderr.

    ``honour_permissions``: as root, drop the capabilities that let root read any file,
    so a mode-000 file is unreadable as it would be for a normal user.
    """
    full_env = {**os.environ, **(env or {})}
    prefix: list[str] = []
    if honour_permissions and os.geteuid() == 0:
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
        )
    return result


def run_api_cli(*args: str, **kwargs) -> Result:
    """Run ``modelcar-api``."""
    return run_cli(*args, module="modelcar.api.cli", **kwargs)


def assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.code != 0, result
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


# --- the cache daemon -------------------------------------------------------------


def build(model: Path, target: str, *extra: str) -> str:
    """Build with one layer per file over 1 MiB; return the pinned reference."""
    return run_cli(
        "build", str(model), target, "-q", "--large-file-threshold", "1MiB", *extra
    ).last_line


def cache_cli(
    *args: str, check: bool = True, env: dict | None = None, timeout: float = 300
) -> Result:
    return run_cli(*args, module="modelcar.cache_daemon.cli", check=check, env=env, timeout=timeout)


def daemon_once(
    cache: Path, config: Path, *extra: str, node: str = "n1", timeout: float = 300
) -> Result:
    """One pass of `modelcar-cache run` over a --config file of models (plain HTTP, no
    status port); its result, whatever the exit code."""
    return cache_cli(
        "run",
        "--node",
        node,
        "--cache-dir",
        str(cache),
        "--config",
        str(config),
        "--once",
        "--listen",
        "",
        "--plain-http",
        *extra,
        check=False,
        timeout=timeout,
    )


def pull(cache: Path, ref: str, *extra: str, check: bool = True) -> tuple[Result, dict | None]:
    r = cache_cli("pull", ref, "--cache-dir", str(cache), "--json", "-q", *extra, check=check)
    lines = r.stdout.strip().splitlines()
    return r, (json.loads(lines[-2]) if r.code == 0 else None)


def tree(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> str:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``; what it wrote to
    its one piped stream (stderr, or else stdout)."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return err if err is not None else (out or "")


def tar_member(name, data=b"", kind=tarfile.REGTYPE, mode=0o644, link="", pax=None):
    """One tar entry, as Python's tarfile writes it (hostile ones included)."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if pax:
        info.pax_headers = pax
    return info, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def make_tar(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    """A tar of ``tar_member`` entries, or of ``(name, data)`` pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for entry in members:
            info, body = entry if isinstance(entry[0], tarfile.TarInfo) else tar_member(*entry)
            t.addfile(info, body)
    return buf.getvalue()


def published(cache: Path) -> list[str]:
    models = cache / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


# --- the API -------------------------------------------------------------------------


def digest(seed: object) -> str:
    return "sha256:" + hashlib.sha256(str(seed).encode()).hexdigest()


def register(c: httpx.Client, name: str, seed: object, **fields) -> httpx.Response:
    body = {"digest": digest(seed), "repository": "registry.example:5000/team/" + name, **fields}
    return c.post(f"/v1/models/{name}/versions", json=body)


def error_of(r: httpx.Response) -> dict:
    """The JSON error body; every error answer must have one."""
    assert r.headers["content-type"].startswith("application/json"), r.text
    err = r.json()["error"]
    assert err["code"] and err["message"] and "\n" not in err["message"]
    return err


# --- independent tools -------------------------------------------------------------


def unpack_with_umoci(ref: str, work: Path, arch: str | None = None) -> Path:
    """skopeo copies the image (``arch``'s, of an index), umoci unpacks it: the rootfs."""
    work.mkdir(parents=True, exist_ok=True)
    layout = work / "layout"
    override = ["--override-arch", arch] if arch else []
    subprocess.run(
        [
            "skopeo",
            *override,
            "copy",
            "--src-tls-verify=false",
            "--preserve-digests",
            f"docker://{ref}",
            f"oci:{layout}:img",
        ],
        check=True,
        capture_output=True,
    )
    bundle = work / "bundle"
    args = ["umoci", "unpack", "--image", f"{layout}:img", str(bundle)]
    if os.geteuid() != 0:
        args.insert(2, "--rootless")
    subprocess.run(args, check=True, capture_output=True)
    return bundle / "rootfs"
