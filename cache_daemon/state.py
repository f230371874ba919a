"""The cache dir's small state database (SQLite): per-model state and last use."""

from __future__ import annotations

import builtins
import enum
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from modelcar.contract.wire import ModelState
from modelcar.errors import DiskFull, StorageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    digest      TEXT PRIMARY KEY,
    image       TEXT NOT NULL,
    state       TEXT NOT NULL,
    size        INTEGER NOT NULL DEFAULT 0,
    bytes_done  INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    last_used   REAL NOT NULL DEFAULT 0,
    updated     REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS layers_done (
    digest TEXT NOT NULL,
    layer  TEXT NOT NULL,
    PRIMARY KEY (digest, layer)
);
"""


class Keep(enum.Enum):
    """A field left as it is by :meth:`StateDB.set` (``None`` means: clear it)."""

    KEEP = "keep"


@dataclass
class ModelRecord:
    digest: str
    image: str
    state: ModelState
    size: int
    bytes_done: int
    error: str | None
    last_used: float
    updated: float


class StateDB:
    """Thread-safe: one connection, one lock (writes are tiny and rare)."""

    def __init__(self, path: Path, *, readonly: bool = False):
        """``readonly``: a reader beside the daemon (WAL: it never blocks the writer)."""
        self._lock = threading.Lock()
        if readonly:
            try:
                uri = f"file:{path}?mode=ro"
                self._conn = sqlite3.connect(
                    uri, uri=True, check_same_thread=False, isolation_level=None
                )
                self._conn.execute("PRAGMA query_only=ON")
                self._conn.execute("SELECT 1 FROM models LIMIT 1")
            except sqlite3.Error as e:
                raise StorageError("cannot read the cache state", subject=f"{path}: {e}") from None
            return
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if "full" in str(e):
                    raise DiskFull("cannot record the cache state", subject=str(e)) from None
                raise StorageError("cannot record the cache state", subject=str(e)) from None

    def get(self, digest: str) -> ModelRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT digest, image, state, size, bytes_done, error, last_used, updated "
                "FROM models WHERE digest = ?",
                (digest,),
            ).fetchone()
        return ModelRecord(*row) if row else None

    def all(self) -> list[ModelRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT digest, image, state, size, bytes_done, error, last_used, updated "
                "FROM models ORDER BY digest"
            ).fetchall()
        return [ModelRecord(*r) for r in rows]

    def set(
        self,
        digest: str,
        *,
        image: str | None = None,
        state: ModelState | None = None,
        size: int | None = None,
        bytes_done: int | None = None,
        error: str | Keep | None = Keep.KEEP,
        used: bool = False,
    ) -> None:
        """Upsert the given fields (an error left out is kept; ``None`` clears it)."""
        now = time.time()
        with self._tx() as c:
            c.execute(
                "INSERT INTO models (digest, image, state, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(digest) DO NOTHING",
                (digest, image or "", state or "pending", now),
            )
            fields = {"image": image, "state": state, "size": size, "bytes_done": bytes_done}
            sets: list[tuple[str, object]] = [(k, v) for k, v in fields.items() if v is not None]
            if not isinstance(error, Keep):
                sets.append(("error", error))
            if used:
                sets.append(("last_used", now))
            sets.append(("updated", now))
            c.execute(
                f"UPDATE models SET {', '.join(f'{k} = ?' for k, _ in sets)} WHERE digest = ?",
                [v for _, v in sets] + [digest],
            )

    def reset_interrupted(self) -> None:
        """Whoever holds the lock runs no pull yet: a 'pulling' row is a pull that died."""
        with self._tx() as c:
            c.execute(
                "UPDATE models SET state = 'pending', error = 'interrupted; resumes on the next "
                "pull' WHERE state = 'pulling'"
            )

    def forget(self, digest: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM models WHERE digest = ?", (digest,))
            c.execute("DELETE FROM layers_done WHERE digest = ?", (digest,))

    def layers_done(self, digest: str) -> builtins.set[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT layer FROM layers_done WHERE digest = ?", (digest,)
            ).fetchall()
        return {r[0] for r in rows}

    def layer_done(self, digest: str, layer: str) -> None:
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO layers_done VALUES (?, ?)", (digest, layer))

    def clear_layers(self, digest: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM layers_done WHERE digest = ?", (digest,))

    def close(self) -> None:
        self._conn.close()
