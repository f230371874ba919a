"""A node's check before it publishes a model: the verification rules of the policies
that assign it (each: trusted keys as PEM, whether to refuse, a required source).

Only the signature manifest, the referrers and their small blobs are read; the pull
itself then checks every byte against the signed digest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from modelcar.errors import ModelcarError, SignatureError, UsageError
from modelcar.format.fileindex import FileIndex
from modelcar.oci.reference import Ref
from modelcar.oci.store import ImageStore
from modelcar.trust import attest, cosign, keys


@dataclass(frozen=True)
class Rule:
    policy: str
    keys: tuple[str, ...]  # PEM
    require: bool = True
    source_prefix: str | None = None


def _keys(rule: Rule) -> list[ec.EllipticCurvePublicKey]:
    try:
        public = [keys.parse_public_key(pem.encode(), rule.policy) for pem in rule.keys]
    except UsageError as e:
        raise SignatureError(f"a policy key is unusable ({e.message})") from None
    if not public:
        raise SignatureError("none of the policy's keys is trusted any more")
    return public


def check(
    rules: Sequence[Rule],
    store: ImageStore,
    ref: Ref,
    digest: str,
    index: Callable[[], FileIndex | None],
) -> list[str]:
    """Apply every rule. A required one that fails raises SignatureError ("signature
    required by policy P: why", or "provenance required …" when its signature held and
    its provenance did not); one that only reports gives a line in the result."""
    notes = []
    for rule in rules:
        what = "signature"
        try:
            public = _keys(rule)
            cosign.verify_image(store, ref, digest, public)
            if rule.source_prefix is not None:
                what = "provenance"
                attest.verify(store, ref, digest, public, index(), rule.source_prefix)
        except ModelcarError as e:  # any error of the check is the check's failure
            line = f"{what} required by policy {rule.policy}: {e.message}"
            if rule.require:
                raise SignatureError(line, subject=f"{ref.name}@{digest}") from None
            notes.append(line)
    return notes
