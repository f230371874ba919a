"""Creating, listing, revoking and checking tokens."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelcar.api.auth import Principal, hash_secret, new_secret
from modelcar.api.db.tables import Token, utcnow
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


def authenticate(s: Session, secret: str) -> Principal:
    token = s.scalar(select(Token).where(Token.secret_hash == hash_secret(secret)))
    if token is None:
        raise Unauthorized("the bearer token is not valid (unknown or revoked)")
    return Principal(name=token.name, role=token.role, node=token.node)  # type: ignore[arg-type]  # the column holds a valid role
