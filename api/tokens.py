"""Creating, listing, revoking and checking tokens."""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from modelcar.api.auth import Principal, hash_secret, new_secret
from modelcar.api.db.tables import Token, UiSession, utcnow
from modelcar.contract import wire as wire
from modelcar.errors import Missing, Unauthorized


def create_token(
    s: Session, body: wire.UserTokenCreate | wire.NodeTokenCreate
) -> tuple[Token, str]:
    """Store a new token's hash; return the row and the secret (shown once)."""
    node = body.node if isinstance(body, wire.NodeTokenCreate) else None
    secret = new_secret()
    token = Token(
        name=body.name, role=body.role, node=node, secret_hash=hash_secret(secret), created=utcnow()
    )
    s.add(token)
    s.flush()
    return token, secret


def token_out(t: Token) -> wire.TokenOut:
    return wire.TokenOut(id=t.id, name=t.name, role=t.role, node=t.node, created=t.created)


def list_tokens(s: Session) -> list[Token]:
    return list(s.scalars(select(Token).order_by(Token.id)))


def revoke_token(s: Session, token_id: int) -> Token:
    token = s.get(Token, token_id)
    if token is None:
        raise Missing("unknown token", subject=str(token_id))
    s.delete(token)
    return token


#: What a UI session id starts with (a bearer token starts with ``mct_``).
SESSION_PREFIX = "mcs_"


def _principal(token: Token) -> Principal:
    return Principal(name=token.name, role=token.role, node=token.node)  # type: ignore[arg-type]  # the column holds a valid role


def authenticate(s: Session, secret: str) -> Principal:
    """Who a bearer token, or a web UI session id, stands for."""
    if secret.startswith(SESSION_PREFIX):
        token = s.scalar(
            select(Token)
            .join(UiSession, UiSession.token_id == Token.id)
            .where(UiSession.secret_hash == hash_secret(secret), UiSession.expires > utcnow())
        )
        if token is None:
            raise Unauthorized("the web UI session has ended", hint="sign in again")
        return _principal(token)
    token = s.scalar(select(Token).where(Token.secret_hash == hash_secret(secret)))
    if token is None:
        raise Unauthorized("the bearer token is not valid (unknown or revoked)")
    return _principal(token)


def open_session(s: Session, token_secret: str, hours: float) -> str:
    """A web UI session for a token: its id (the cookie's value). Only the id's sha256
    is stored, and the token itself never leaves the sign-in request."""
    token = s.scalar(select(Token).where(Token.secret_hash == hash_secret(token_secret)))
    if token is None:
        raise Unauthorized("the bearer token is not valid (unknown or revoked)")
    now = utcnow()
    s.execute(delete(UiSession).where(UiSession.expires <= now))  # the ended ones
    secret = SESSION_PREFIX + secrets.token_urlsafe(32)
    s.add(
        UiSession(
            secret_hash=hash_secret(secret),
            token_id=token.id,
            created=now,
            expires=now + timedelta(hours=hours),
        )
    )
    s.flush()
    return secret


def close_session(s: Session, secret: str) -> None:
    s.execute(delete(UiSession).where(UiSession.secret_hash == hash_secret(secret)))
