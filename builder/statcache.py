"""A stat cache: a layer's digest, keyed by its tar headers and each file's stat identity.

If no file in a layer changed (same device, inode, size, mtime and ctime), a
rebuild knows the layer digest, each file's sha256 and its chunks' sha256 (contract
v1.1) without reading a byte. A row without chunks (an older release's) is a miss.
ctime cannot be set from user space, so an in-place rewrite always misses.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path


def default_path() -> Path:
    base = os.environ.get("MODELCAR_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "modelcar"
    )
    return Path(base) / "statcache.db"


def layer_key(headers: list[bytes], identities: list[str]) -> str:
    h = hashlib.sha256()
    for part in headers:
        h.update(part)
    h.update(json.dumps(identities).encode())
    return h.hexdigest()


class StatCache:
    def __init__(self, path: Path | None):
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS layers (key TEXT PRIMARY KEY, digest TEXT NOT NULL,"
                " size INTEGER NOT NULL, files TEXT NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS chunks (key TEXT PRIMARY KEY, files TEXT NOT NULL)"
            )
            self._db.commit()
        except (OSError, sqlite3.Error):
            self._db = None  # a cache that cannot be opened is simply not used

    def get(self, key: str) -> tuple[str, int, dict[str, str], dict[str, list[str]]] | None:
        """(layer digest, size, each file's sha256, each file's chunk digests)."""
        if self._db is None:
            return None
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT l.digest, l.size, l.files, c.files FROM layers l"
                    " JOIN chunks c ON c.key = l.key WHERE l.key = ?",
                    (key,),
                ).fetchone()
            except sqlite3.Error:
                return None
        if row is None:
            return None
        return row[0], row[1], json.loads(row[2]), json.loads(row[3])

    def put(
        self, key: str, digest: str, size: int, files: dict[str, str], chunks: dict[str, list[str]]
    ) -> None:
        if self._db is None:
            return
        with self._lock:
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO layers VALUES (?, ?, ?, ?)",
                    (key, digest, size, json.dumps(files, sort_keys=True)),
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO chunks VALUES (?, ?)",
                    (key, json.dumps(chunks, sort_keys=True)),
                )
                self._db.commit()
            except sqlite3.Error:
                pass

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
