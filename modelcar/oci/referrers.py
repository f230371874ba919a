"""OCI 1.1 referrers: artifacts (signatures, attestations) that name an image as subject.

An artifact is a manifest with ``artifactType``, an empty config and ``subject``.
Where the registry answers ``GET /v2/<name>/referrers/<digest>`` that list is used;
elsewhere (Distribution 2.8, an ``oci:`` layout) the distribution-spec's tag schema
stands in: an image index at tag ``sha256-<hex>`` listing the referrers, which the
writer keeps up to date (read, append, write: two writers at once can lose one entry,
as with every tag-schema client).
"""

from __future__ import annotations

from modelcar.errors import ModelcarError, NotFound
from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import hex_of, sha256_bytes
from modelcar.oci.manifest import Descriptor, Index, Manifest, parse_index
from modelcar.oci.store import ImageStore

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
MAX_REFERRERS = 256


def fallback_tag(digest: str) -> str:
    return f"sha256-{hex_of(digest)}"


def _put(store: ImageStore, data: bytes) -> str:
    digest = sha256_bytes(data)
    if not store.has_blob(digest):
        store.put_blob(digest, len(data), lambda: [data])
    return digest


def attach(
    store: ImageStore,
    subject: Descriptor,
    artifact_type: str,
    data: bytes,
    annotations: dict[str, str] | None = None,
) -> Descriptor:
    """Push ``data`` as an artifact referring to ``subject``; its manifest's descriptor."""
    layer = Descriptor(mediaType=artifact_type, digest=_put(store, data), size=len(data))
    config = Descriptor(mediaType=EMPTY_MEDIA_TYPE, digest=_put(store, EMPTY), size=len(EMPTY))
    manifest = Manifest(
        artifactType=artifact_type,
        config=config,
        layers=[layer],
        subject=Descriptor(mediaType=subject.mediaType, digest=subject.digest, size=subject.size),
        annotations=annotations or None,
    ).canonical()
    digest = store.put_manifest(manifest, mt.OCI_MANIFEST, sha256_bytes(manifest))
    described = Descriptor(
        mediaType=mt.OCI_MANIFEST,
        digest=digest,
        size=len(manifest),
        artifactType=artifact_type,
        annotations=annotations or None,
    )
    link(store, subject.digest, described)
    return described


def link(store: ImageStore, subject: str, described: Descriptor) -> None:
    """List a pushed manifest (whose ``subject`` is ``subject``) among its referrers:
    nothing to do where the registry has the referrers API, else the fallback index."""
    if store.referrers(subject) is not None:
        return
    listed = _fallback(store, subject)
    if all(d.digest != described.digest for d in listed):
        index = Index(manifests=[*listed, described]).canonical()
        store.put_manifest(index, mt.OCI_INDEX, fallback_tag(subject))


def _fallback(store: ImageStore, digest: str) -> list[Descriptor]:
    try:
        fetched = store.get_manifest(fallback_tag(digest))
    except NotFound:
        return []
    return list(parse_index(fetched.data).manifests)


def referrers(store: ImageStore, digest: str, artifact_type: str | None = None) -> list[Descriptor]:
    """The artifacts that name ``digest`` as subject (of ``artifact_type``, if given)."""
    raw = store.referrers(digest)
    listed = parse_index(raw).manifests if raw is not None else _fallback(store, digest)
    if len(listed) > MAX_REFERRERS:
        raise ModelcarError(f"over {MAX_REFERRERS} referrers", subject=digest)
    return [d for d in listed if artifact_type is None or d.artifactType == artifact_type]
