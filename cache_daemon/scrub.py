"""Re-hash published models against their file index (rate-limited)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from modelcar.cache_daemon.blobstream import RateLimiter
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.contract.control import VerifyResult
from modelcar.errors import UsageError
from modelcar.oci.digest import CHUNK

log = logging.getLogger("modelcar.cache")


def check_model(cache: CacheDir, digest: str, limiter: RateLimiter | None = None) -> list[str]:
    """Problems with a published model: missing, resized, changed or extra files."""
    root = cache.model_dir(digest)
    try:
        index = cache.load_index(digest)
    except (OSError, ValueError):
        return ["its file index is missing or unreadable"]
    problems: list[str] = []
    expected = {f.path: f for f in index.files}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if rel not in expected:
                problems.append(f"{rel}: not in the file index")
    for rel, entry in sorted(expected.items()):
        path = root / rel
        try:
            if path.is_symlink() or not path.is_file():
                problems.append(f"{rel}: missing or not a regular file")
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(CHUNK):
                    h.update(block)
                    if limiter:
                        limiter.consume(len(block))
        except OSError as e:
            problems.append(f"{rel}: {e.strerror}")
            continue
        if path.stat().st_size != entry.size:
            problems.append(f"{rel}: size differs from the index")
        elif "sha256:" + h.hexdigest() != entry.sha256:
            problems.append(f"{rel}: sha256 differs from the index")
    return problems


def scrub(
    cache: CacheDir, digest: str, limiter: RateLimiter | None = None, *, quarantine: bool = True
) -> VerifyResult:
    """Check one model; with ``quarantine``, move it out of models/ (never served) if it
    is corrupt."""
    problems = check_model(cache, digest, limiter)
    where = None
    if problems and quarantine:
        where = str(cache.quarantine(digest))
        cache.db.set(digest, state="failed", error=f"corrupted, quarantined: {problems[0]}")
        log.warning("quarantined %s to %s: %s", digest[:19], where, "; ".join(problems[:3]))
    return VerifyResult(digest=digest, problems=problems, quarantined=where)


def verify_models(cache: CacheDir, digests: list[str], *, quarantine: bool) -> list[VerifyResult]:
    """``scrub`` each of ``digests`` (default: every published model), all named ones
    checked to be published first."""
    targets = digests or cache.published()
    for digest in targets:
        if not isinstance(digest, str) or not cache.is_published(digest):
            raise UsageError("no such published model in the cache", subject=str(digest))
    return [scrub(cache, digest, quarantine=quarantine) for digest in targets]
