"""Model images made by other tools, recognised from their manifest and config:

- ``image``: a hand-built modelcar (KServe's Dockerfile recipe): any OCI or Docker
  image whose layers put the model under ``/models``; layers apply in order, as a
  container runtime would (whiteouts honoured), and only ``models/`` is taken;
- ``modelpack``: a CNCF ModelPack artifact (modelpack/model-spec v1): raw layers (the
  layer is the file, named by an annotation) or tar layers, plain, gzip or zstd;
- ``modelkit``: a KitOps ModelKit: tar layers of the Kitfile's parts.

No file index travels with them: the node computes it while unpacking (see
``unpack.py``). What cannot be read is refused naming the format and the media type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from modelcar.errors import DigestMismatch, ImageFormatError
from modelcar.format import modelpack
from modelcar.format.paths import path_problem, shown
from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import sha256_bytes
from modelcar.oci.manifest import Descriptor, Manifest, parse_index, parse_manifest
from modelcar.oci.platform import host_platform, platform_images, same_platform
from modelcar.oci.reference import Ref
from modelcar.oci.store import ImageStore

Format = Literal["image", "modelpack", "modelkit"]
FORMAT_NAMES = {
    "modelcar": "modelcar (modelcar build)",
    "image": "hand-built modelcar (a container image with /models)",
    "modelpack": "CNCF ModelPack",
    "modelkit": "KitOps ModelKit",
}
Compression = Literal["none", "gzip", "zstd"]

MODELPACK_ARTIFACT = modelpack.ARTIFACT_TYPE
MODELPACK_CONFIG = modelpack.CONFIG_TYPE
MODELPACK_PREFIX = modelpack.PREFIX
MODELPACK_KINDS = modelpack.KINDS
MODELKIT_CONFIG = "application/vnd.kitops.modelkit.config.v1+json"
MODELKIT_PREFIX = "application/vnd.kitops.modelkit."
MODELKIT_KINDS = ("model", "modelpart", "code", "dataset", "docs")
#: Where a raw layer's file path is, newest key first.
PATH_ANNOTATIONS = (modelpack.FILEPATH, modelpack.FILEPATH_OLD, mt.TITLE)

_IMAGE_LAYERS: dict[str, Compression] = {
    mt.OCI_LAYER_TAR: "none",
    mt.DOCKER_LAYER_TAR: "none",
    mt.OCI_LAYER_GZIP: "gzip",
    mt.DOCKER_LAYER_GZIP: "gzip",
    mt.OCI_LAYER_ZSTD: "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
}
_SUFFIXES: dict[str, Compression] = {".tar": "none", ".tar+gzip": "gzip", ".tar+zstd": "zstd"}


@dataclass(frozen=True)
class Part:
    """One layer and how to read it."""

    layer: Descriptor
    compression: Compression
    raw_path: str | None = None  # a raw layer: the file it is
    #: What a tar member's name must start with to be taken (``models/`` for images;
    #: everything for artifacts), and whether to skip (not refuse) the others.
    prefix: str = ""

    @property
    def raw(self) -> bool:
        return self.raw_path is not None


@dataclass(frozen=True)
class ForeignImage:
    digest: str
    format: Format
    manifest: Manifest
    parts: list[Part]
    #: The manifests read, by digest (bytes, media type): what a node keeps to serve.
    documents: dict[str, tuple[bytes, str]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Bytes to fetch (the files may take more once decompressed)."""
        return sum(p.layer.size for p in self.parts)

    @property
    def in_order(self) -> bool:
        """Layers that must apply one after the other (a later one may overwrite or
        delete what an earlier one wrote)."""
        return self.format == "image"


def _unsupported(fmt: str, media_type: str, subject: str) -> ImageFormatError:
    return ImageFormatError(
        f"unsupported layer media type {media_type} in a {fmt} image",
        subject=subject,
        hint="modelcar reads modelcars, hand-built /models images, ModelPack and KitOps",
    )


def format_of(manifest: Manifest) -> Format | None:
    config = manifest.config.mediaType
    if manifest.artifactType == MODELPACK_ARTIFACT or config == MODELPACK_CONFIG:
        return "modelpack"
    if config == MODELKIT_CONFIG:
        return "modelkit"
    if config in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
        return "image"
    return None


def _suffix_kind(media_type: str, prefix: str, kinds: tuple[str, ...]) -> Compression | None:
    body = media_type.removeprefix(prefix)
    for kind in kinds:
        for suffix, compression in _SUFFIXES.items():
            if body == f"{kind}.v1{suffix}":
                return compression
    return None


