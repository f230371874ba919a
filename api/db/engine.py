"""Engines, sessions and the schema revision check.

SQLite gets WAL (readers never wait for the writer), a busy timeout, foreign
keys, and ``BEGIN IMMEDIATE`` for write transactions so two writers queue
instead of failing halfway. PostgreSQL uses row locks (see ``tables``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from modelcar.errors import DatabaseNotReady, UsageError

MIGRATIONS = Path(__file__).with_name("migrations")
_WRITE = "modelcar_write"


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 (the driver we ship), not psycopg2."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def redact(url: str) -> str:
    try:
        return make_url(normalise_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


def make_engine(url: str, *, pool_size: int = 20) -> Engine:
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(
            "invalid database URL",
            subject=url[:200],
            hint="use sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB",
        ) from None
    try:
        if parsed.get_backend_name() == "sqlite":
            engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
            _tune_sqlite(engine)
        else:
            # No pre-ping (a round trip per checkout): a connection the server dropped
            # fails one request with 503, and the pool is then refreshed.
            engine = create_engine(
                url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=600
            )
    except (NoSuchModuleError, ImportError) as e:
        raise UsageError(
            "no driver for the database URL",
            subject=redact(url),
            hint="use sqlite:///PATH, or postgresql://… with modelcar[postgres] installed",
        ) from e
    return engine


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy issues BEGIN itself (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE) else "BEGIN")


class Database:
    """One engine, and sessions for reading and for writing."""

    def __init__(self, url: str, *, pool_size: int = 20):
        self.url = normalise_url(url)
        self.engine = make_engine(self.url, pool_size=pool_size)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._write = sessionmaker(
            self.engine.execution_options(**{_WRITE: True}), expire_on_commit=False
        )

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A connection for Core reads, no session. On a server database it is
        autocommit: no BEGIN/ROLLBACK round trips; each statement sees the latest
        committed state."""
        # SQLite: a plain connection is faster (one shared lock for both reads).
        with (self.engine if self.is_sqlite else self._autocommit).connect() as conn:
            yield conn

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A transaction that commits at the end or rolls back entirely."""
        with self._write() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()

    # --- migrations ----------------------------------------------------------

    def alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["engine"] = self.engine
        return cfg

    def head(self) -> str:
        return ScriptDirectory.from_config(self.alembic_config()).get_current_head() or ""

    def current(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision()
        except OperationalError as e:
            raise DatabaseNotReady(
                "cannot reach the database",
                subject=redact(self.url),
                hint=f"check the URL and that the server runs ({_first_line(e)})",
            ) from None

    def upgrade(self) -> tuple[str | None, str]:
        before = self.current()
        command.upgrade(self.alembic_config(), "head")
        return before, self.head()

    def check_migrated(self) -> None:
        current, head = self.current(), self.head()
        if current != head:
            raise DatabaseNotReady(
                f"the database schema is at {current or 'nothing'}, this release needs {head}",
                subject=redact(self.url),
                hint=f"run: modelcar-api db upgrade --db '{redact(self.url)}'",
            )


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
