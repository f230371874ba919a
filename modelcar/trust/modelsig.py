"""An OpenSSF Model Signing bundle (the ``model-signing`` package's format, v1.0
predicate, key-signed) made from a modelcar's file index: no second read of the weights.

``model_signing verify key --signature B --public_key K DIR`` accepts it for the
directory a node publishes, since every file's sha256 is in the index. As that tool
does, the git files (``.git/``, ``.gitattributes``, ``.github/``, ``.gitignore``) are
left out and named under ``ignore_paths``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from modelcar.format.fileindex import FileIndex
from modelcar.oci.digest import hex_of
from modelcar.oci.manifest import canonical_json
from modelcar.trust import dsse, keys

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")


def _ignored(path: str) -> bool:
    top = path.split("/", 1)[0]
    return top in GIT_PATHS


def resources(index: FileIndex) -> list[dict[str, str]]:
    return [
        {"algorithm": "sha256", "digest": hex_of(f.sha256), "name": f.path}
        for f in sorted(index.files, key=lambda f: f.path)
        if not _ignored(f.path)
    ]


def root_digest(listed: list[dict[str, str]]) -> str:
    """model_signing's subject digest: sha256 over the files' raw digests, by name."""
    h = hashlib.sha256()
    for r in listed:
        h.update(bytes.fromhex(r["digest"]))
    return h.hexdigest()


def statement(name: str, index: FileIndex) -> bytes:
    listed = resources(index)
    serialization = {
        "method": "files",
        "hash_type": "sha256",
        "allow_symlinks": False,
        "ignore_paths": list(GIT_PATHS),
    }
    return dsse.statement(
        [{"name": name, "digest": {"sha256": root_digest(listed)}}],
        PREDICATE_TYPE,
        {"serialization": serialization, "resources": listed},
    )


def bundle(name: str, index: FileIndex, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The signed bundle (JSON) for the model files ``index`` lists."""
    hint = hashlib.sha256(keys.public_pem(key)).hexdigest()
    return canonical_json(
        {
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {"publicKey": {"hint": hint}, "tlogEntries": []},
            "dsseEnvelope": dsse.seal(statement(name, index), key),
        }
    )


def matches(claims: dict[str, Any], index: FileIndex) -> bool:
    """Whether a verified bundle statement lists exactly the files of ``index``."""
    predicate = claims.get("predicate") or {}
    listed = resources(index)
    try:
        named = claims["subject"][0]["digest"]["sha256"]
    except (KeyError, IndexError, TypeError):
        return False
    return predicate.get("resources") == listed and named == root_digest(listed)
