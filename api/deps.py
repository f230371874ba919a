"""Request dependencies: the database, settings and who is asking."""

from __future__ import annotations

import threading
import time
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import ANONYMOUS, Principal
from api.db.engine import Database
from api.settings import Settings
from api.tokens import authenticate

bearer = HTTPBearer(auto_error=False, description="A modelcar token (mct_…)")


class TokenCache:
    """Recently checked tokens, for ``ttl`` seconds (a revocation on another
    replica takes effect within that time; on this one, at once)."""

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


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if creds is None:
        return ANONYMOUS
    cache: TokenCache = request.app.state.tokens
    who = cache.get(creds.credentials)
    if who is None:
        with get_db(request).reading() as s:
            who = authenticate(s, creds.credentials)
        cache.put(creds.credentials, who)
    return who


def reader(
    who: Annotated[Principal, Depends(principal)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> Principal:
    if not (who.anonymous and settings.open_reads):
        who.require("read")
    return who


def publisher(who: Annotated[Principal, Depends(principal)]) -> Principal:
    who.require("publish")
    return who


def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    who.require("admin")
    return who


DB = Annotated[Database, Depends(get_db)]
Config = Annotated[Settings, Depends(get_settings)]
Anyone = Annotated[Principal, Depends(principal)]
Reader = Annotated[Principal, Depends(reader)]
Publisher = Annotated[Principal, Depends(publisher)]
Admin = Annotated[Principal, Depends(admin)]
