"""What the builder's commands do, as functions: the CLI (``cli.py``) only reads flags,
calls one of these and prints (crane over ``pkg/crane``).

- :func:`build` — a source into an image (modelcar, ModelPack, or both), then signed;
- :func:`create_base` — the busybox base, for one platform or an index of several;
- :func:`verify` — every byte again, and with keys the signature and attestations;
- :func:`sign` — an existing image, as cosign does, with a model-signing bundle.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from modelcar.builder.build import Builder, BuildOptions
from modelcar.builder.progress import Progress
from modelcar.builder.sources.base import Selection, Source
from modelcar.contract.build import BuildRecord, SigningRecord
from modelcar.errors import UsageError
from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import sha256_bytes
from modelcar.oci.manifest import Platform
from modelcar.oci.platform import host_platform, platform_str, same_platform
from modelcar.oci.reference import DEFAULT_TAG, Ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from modelcar.trust import attest, cosign, keys
from modelcar.trust.cosign import Signature

FORMATS = ("modelcar", "modelpack", "both")
#: ECR private caps a layer at 52,000 MiB: a build to ECR fails before upload over it.
ECR_LAYER_LIMIT = 52000 << 20


def layer_limit(target: Ref, given: int | None) -> int | None:
    """The largest layer a build may make: what was given, else the registry's known cap."""
    if given is None and ".dkr.ecr." in str(target):
        return ECR_LAYER_LIMIT
    return given


def check_format(image_format: str, *, signing: bool, platforms: bool, base: bool) -> None:
    if image_format not in FORMATS:
        raise UsageError(f"unknown --format {image_format}", hint="modelcar, modelpack or both")
    if image_format == "modelpack" and (signing or platforms or base):
        raise UsageError(
            "--sign-key, --platform and --base apply to modelcars",
            hint="use --format both to sign a modelcar that carries the ModelPack as a referrer",
        )


def build(
    image_format: str,
    source: Source,
    target: Ref,
    options: BuildOptions,
    progress: Progress,
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    selection: Selection | None = None,
) -> tuple[BuildRecord, Signature | None]:
    """Build ``source`` into ``target``; with ``key``, sign and attest it. The record
    (with its signing, if any) and the signature."""
    try:
        if image_format == "modelcar":
            record = Builder(source, target, options, progress).run()
        else:
            from modelcar.builder import modelpack

            record = modelpack.build(image_format, source, target, options, progress)
    finally:
        progress.close()
    mib = 1 << 20
    progress.log(
        f"built {record.digest} in {record.seconds:.1f}s: "
        f"{record.bytes_uploaded / mib:.1f} MiB sent, "
        f"{record.bytes_skipped / mib:.1f} MiB already there"
    )
    if image_format == "both":
        progress.log(f"ModelPack {record.modelpack_digest}, a referrer of the modelcar")
    if key is None:
        return record, None
    from modelcar.builder.signing import sign_build

    started = time.monotonic()
    signature, attested = sign_build(target, record, key, source, selection or Selection(), options)
    record.signed = SigningRecord(
        key_id=keys.key_id(key), attestations=attested, seconds=round(time.monotonic() - started, 3)
    )
    progress.log(
        f"signed {record.digest} with {record.signed.key_id} and attested "
        f"{', '.join(attested)} in {record.signed.seconds:.2f}s"
    )
    return record, signature


