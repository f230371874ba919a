"""Attestations of a modelcar, pushed as OCI 1.1 referrers of its manifest:

- SLSA Provenance v1, an in-toto Statement in a DSSE envelope
  (artifact type ``application/vnd.dsse.envelope.v1+json``);
- an OpenSSF Model Signing bundle over its files (``…sigstore.bundle.v0.3+json``).

Checking them reads the referrers, their manifests and one small blob each; a referrer
of the wrong subject, a missing blob, a broken envelope or another image's statement
is refused outright, while a valid envelope by a key not asked for is passed over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from modelcar import decode
from modelcar.errors import ModelcarError, NotFound, SignatureError, UnknownSigner
from modelcar.format.fileindex import FileIndex
from modelcar.oci import referrers
from modelcar.oci.digest import hex_of
from modelcar.oci.manifest import Descriptor, canonical_json, parse_manifest
from modelcar.oci.reference import Ref
from modelcar.oci.store import ImageStore
from modelcar.trust import dsse, keys, modelsig, provenance

DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
PREDICATE_ANNOTATION = "in-toto.io/predicate-type"
MAX_ATTESTATION = 32 << 20
KINDS = {DSSE_MEDIA_TYPE, modelsig.BUNDLE_MEDIA_TYPE}


def attach(
    store: ImageStore,
    ref: Ref,
    subject: Descriptor,
    key: ec.EllipticCurvePrivateKey,
    index: FileIndex,
    facts: provenance.BuildFacts | None,
) -> list[str]:
    """Push the model-signing bundle and, when ``facts`` are given, SLSA provenance;
    the predicate types now attested by ``key``. One that ``key`` attested already (a
    rebuild of the same digest) is kept, not added again."""
    name = str(ref.name)
    attached = []
    done = _attested_by(store, subject.digest, key.public_key())
    if facts is not None and provenance.PREDICATE_TYPE not in done:
        statement = dsse.statement(
            provenance.subject(name, subject.digest),
            provenance.PREDICATE_TYPE,
            provenance.predicate(facts),
        )
        envelope = canonical_json(dsse.seal(statement, key, keys.key_id(key)))
        referrers.attach(
            store,
            subject,
            DSSE_MEDIA_TYPE,
            envelope,
            {PREDICATE_ANNOTATION: provenance.PREDICATE_TYPE},
        )
        attached.append(provenance.PREDICATE_TYPE)
    if modelsig.PREDICATE_TYPE not in done:
        bundle = modelsig.bundle(name, index, key)
        referrers.attach(
            store,
            subject,
            modelsig.BUNDLE_MEDIA_TYPE,
            bundle,
            {PREDICATE_ANNOTATION: modelsig.PREDICATE_TYPE},
        )
        attached.append(modelsig.PREDICATE_TYPE)
    return attached + sorted(done & {provenance.PREDICATE_TYPE, modelsig.PREDICATE_TYPE})


def _attested_by(store: ImageStore, digest: str, public: ec.EllipticCurvePublicKey) -> set[str]:
    """The predicate types of the valid attestations of ``digest`` by ``public``."""
    kinds: set[str] = set()
    try:
        listed = referrers.referrers(store, digest)
    except ModelcarError:
        return kinds
    for described in listed:
        if described.artifactType not in KINDS:
            continue
        try:
            document = _envelope(store, described, digest, digest)
            claims, _ = dsse.open_envelope(_unwrap(described, document), [public], digest)
        except SignatureError:
            continue
        kinds.add(str(claims.get("predicateType")))
    return kinds


def _unwrap(described: Descriptor, document: Any) -> Any:
    """The DSSE envelope of an attestation: a bundle holds it in ``dsseEnvelope``."""
    if described.artifactType == modelsig.BUNDLE_MEDIA_TYPE and isinstance(document, dict):
        return document.get("dsseEnvelope")
    return document


@dataclass
class Attested:
    """What verified: the provenance's source and key, the model signature's key."""

    provenance_source: str | None = None
    provenance_key: str | None = None
    builder: str | None = None
    model_signature_key: str | None = None
    passed_over: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _envelope(store: ImageStore, described: Descriptor, digest: str, what: str) -> Any:
    """The artifact's one layer as JSON, after checking the artifact names ``digest``."""
    try:
        manifest = parse_manifest(store.get_manifest(described.digest).data)
    except NotFound:
        raise SignatureError(
            f"a referrer that is not in the registry ({described.digest})", subject=what
        ) from None
    except ModelcarError as e:
        raise SignatureError(f"an unreadable referrer ({e.message})", subject=what) from None
    if manifest.subject is None or manifest.subject.digest != digest:
        named = manifest.subject.digest if manifest.subject else "none"
        raise SignatureError(f"a referrer whose subject is another image ({named})", subject=what)
    if len(manifest.layers) != 1 or manifest.layers[0].size > MAX_ATTESTATION:
        raise SignatureError(
            "a referrer that is not one attestation of at most 32 MiB", subject=what
        )
    layer = manifest.layers[0]
    try:
        data = store.read_blob(layer.digest, MAX_ATTESTATION)
    except NotFound:
        raise SignatureError(
            f"a referrer names a missing blob ({layer.digest})", subject=what
        ) from None
    return decode.json(data, "an attestation", SignatureError, subject=what)


