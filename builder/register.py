"""Record a built image in the modelcar API as a model version, optionally moving an alias."""

from __future__ import annotations

import sys

from modelcar.contract.build import BuildRecord
from modelcar.contract.client import ApiClient
from modelcar.contract.modelref import valid_alias, valid_model_name
from modelcar.contract.wire import SignatureCreate, VersionCreate, VersionOut
from modelcar.errors import Conflict, UsageError
from modelcar.oci.reference import Ref
from modelcar.trust.cosign import Signature


def record_signature(client: ApiClient, digest: str, signature: Signature) -> list[str]:
    """Give the API a signature; the trusted keys that signed the digest. A signature
    the API will not keep (no trusted key made it) is said on stderr, not an error: the
    image is signed in the registry all the same."""
    try:
        signed = client.add_signature(
            SignatureCreate(
                digest=digest,
                payload=signature.payload.decode(),
                signature=signature.signature,
            )
        )
    except Conflict as e:
        print(f"warning: the API did not record the signature: {e.one_line()}", file=sys.stderr)
        return []
    return signed.signed_by


def default_model_name(target: Ref) -> str:
    """The last path part of the target repository (or layout dir), if it is a valid name."""
    name = str(target.name).rstrip("/").rsplit("/", 1)[-1].removeprefix("oci:").lower()
    if not valid_model_name(name):
        raise UsageError(
            "cannot derive a model name from the target",
            subject=str(target),
            hint="pass --model NAME (lowercase letters, digits, '-')",
        )
    return name


def check_names(model: str, alias: str | None) -> None:
    """Fail before building, not after, on a name the API would refuse."""
    if not valid_model_name(model):
        raise UsageError(
            "invalid --model", subject=model, hint="a DNS label: lowercase letters, digits, '-'"
        )
    if alias is not None and not valid_alias(alias):
        raise UsageError(
            "invalid --alias", subject=alias, hint="a letter, then lowercase letters, digits, '-'"
        )


def register(
    client: ApiClient,
    record: BuildRecord,
    model: str,
    alias: str | None,
    reason: str,
    signature: Signature | None = None,
) -> tuple[VersionOut, bool]:
    repository = record.reference.rsplit("@", 1)[0]
    body = VersionCreate(
        digest=record.digest,
        repository=repository,
        source_uri=record.source,
        size=record.size,
        file_count=record.files,
        index_digest=record.index_digest,
        modelpack_digest=record.modelpack_digest,
        build=record.model_dump(mode="json"),
    )
    version, created = client.register_version(model, body)
    if signature is not None:  # before the alias moves: it moves to a signed version
        signed_by = record_signature(client, record.digest, signature)
        version = version.model_copy(update={"signed_by": signed_by})
    if alias:
        client.move_alias(model, alias, version.version, reason or f"build {record.digest[:19]}")
    return version, created
