"""Trusted keys (admin) and image signatures (publishers)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from sqlalchemy import select

from modelcar.api import trust
from modelcar.api.db.tables import TrustedKey
from modelcar.api.deps import DB, Admin, Publisher, Reader
from modelcar.api.routes import ERRORS
from modelcar.contract import wire as wire

router = APIRouter(prefix="/v1", tags=["trust"], responses=ERRORS)

KeyIdPath = Annotated[
    str, Path(pattern=r"^sha256:[a-f0-9]{64}$", description="sha256 of the key's DER")
]


@router.get("/keys", response_model=list[wire.KeyOut], summary="List trusted public keys")
def list_keys(db: DB, _: Reader) -> list[wire.KeyOut]:
    with db.reading() as s:
        return [trust.key_out(k) for k in s.scalars(select(TrustedKey).order_by(TrustedKey.name))]


@router.post(
    "/keys",
    response_model=wire.KeyOut,
    status_code=201,
    summary="Trust a public key (admin); the same key again answers 200",
    responses={200: {"model": wire.KeyOut, "description": "Already trusted"}},
)
def add_key(body: wire.KeyCreate, response: Response, db: DB, who: Admin) -> wire.KeyOut:
    with db.writing() as s:
        key, created = trust.add_key(s, body, who.name)
        out = trust.key_out(key)
    response.status_code = 201 if created else 200
    return out


@router.get("/keys/{key_id}", response_model=wire.KeyOut, summary="One trusted key")
def get_key(key_id: KeyIdPath, db: DB, _: Reader) -> wire.KeyOut:
    with db.reading() as s:
        return trust.key_out(trust.get_key(s, key_id))


@router.delete(
    "/keys/{key_id}", status_code=204, summary="Stop trusting a key no policy names (admin)"
)
def delete_key(key_id: KeyIdPath, db: DB, _: Admin) -> Response:
    with db.writing() as s:
        trust.delete_key(s, key_id)
    return Response(status_code=204)


@router.post(
    "/signatures",
    response_model=wire.SignatureOut,
    summary="Record a cosign signature of an image digest (publishers)",
)
def add_signature(body: wire.SignatureCreate, db: DB, who: Publisher) -> wire.SignatureOut:
    with db.writing() as s:
        trust.add_signature(s, body, who.name)
        signed = trust.signed_by(s, [body.digest])[body.digest]
    return wire.SignatureOut(digest=body.digest, signed_by=signed)