def verify(
    store: ImageStore,
    ref: Ref,
    digest: str,
    public_keys: list[ec.EllipticCurvePublicKey],
    index: FileIndex | None,
    source_prefix: str | None = None,
) -> Attested:
    """Check the image's attestations by ``public_keys``; with ``source_prefix``, one
    verified provenance must name a source under it."""
    what = f"{ref.name}@{digest}"
    found = Attested()
    try:
        attached = referrers.referrers(store, digest)
    except ModelcarError as e:
        raise SignatureError(
            f"the attestations cannot be listed ({e.message})", subject=what
        ) from None
    sources: list[str] = []
    for described in attached:
        if described.artifactType not in KINDS:
            continue
        document = _envelope(store, described, digest, what)
        try:
            claims, signer = dsse.open_envelope(_unwrap(described, document), public_keys, what)
        except UnknownSigner:
            found.passed_over.append(described.digest)
            continue
        try:  # a signed statement of the wrong shape is malformed, not a crash
            _take(found, sources, claims, signer, digest, index, what)
        except (AttributeError, TypeError, KeyError, IndexError):
            raise SignatureError("a malformed attestation statement", subject=what) from None
    if source_prefix is not None:
        if found.provenance_source is None:
            raise SignatureError(
                "no provenance signed by the given key",
                subject=what,
                hint="build with --sign-key to attach SLSA provenance",
            )
        # any one trusted provenance under the prefix will do, in whatever order
        matching = [s for s in sources if provenance.under(s, source_prefix)]
        if not matching:
            raise SignatureError(
                f"the provenance names another source ({found.provenance_source}, "
                f"not under {source_prefix})",
                subject=what,
            )
        found.provenance_source = matching[0]
    return found


def _take(
    found: Attested,
    sources: list[str],
    claims: dict[str, Any],
    signer: str,
    digest: str,
    index: FileIndex | None,
    what: str,
) -> None:
    """What one verified statement says, into ``found`` (provenance sources in ``sources``)."""
    kind = claims.get("predicateType")
    if kind == provenance.PREDICATE_TYPE:
        named = [
            s.get("digest", {}).get("sha256")
            for s in claims.get("subject") or []
            if isinstance(s, dict)
        ]
        if hex_of(digest) not in named:
            other = f"sha256:{named[0]}" if named else "none"
            raise SignatureError(
                f"an attestation whose subject is another image ({other})", subject=what
            )
        sources.append(provenance.source_of(claims))
        found.provenance_source = sources[-1]
        found.provenance_key = signer
        found.builder = str(
            claims["predicate"].get("runDetails", {}).get("builder", {}).get("id", "")
        )
    elif kind == modelsig.PREDICATE_TYPE and index is not None:  # a foreign image's
        if not modelsig.matches(claims, index):  # files are known once unpacked
            raise SignatureError(
                "a model signature over other files than the image's", subject=what
            )
        found.model_signature_key = signer


def listed(store: ImageStore, digest: str) -> list[str]:
    """The predicate types of the attestations attached to ``digest`` (none checked)."""
    return sorted(
        {
            (d.annotations or {}).get(PREDICATE_ANNOTATION, d.artifactType or "?")
            for d in referrers.referrers(store, digest)
        }
    )


def subject_of(store: ImageStore, digest: str) -> Descriptor:
    fetched = store.get_manifest(digest)
    return Descriptor(mediaType=fetched.media_type, digest=fetched.digest, size=len(fetched.data))
