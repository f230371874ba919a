"""Debian packages of another architecture, fetched with apt and unpacked (not installed):
e.g. arm64's static busybox for a multi-platform base. Needs root the first time (it
adds the architecture to dpkg and updates apt's lists), as ``make test`` does for the
packages it installs."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


class AptFailed(Exception):
    pass


def _run(*cmd: str, cwd: Path | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    if proc.returncode:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise AptFailed(f"{' '.join(cmd)} failed: {tail}")
    return proc.stdout


def foreign_package(package: str, arch: str, dest: Path) -> Path:
    """``package:arch`` unpacked under ``dest`` (kept between runs); ``dest`` itself."""
    stamp = dest / ".unpacked"
    if stamp.exists():
        return dest
    if arch not in _run("dpkg", "--print-foreign-architectures").split():
        _run("dpkg", "--add-architecture", arch)
        _run("apt-get", "update", "-qq")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            _run("apt-get", "download", "-qq", f"{package}:{arch}", cwd=Path(tmp))
        except AptFailed:  # the architecture's lists may be missing or stale
            _run("apt-get", "update", "-qq")
            _run("apt-get", "download", "-qq", f"{package}:{arch}", cwd=Path(tmp))
        (deb,) = Path(tmp).glob("*.deb")
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        _run("dpkg-deb", "-x", str(deb), str(dest))
    stamp.touch()
    return dest
