"""Helpers for the cache daemon tests: build an image, run modelcar-cache, inspect a cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import Result, run_cli


def build(model: Path, target: str, *extra: str) -> str:
    """Build with one layer per file over 1 MiB; return the pinned reference."""
    return run_cli(
        "build", str(model), target, "-q", "--large-file-threshold", "1MiB", *extra
    ).last_line


def cache_cli(
    *args: str, check: bool = True, env: dict | None = None, timeout: float = 300
) -> Result:
    return run_cli(*args, module="cache_daemon.cli", check=check, env=env, timeout=timeout)


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


def published(cache: Path) -> list[str]:
    models = cache / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []
