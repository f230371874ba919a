"""Key-based signatures in cosign's layout (sigstore/cosign ``specs/SIGNATURE_SPEC.md``),
so that ``cosign verify --key pub.pem --insecure-ignore-tlog`` accepts what we write and
we accept what cosign writes.

The signatures of image ``REPO@sha256:<hex>`` live in the same repository under the tag
``sha256-<hex>.sig``: an OCI manifest whose layers are simple-signing payloads (each
naming the repository and the image digest), each carrying in the annotation
``dev.cosignproject.cosign/signature`` the base64 of a DER ECDSA signature over the
payload's bytes. Another signature appends a layer.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from modelcar import decode
from modelcar.errors import ModelcarError, NotFound, SignatureError, UnknownSigner
from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import hex_of, sha256_bytes
from modelcar.oci.manifest import Descriptor, Manifest, canonical_json, parse_manifest
from modelcar.oci.reference import Ref
from modelcar.oci.store import ImageStore
from modelcar.trust import keys

PAYLOAD_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_KIND = "cosign container image signature"
MAX_PAYLOAD = 64 << 10
MAX_SIGNATURES = 256


def signature_tag(digest: str) -> str:
    return f"sha256-{hex_of(digest)}.sig"


def identity(ref: Ref) -> str:
    """The repository a payload names (no tag, no digest)."""
    return str(ref.name)


def payload(ref: Ref, digest: str) -> bytes:
    return canonical_json(
        {
            "critical": {
                "identity": {"docker-reference": identity(ref)},
                "image": {"docker-manifest-digest": digest},
                "type": SIGNATURE_KIND,
            },
            "optional": None,
        }
    )


def _existing(store: ImageStore, digest: str) -> list[Descriptor]:
    try:
        fetched = store.get_manifest(signature_tag(digest))
    except NotFound:
        return []
    return list(parse_manifest(fetched.data).layers)


def count(store: ImageStore, digest: str) -> int:
    """How many signatures the digest has in the cosign layout (none checked)."""
    return len(_existing(store, digest))


@dataclass(frozen=True)
class Signature:
    """One signature as cosign stores it: the simple-signing payload and the base64 of
    the DER ECDSA signature over it (what the API keeps, too)."""

    payload: bytes
    signature: str


def sign_image(
    store: ImageStore, ref: Ref, digest: str, key: ec.EllipticCurvePrivateKey
) -> Signature:
    """Add a signature of ``digest`` with ``key`` to its signature manifest; when one
    by ``key`` is there already (a rebuild of the same digest), that one is kept."""
    existing = _existing(store, digest)
    for old in existing:
        try:
            found = _check(store, old, digest, [key.public_key()])
        except SignatureError:
            continue
        if found is not None:
            return found[2]
    body = payload(ref, digest)
    signature = base64.b64encode(keys.sign(key, body)).decode()
    body_digest = sha256_bytes(body)
    if not store.has_blob(body_digest):
        store.put_blob(body_digest, len(body), lambda: [body])
    layer = Descriptor(
        mediaType=PAYLOAD_TYPE,
        digest=body_digest,
        size=len(body),
        annotations={SIGNATURE_ANNOTATION: signature},
    )
    layers = [*existing, layer]
    config = canonical_json(
        {
            "architecture": "",
            "os": "",
            "created": "0001-01-01T00:00:00Z",
            "config": {},
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "rootfs": {"type": "layers", "diff_ids": [d.digest for d in layers]},
        }
    )
    config_digest = sha256_bytes(config)
    if not store.has_blob(config_digest):
        store.put_blob(config_digest, len(config), lambda: [config])
    manifest = Manifest(
        config=Descriptor(mediaType=mt.OCI_CONFIG, digest=config_digest, size=len(config)),
        layers=layers,
    ).canonical()
    store.put_manifest(manifest, mt.OCI_MANIFEST, sha256_bytes(manifest))
    store.put_manifest(manifest, mt.OCI_MANIFEST, signature_tag(digest))
    return Signature(body, signature)


def signer(
    body: bytes, signature: str, digest: str, public_keys: list[ec.EllipticCurvePublicKey]
) -> tuple[str, str]:
    """Which of ``public_keys`` made ``signature`` (base64 DER) over ``body``, a payload
    naming ``digest``: its key id and the repository the payload names. SignatureError
    (saying why) otherwise."""
    try:
        critical = decode.json(body, "a signature payload", SignatureError)["critical"]
        named = critical["image"]["docker-manifest-digest"]
        kind = critical["type"]
        who = str(critical["identity"]["docker-reference"])
        raw = decode.b64(signature, "a signature", SignatureError)
    except (KeyError, TypeError):
        raise SignatureError("a malformed payload or signature") from None
    if kind != SIGNATURE_KIND or named != digest:
        raise SignatureError(f"a payload for another image ({named})")
    for key in public_keys:
        if keys.verifies(key, body, raw):
            return keys.key_id(key), who
    raise UnknownSigner("a signature by another key, or over other bytes")


def _check(
    store: ImageStore, layer: Descriptor, digest: str, public_keys: list[ec.EllipticCurvePublicKey]
) -> tuple[str, str, Signature] | None:
    """One layer of a signature manifest: None if it is no cosign signature, else the
    key id, the repository named and the signature; SignatureError if it does not verify."""
    sig = (layer.annotations or {}).get(SIGNATURE_ANNOTATION)
    if layer.mediaType != PAYLOAD_TYPE or not sig:
        return None
    if layer.size > MAX_PAYLOAD:
        raise SignatureError("a payload over 64 KiB")
    body = store.read_blob(layer.digest, MAX_PAYLOAD)  # checked against its digest
    key_id, who = signer(body, sig, digest, public_keys)
    return key_id, who, Signature(body, sig)


@dataclass(frozen=True)
class Verified:
    key_id: str
    identity: str
    signatures: int  # in the signature manifest, all of them


def verify_image(
    store: ImageStore, ref: Ref, digest: str, public_keys: list[ec.EllipticCurvePublicKey]
) -> Verified:
    """A signature of ``digest`` by one of ``public_keys``, or SignatureError."""
    subject = f"{identity(ref)}@{digest}"
    try:
        fetched = store.get_manifest(signature_tag(digest))
    except NotFound:
        raise SignatureError("the image is not signed", subject=subject) from None
    try:
        layers = parse_manifest(fetched.data).layers
    except ModelcarError as e:
        raise SignatureError(
            f"unreadable signature manifest ({e.message})", subject=subject
        ) from None
    if len(layers) > MAX_SIGNATURES:
        raise SignatureError(f"over {MAX_SIGNATURES} signatures", subject=subject)
    reasons = []
    for layer in layers:
        try:
            found = _check(store, layer, digest, public_keys)
        except ModelcarError as e:  # a missing or oversized blob too: try the next layer
            reasons.append(e.message)
            continue
        if found is not None:
            return Verified(found[0], found[1], len(layers))
    why = "; ".join(dict.fromkeys(reasons)) or "no cosign signature layers"
    raise SignatureError(f"no valid signature by the given key ({why})", subject=subject)
