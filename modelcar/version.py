"""This release's version, and the source revision it was built from when known."""

from __future__ import annotations

import os
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

REVISION_ENV = "MODELCAR_REVISION"  # set in the runtime image from its build


def version() -> str:
    try:
        return metadata.version("modelcar")
    except metadata.PackageNotFoundError:  # pragma: no cover  # run from a bare checkout
        return "0+unknown"


@cache
def revision() -> str | None:
    """The image's build revision, or the git commit of a source checkout; else None."""
    env = os.environ.get(REVISION_ENV, "").strip()
    if env and env != "unknown":
        return env
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=2,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def describe(prog: str) -> str:
    """``modelcar-cache 0.1.0 (revision 1a2b3c4d5e6f)``."""
    rev = revision()
    return f"{prog} {version()}" + (f" (revision {rev})" if rev else "")


__version__ = version()
