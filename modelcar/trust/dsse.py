"""DSSE envelopes (secure-systems-lab/dsse ``protocol.md`` v1.0.0) over in-toto Statements.

The signature covers the envelope's PAE (pre-authentication encoding) of the payload
type and the payload bytes, never a re-serialisation, so a verifier checks exactly the
bytes it will parse. Signatures are DER ECDSA P-256 over SHA-256, as cosign's.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from modelcar import decode
from modelcar.errors import SignatureError, UnknownSigner
from modelcar.oci.manifest import canonical_json
from modelcar.trust import keys

IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"
STATEMENT_V1 = "https://in-toto.io/Statement/v1"
MAX_SIGNATURES = 16


def pae(payload_type: str, payload: bytes) -> bytes:
    """``DSSEv1 <len> <type> <len> <payload>``, lengths in ASCII decimal bytes."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def statement(subject: list[dict[str, Any]], predicate_type: str, predicate: Any) -> bytes:
    return canonical_json(
        {
            "_type": STATEMENT_V1,
            "subject": subject,
            "predicateType": predicate_type,
            "predicate": predicate,
        }
    )


def seal(payload: bytes, key: ec.EllipticCurvePrivateKey, keyid: str = "") -> dict[str, Any]:
    """An in-toto DSSE envelope of ``payload`` signed by ``key``."""
    signature = keys.sign(key, pae(IN_TOTO_PAYLOAD, payload))
    return {
        "payloadType": IN_TOTO_PAYLOAD,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": keyid, "sig": base64.b64encode(signature).decode()}],
    }


def open_envelope(
    envelope: Any, public_keys: list[ec.EllipticCurvePublicKey], subject: str
) -> tuple[dict[str, Any], str]:
    """The in-toto Statement inside ``envelope`` and the id of the key that signed it.

    Raises SignatureError (naming ``subject``) when no signature verifies with any of
    ``public_keys``, or when the payload is not an in-toto Statement v1.
    """
    try:
        payload_type = envelope["payloadType"]
        payload = decode.b64(envelope["payload"], "a DSSE payload", SignatureError, subject)
        signatures = [
            decode.b64(s["sig"], "a DSSE signature", SignatureError, subject)
            for s in envelope["signatures"][: MAX_SIGNATURES + 1]
        ]
    except (KeyError, TypeError, ValueError):
        raise SignatureError("a malformed DSSE envelope", subject=subject) from None
    if payload_type != IN_TOTO_PAYLOAD:
        raise SignatureError(f"a DSSE envelope of another type ({payload_type})", subject=subject)
    if len(signatures) > MAX_SIGNATURES:
        raise SignatureError(
            f"a DSSE envelope with over {MAX_SIGNATURES} signatures", subject=subject
        )
    signed = pae(payload_type, payload)
    signer = next(
        (keys.key_id(k) for k in public_keys for s in signatures if keys.verifies(k, signed, s)),
        None,
    )
    if signer is None:
        raise UnknownSigner(
            "an attestation signed by another key, or over other bytes", subject=subject
        )
    claims = decode.json(payload, "an attestation payload", SignatureError, subject)
    if not isinstance(claims, dict) or claims.get("_type") != STATEMENT_V1:
        raise SignatureError("an attestation that is not an in-toto Statement v1", subject=subject)
    return claims, signer
