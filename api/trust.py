"""Trusted public keys and the cosign signatures of image digests.

Signatures are kept by digest, whoever made them; a version counts as signed by the
trusted keys its digest has a valid signature from, checked when asked (an ECDSA
verify is tens of microseconds), so trusting or removing a key takes effect at once.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from modelcar.api.db.tables import ImageSignature, Policy, TrustedKey, Version, utcnow
from modelcar.contract import wire
from modelcar.errors import (
    Conflict,
    InvalidRequest,
    Missing,
    SignatureError,
    UnknownSigner,
    UsageError,
)
from modelcar.trust import cosign, keys

MAX_SIGNATURES_PER_DIGEST = 32


@lru_cache(maxsize=256)
def _public(pem: str) -> ec.EllipticCurvePublicKey:
    return keys.parse_public_key(pem.encode(), "key")


def key_out(k: TrustedKey) -> wire.KeyOut:
    return wire.KeyOut(
        key_id=k.key_id, name=k.name, pem=k.pem, created=k.created, created_by=k.created_by
    )


def add_key(s: Session, body: wire.KeyCreate, actor: str) -> tuple[TrustedKey, bool]:
    """Trust a key; the same key again returns the existing entry."""
    try:
        public = keys.parse_public_key(body.pem.encode(), body.name)
    except UsageError as e:
        raise InvalidRequest(e.message, subject=body.name, hint=e.hint) from None
    key_id = keys.key_id(public)
    existing = s.get(TrustedKey, key_id)
    if existing is not None:
        return existing, False
    pem = keys.public_pem(public).decode()
    key = TrustedKey(key_id=key_id, name=body.name, pem=pem, created=utcnow(), created_by=actor)
    s.add(key)
    s.flush()
    return key, True


def get_key(s: Session, key_id: str) -> TrustedKey:
    key = s.get(TrustedKey, key_id)
    if key is None:
        raise Missing("unknown key", subject=key_id, hint="list trusted keys with GET /v1/keys")
    return key


def delete_key(s: Session, key_id: str) -> None:
    key = get_key(s, key_id)
    users = [
        p.name
        for p in s.scalars(select(Policy).order_by(Policy.name))
        if key_id in ((p.verification or {}).get("keys") or [])
    ]
    if users:
        raise Conflict(
            f"the key is in use by polic{'ies' if len(users) > 1 else 'y'} {', '.join(users)}",
            subject=key_id,
            hint="change those policies' verification first",
        )
    s.delete(key)


def check_keys(s: Session, key_ids: list[str]) -> None:
    known = set(s.scalars(select(TrustedKey.key_id).where(TrustedKey.key_id.in_(key_ids))))
    if unknown := [k for k in key_ids if k not in known]:
        raise Conflict(
            f"untrusted key in verification: {', '.join(unknown)}",
            hint="add it first with POST /v1/keys",
        )


def trusted(s: Session | Connection, key_ids: list[str] | None = None) -> dict[str, str]:
    """Trusted keys' PEM by id (only ``key_ids``, when given)."""
    q = select(TrustedKey.key_id, TrustedKey.pem)
    if key_ids is not None:
        q = q.where(TrustedKey.key_id.in_(key_ids))
    return {k: pem for k, pem in s.execute(q).all()}


def add_signature(s: Session, body: wire.SignatureCreate, actor: str) -> None:
    """Keep a signature of a registered digest by a trusted key, one per key: what no
    trusted key made, or a digest no version has, is refused, so nobody can fill a
    digest's slots with signatures that will never count."""
    if s.scalar(select(Version.id).where(Version.digest == body.digest).limit(1)) is None:
        raise Missing(
            "the digest is no registered model version",
            subject=body.digest,
            hint="register the version first (POST /v1/models/NAME/versions)",
        )
    payload = body.payload.encode()
    public = [_public(pem) for pem in trusted(s).values()]
    try:
        key_id, _ = cosign.signer(payload, body.signature, body.digest, public)
    except UnknownSigner:
        raise Conflict(
            "the signature verifies with no trusted key",
            subject=body.digest,
            hint="an admin trusts its public key first (POST /v1/keys)",
        ) from None
    except SignatureError as e:
        raise InvalidRequest(
            f"not a cosign signature of this digest: {e.message}", subject=body.digest
        ) from None
    if key_id in signed_by(s, [body.digest])[body.digest]:
        return  # one signature per key and digest is all that counts
    count = s.scalar(select(func.count()).where(ImageSignature.digest == body.digest)) or 0
    if count >= MAX_SIGNATURES_PER_DIGEST:
        raise Conflict(
            f"the digest has {count} signatures already, the most kept", subject=body.digest
        )
    fingerprint = hashlib.sha256(payload + b"\0" + body.signature.encode()).hexdigest()
    s.add(
        ImageSignature(
            digest=body.digest,
            fingerprint=fingerprint,
            payload=body.payload,
            signature=body.signature,
            created=utcnow(),
            created_by=actor,
        )
    )
    s.flush()


def signed_by(s: Session | Connection, digests: list[str]) -> dict[str, list[str]]:
    """For each digest, the trusted keys (ids) with a valid signature of it."""
    rows = s.execute(
        select(ImageSignature.digest, ImageSignature.payload, ImageSignature.signature).where(
            ImageSignature.digest.in_(set(digests))
        )
    ).all()
    out: dict[str, list[str]] = {d: [] for d in digests}
    if not rows:
        return out
    public = [_public(pem) for pem in trusted(s).values()]
    for digest, payload, signature in rows:
        try:
            key_id, _ = cosign.signer(payload.encode(), signature, digest, public)
        except SignatureError:
            continue
        if key_id not in out[digest]:
            out[digest].append(key_id)
    return out