def _raw_path(layer: Descriptor, subject: str) -> str:
    notes = layer.annotations or {}
    path = next((notes[k] for k in PATH_ANNOTATIONS if notes.get(k)), None)
    if path is None:
        raise ImageFormatError(
            "a ModelPack raw layer names no file path",
            subject=f"{subject}: {layer.digest}",
            hint=f"set {PATH_ANNOTATIONS[0]} on the layer",
        )
    path = path.removeprefix("./")
    if (problem := path_problem(path)) is not None:
        raise ImageFormatError(
            f"{problem} in a ModelPack layer's file path", subject=f"{subject}: {shown(path)}"
        )
    return path


def plan(fmt: Format, manifest: Manifest, subject: str) -> list[Part]:
    """How to read each layer of a ``fmt`` image; refuses what it cannot read."""
    parts = []
    raw_paths: set[str] = set()
    for layer in manifest.layers:
        media = layer.mediaType
        if fmt == "image":
            compression = _IMAGE_LAYERS.get(media)
            if compression is None:
                raise _unsupported("hand-built (container image)", media, subject)
            parts.append(Part(layer, compression, prefix="models/"))
        elif fmt == "modelpack":
            if (
                media.startswith(MODELPACK_PREFIX)
                and media.endswith(".v1.raw")
                and (
                    media.removeprefix(MODELPACK_PREFIX).removesuffix(".v1.raw") in MODELPACK_KINDS
                )
            ):
                path = _raw_path(layer, subject)
                if path in raw_paths:
                    raise ImageFormatError(
                        "two ModelPack layers name the same file",
                        subject=f"{subject}: {shown(path)}",
                    )
                raw_paths.add(path)
                parts.append(Part(layer, "none", raw_path=path))
                continue
            compression = _suffix_kind(media, MODELPACK_PREFIX, MODELPACK_KINDS)
            if compression is None:
                raise _unsupported("ModelPack", media, subject)
            parts.append(Part(layer, compression))
        else:
            compression = _suffix_kind(media, MODELKIT_PREFIX, MODELKIT_KINDS)
            if compression is None:
                raise _unsupported("KitOps ModelKit", media, subject)
            parts.append(Part(layer, compression))
    if not parts:
        raise ImageFormatError(f"a {fmt} image with no layers", subject=subject)
    for path in raw_paths:  # `d` and `d/e`: one would have to be dropped
        parts_of = path.split("/")
        parent = next(
            (p for i in range(1, len(parts_of)) if (p := "/".join(parts_of[:i])) in raw_paths), None
        )
        if parent is not None:
            raise ImageFormatError(
                "a ModelPack layer's file is where another's directory is",
                subject=f"{subject}: {shown(parent)} and {shown(path)}",
            )
    return parts


def load_foreign(store: ImageStore, ref: Ref) -> ForeignImage:
    """The image ``ref`` names, read as one of the foreign formats (for an index, this
    machine's platform); ImageFormatError if it is none of them."""
    fetched = store.get_manifest(ref.reference)
    digest = sha256_bytes(fetched.data)
    if ref.digest and digest != ref.digest:
        raise DigestMismatch(
            f"manifest does not match the pinned digest (got {digest})", subject=str(ref)
        )
    data = fetched.data
    documents = {digest: (data, fetched.media_type)}
    if fetched.media_type in mt.INDEX_TYPES:
        children = platform_images(parse_index(data).manifests, str(ref))
        host = host_platform()
        chosen = next((d for d in children if same_platform(d.platform, host)), None)  # type: ignore[arg-type]  # is_runnable: not None
        if chosen is None:
            raise ImageFormatError(f"the image index has no {host} image", subject=str(ref))
        child = store.get_manifest(chosen.digest)
        data = child.data
        if sha256_bytes(data) != chosen.digest:
            raise DigestMismatch("a platform manifest does not match its digest", subject=str(ref))
        documents[chosen.digest] = (data, child.media_type)
    manifest = parse_manifest(data)
    fmt = format_of(manifest)
    if fmt is None:
        raise ImageFormatError(
            f"not a model image: config media type {manifest.config.mediaType}",
            subject=str(ref),
            hint="modelcar reads modelcars, hand-built /models images, ModelPack and KitOps",
        )
    return ForeignImage(digest, fmt, manifest, plan(fmt, manifest, str(ref)), documents)
