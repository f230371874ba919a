"""Signing keys: ECDSA P-256 in PEM, as cosign writes and reads them.

A private key comes from a file or ``env://VAR``; an encrypted one is opened with
``MODELCAR_KEY_PASSWORD``. A key's id is the sha256 of its public key's DER
(SubjectPublicKeyInfo), the same for the private key and its public half.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelcar.errors import UsageError

PASSWORD_ENV = "MODELCAR_KEY_PASSWORD"


def _read(spec: str, what: str) -> bytes:
    if spec.startswith("env://"):
        name = spec.removeprefix("env://")
        value = os.environ.get(name)
        if not value:
            raise UsageError(
                f"no {what} in the environment", subject=name, hint=f"set {name} to the PEM text"
            )
        return value.encode()
    try:
        return Path(spec).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read the {what} ({e.strerror})", subject=spec) from None


def load_private_key(spec: str) -> ec.EllipticCurvePrivateKey:
    data = _read(spec, "private key")
    password = os.environ.get(PASSWORD_ENV)
    try:
        key = serialization.load_pem_private_key(
            data, password=password.encode() if password else None
        )
    except TypeError:  # encrypted, and no password given (or one given for a plain key)
        raise UsageError(
            "the private key is encrypted and no password was given"
            if not password
            else "the private key is not encrypted; unset the password",
            subject=spec,
            hint=f"set {PASSWORD_ENV}" if not password else f"unset {PASSWORD_ENV}",
        ) from None
    except ValueError:
        raise UsageError(
            "not a PEM private key, or a wrong password",
            subject=spec,
            hint=f"an ECDSA P-256 key (`modelcar keygen`); {PASSWORD_ENV} if it is encrypted",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise UsageError("not an ECDSA P-256 private key", subject=spec)
    return key


def load_public_key(spec: str) -> ec.EllipticCurvePublicKey:
    return parse_public_key(_read(spec, "public key"), spec)


def parse_public_key(data: bytes, subject: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise UsageError(
            "not a PEM public key", subject=subject, hint="the .pub file `modelcar keygen` wrote"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise UsageError("not an ECDSA P-256 public key", subject=subject)
    return key


def public_pem(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> str:
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    der = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def generate(password: str | None) -> tuple[bytes, bytes]:
    """A new key pair: the private key's PEM (encrypted when ``password``), the public's."""
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return private, public_pem(key)


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """DER ECDSA signature over sha256(data)."""
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verifies(key: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> bool:
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True
