"""Request dependencies: the database, settings and who is asking."""

from __future__ import annotations

import threading
import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from modelcar.api.auth import ANONYMOUS, Principal
from modelcar.api.db.engine import Database
from modelcar.api.settings import Settings
from modelcar.api.tokens import SESSION_PREFIX, authenticate
from modelcar.errors import Unauthorized

READ_METHODS = frozenset({"GET", "HEAD"})
bearer = HTTPBearer(auto_error=False, description="A modelcar token (mct_…)")


class TokenCache:
    """Recently checked tokens, for ``ttl`` seconds, used for reads only (GET, HEAD).

    Every write (publishing, alias moves, node reports, token and policy management)
    checks its token against the database, so a revoked token cannot write anywhere
    once the revocation commits. A revoked token can still *read* for up to ``ttl``
    seconds on workers and replicas other than the one that revoked it (that one
    clears its cache at once). Documented in docs/decisions/0008-api-tokens.md."""

    def __init__(self, ttl: float = 5.0, size: int = 4096):
        self.ttl, self.size = ttl, size
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, secret: str) -> Principal | None:
        hit = self._entries.get(secret)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        return None

    def put(self, secret: str, who: Principal) -> None:
        with self._lock:
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[secret] = (time.monotonic() + self.ttl, who)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


# The dependencies are ``async def`` so that FastAPI runs them on the event loop:
# a sync dependency costs a thread-pool round trip per request.


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def identify(request: Request, secret: str | None, session: bool = False) -> Principal:
    """Who presents ``secret`` (anonymous without one): checked against the database,
    through the token cache for reads only (the API's routes and the web UI alike). A
    web UI session id counts only where ``session`` (the UI's pages): never as a bearer."""
    if not secret:
        return ANONYMOUS
    if secret.startswith(SESSION_PREFIX) != session:
        raise Unauthorized("the bearer token is not valid (unknown or revoked)")
    if request.method not in READ_METHODS:  # writes never trust a cached authorization
        return await run_in_threadpool(_authenticate, request.app.state.db, secret)
    cache: TokenCache = request.app.state.tokens
    who = cache.get(secret)
    if who is None:
        who = await run_in_threadpool(_authenticate, request.app.state.db, secret)
        cache.put(secret, who)
    return who


async def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    return await identify(request, creds.credentials if creds else None)


def may_read(who: Principal, settings: Settings) -> Principal:
    """``who``, if it may read: a read token or more, or anyone with ``open_reads``."""
    if not (who.anonymous and settings.open_reads):
        who.require("read")
    return who


def _authenticate(db: Database, secret: str) -> Principal:
    with db.reading() as s:
        return authenticate(s, secret)


async def reader(
    who: Annotated[Principal, Depends(principal)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> Principal:
    return may_read(who, settings)


async def publisher(who: Annotated[Principal, Depends(principal)]) -> Principal:
    who.require("publish")
    return who


async def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    who.require("admin")
    return who


DB = Annotated[Database, Depends(get_db)]
Config = Annotated[Settings, Depends(get_settings)]
Anyone = Annotated[Principal, Depends(principal)]
Reader = Annotated[Principal, Depends(reader)]
Publisher = Annotated[Principal, Depends(publisher)]
Admin = Annotated[Principal, Depends(admin)]