def create_base(
    target: Ref, options: StoreOptions, platforms: list[Platform], busybox: list[str]
) -> str:
    """Write the busybox base to ``target`` (an index over ``platforms`` when given);
    its pinned reference. ``busybox``: ``PATH`` for this machine, ``OS/ARCH=PATH``."""
    from modelcar.builder.base import busybox_base, busybox_index
    from modelcar.oci.platform import parse_platform

    host = platform_str(host_platform())
    given: dict[str, str] = {}
    for item in busybox:
        spec, sep, path = item.partition("=")
        given[platform_str(parse_platform(spec)) if sep else host] = path if sep else item
    unused = set(given) - {platform_str(p) for p in platforms} - {host}
    if unused:
        raise UsageError(
            "--busybox for a platform not asked for",
            subject=", ".join(sorted(unused)),
            hint="add --platform for it",
        )
    for p in platforms:
        if platform_str(p) not in given and not same_platform(p, host_platform()):
            raise UsageError(
                f"no busybox for {platform_str(p)}",
                hint=f"give one: --busybox {platform_str(p)}=PATH (Debian: apt-get download "
                f"busybox-static:{p.architecture}, then dpkg-deb -x)",
            )
    store = open_store(target, options, create=True)
    if not platforms:
        img = busybox_base(given.get(host))
        images, top, media_type = [img], img.manifest_bytes, mt.OCI_MANIFEST
    else:
        bases = busybox_index([(p, given.get(platform_str(p))) for p in platforms])
        images, top, media_type = bases.images, bases.index_bytes, mt.OCI_INDEX
    for img in images:
        for digest, data in img.blobs.items():
            if not store.has_blob(digest):
                store.put_blob(digest, len(data), functools.partial(list, [data]))
        assert img.manifest_bytes is not None and img.digest is not None
        store.put_manifest(img.manifest_bytes, mt.OCI_MANIFEST, img.digest)
    assert top is not None
    digest = store.put_manifest(top, media_type, sha256_bytes(top))
    store.put_manifest(top, media_type, target.tag or DEFAULT_TAG)
    return str(target.pinned(digest))


@dataclass
class Verified:
    """What ``verify`` checked."""

    reference: str
    layers: int
    files: int
    platforms: list[str]
    signature: cosign.Verified | None = None
    attestations: attest.Attested | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "layers": self.layers,
            "files": self.files,
            "platforms": self.platforms,
            "signature": self.signature.__dict__ if self.signature else None,
            "attestations": self.attestations.as_dict() if self.attestations else None,
        }

    def line(self) -> str:
        on = f" for {', '.join(self.platforms)}" if self.platforms else ""
        by = f"; signed by {self.signature.key_id}" if self.signature else ""
        if self.attestations and self.attestations.provenance_source:
            by += f"; provenance: {self.attestations.provenance_source}"
        return f"ok: {self.layers} layers and {self.files} files verified{on}{by}"


def verify(
    ref: Ref,
    options: StoreOptions,
    public_keys: list[ec.EllipticCurvePublicKey],
    require_source: str | None = None,
) -> Verified:
    """Every blob again, each layer digest and file sha256; with keys, first the cosign
    signature and the attestations they signed (the bytes checked are the signed ones)."""
    from modelcar.builder.inspect import verify_image
    from modelcar.format.image import load_model_image

    if require_source is not None and not public_keys:
        raise UsageError("--require-provenance-source needs --key PUB")
    store = open_store(ref, options)
    signed = attested = image = None
    if public_keys:
        digest = ref.digest or store.get_manifest(ref.reference).digest
        ref = ref.pinned(digest)
        signed = cosign.verify_image(store, ref, digest, public_keys)
        image = load_model_image(store, ref)
        attested = attest.verify(store, ref, digest, public_keys, image.index, require_source)
    layers, files, platforms = verify_image(store, ref, image)
    return Verified(str(ref), layers, files, platforms, signed, attested)


def sign(ref: Ref, options: StoreOptions, key: ec.EllipticCurvePrivateKey) -> tuple[str, Signature]:
    """Sign an existing image as cosign does and attach a model-signing bundle of its
    files; its digest and the signature."""
    from modelcar.format.image import load_model_image

    store = open_store(ref, options)
    digest = ref.digest or store.get_manifest(ref.reference).digest
    image = load_model_image(store, ref.pinned(digest))
    signature = cosign.sign_image(store, ref, digest, key)
    attest.attach(store, ref, attest.subject_of(store, digest), key, image.index, None)
    return digest, signature
