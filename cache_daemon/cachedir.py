"""The node cache directory: who owns it, where models live, and atomic moves.

<root>/.lock                  held by the one process using the dir
<root>/state.db               per-model state (see state.py)
<root>/models/sha256-<hex>/   published, verified models (what pods mount)
<root>/staging/sha256-<hex>/  pulls in progress (never mounted)
<root>/index/sha256-<hex>.json  each model's file index, for verify and scrub
<root>/quarantine/…           corrupted models, kept for inspection, never served
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import time
from pathlib import Path

from cache_daemon.state import StateDB
from modelcar.errors import ModelcarError, UsageError
from modelcar.image import FileIndex
from modelcar.nodecache import model_dir_name


class CacheBusy(ModelcarError):
    default_hint = "one modelcar-cache per cache dir; stop the other one or use another --cache-dir"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CacheDir:
    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        self._lock_fd: int | None = None
        self.state: StateDB | None = None

    # --- ownership -------------------------------------------------------------

    def open(self) -> CacheDir:
        try:
            for sub in ("models", "staging", "index", "quarantine"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(
                f"cannot use the cache dir ({e.strerror})", subject=str(self.root)
            ) from None
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
                owner = (self.root / ".lock").read_text().strip() or "?"
                raise CacheBusy(
                    "the cache dir is in use", subject=f"{self.root} (pid {owner})"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        self.state = StateDB(self.root / "state.db")
        with contextlib.suppress(ModelcarError):  # a full disk: the next pull says so
            self.state.reset_interrupted()
        return self

    def close(self) -> None:
        if self.state:
            self.state.close()
            self.state = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> CacheDir:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> StateDB:
        assert self.state is not None, "cache dir not opened"
        return self.state

    # --- paths -----------------------------------------------------------------

    def model_dir(self, digest: str) -> Path:
        return self.root / "models" / model_dir_name(digest)

    def staging_dir(self, digest: str) -> Path:
        return self.root / "staging" / model_dir_name(digest)

    def index_path(self, digest: str) -> Path:
        return self.root / "index" / f"{model_dir_name(digest)}.json"

    def is_published(self, digest: str) -> bool:
        return self.model_dir(digest).is_dir()

    def published(self) -> list[str]:
        out = []
        for p in sorted((self.root / "models").iterdir()):
            if p.name.startswith("sha256-") and p.is_dir():
                out.append("sha256:" + p.name.removeprefix("sha256-"))
        return out

    def staged(self) -> list[str]:
        return [
            "sha256:" + p.name.removeprefix("sha256-")
            for p in sorted((self.root / "staging").iterdir())
            if p.name.startswith("sha256-")
        ]

    def load_index(self, digest: str) -> FileIndex:
        return FileIndex.model_validate_json(self.index_path(digest).read_bytes())

    # --- moves -----------------------------------------------------------------

    def save_index(self, digest: str, index: FileIndex) -> None:
        path = self.index_path(digest)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(index.model_dump_json().encode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def publish(self, digest: str) -> Path:
        """One atomic rename from staging to models, then make it durable."""
        src, dst = self.staging_dir(digest), self.model_dir(digest)
        fsync_dir(src)
        os.rename(src, dst)
        fsync_dir(dst.parent)
        fsync_dir(src.parent)
        return dst

    def remove_staging(self, digest: str) -> None:
        shutil.rmtree(self.staging_dir(digest), ignore_errors=True)

    def remove_model(self, digest: str) -> None:
        """Unpublish first (one rename out of models/), then delete at leisure."""
        src = self.model_dir(digest)
        if src.exists():
            doomed = self.root / "staging" / f".evicting-{src.name}-{time.time_ns()}"
            os.rename(src, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        self.index_path(digest).unlink(missing_ok=True)

    def quarantine(self, digest: str) -> Path:
        src = self.model_dir(digest)
        dst = self.root / "quarantine" / f"{src.name}-{int(time.time())}"
        os.rename(src, dst)
        return dst

    # --- space -----------------------------------------------------------------

    def filesystem(self) -> tuple[int, int]:
        """(capacity, free) bytes of the filesystem holding the cache."""
        st = os.statvfs(self.root)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
