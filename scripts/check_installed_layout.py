"""`make lint`'s type and layer checks, run on the package as it installs.

The apps live in top-level folders (builder/, cache_daemon/, api/) and install as
modelcar.builder, modelcar.cache_daemon and modelcar.api (setuptools package-dir;
docs/decisions/0021-one-namespace.md). mypy and import-linter read packages from
disk, not through the installed finder, so this lays the tree out as the wheel does
(a copy in a temp dir), runs both there, and names files by their repository paths.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = {"builder": "builder", "cache_daemon": "cache_daemon", "api": "api"}
BIN = Path(sys.executable).parent


def lay_out(into: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "modelcar", into / "modelcar", ignore=ignore)
    for folder, name in APPS.items():
        shutil.copytree(ROOT / folder, into / "modelcar" / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", into / "pyproject.toml")


def back(text: str, view: Path) -> str:
    for folder, name in APPS.items():
        text = text.replace(f"modelcar/{name}/", f"{folder}/")
    return text.replace(str(view) + "/", "")


def run(cmd: list[str], view: Path, summary: str = "") -> int:
    """Run a checker in the laid-out tree; print its report (on success, ``summary``
    or its last line only)."""
    env = {**os.environ, "PYTHONPATH": str(view), "MYPY_CACHE_DIR": str(ROOT / ".mypy_cache")}
    proc = subprocess.run(cmd, cwd=view, capture_output=True, text=True, env=env)
    out = back(proc.stdout + proc.stderr, view).strip()
    if proc.returncode:
        print(out)
    elif out:
        print(summary or out.splitlines()[-1])
    return proc.returncode


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="modelcar-lint-") as tmp:
        view = Path(tmp)
        lay_out(view)
        failed = run([str(BIN / "mypy"), "modelcar"], view)
        failed |= run(
            [str(BIN / "lint-imports"), "pyproject.toml"],
            view,
            "import-linter: apps independent, core imports no app, core layers kept",
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
