"""Tokens (admin only). The secret is in the create answer and nowhere else."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from modelcar.api import tokens
from modelcar.api.deps import DB, Admin
from modelcar.api.routes import ERRORS
from modelcar.contract import wire as wire

router = APIRouter(prefix="/v1/tokens", tags=["tokens"], responses=ERRORS)


@router.get("", response_model=list[wire.TokenOut], summary="List tokens (never their secrets)")
def list_tokens(db: DB, _: Admin) -> list[wire.TokenOut]:
    with db.reading() as s:
        return [tokens.token_out(t) for t in tokens.list_tokens(s)]


@router.post(
    "", response_model=wire.TokenCreated, status_code=201, summary="Create a token (shown once)"
)
def create_token(body: wire.TokenCreate, db: DB, _: Admin) -> wire.TokenCreated:
    with db.writing() as s:
        token, secret = tokens.create_token(s, body)
        return wire.TokenCreated(**tokens.token_out(token).model_dump(), token=secret)


@router.delete("/{token_id}", status_code=204, summary="Revoke a token")
def revoke_token(
    token_id: Annotated[int, Path(ge=1, le=2**31 - 1)], request: Request, db: DB, _: Admin
) -> Response:
    with db.writing() as s:
        tokens.revoke_token(s, token_id)
    request.app.state.tokens.clear()
    return Response(status_code=204)
