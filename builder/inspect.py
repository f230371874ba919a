"""``modelcar inspect`` and ``modelcar verify``."""

from __future__ import annotations

from pydantic import BaseModel

from modelcar.errors import DigestMismatch
from modelcar.format import keys as mt
from modelcar.format.fileindex import FileEntry, file_index_from_config
from modelcar.format.image import load_model_image
from modelcar.format.layer import read_model_layer
from modelcar.oci import mediatypes as oci_mt
from modelcar.oci.digest import HashingReader
from modelcar.oci.manifest import load_json, parse_index, parse_manifest
from modelcar.oci.reference import Ref
from modelcar.oci.store import ImageStore, StoreOptions
from modelcar.oci.stores import open_store


class LayerInfo(BaseModel):
    digest: str
    size: int
    media_type: str
    role: str
    title: str | None = None


class ImageInfo(BaseModel):
    reference: str
    digest: str
    media_type: str
    created: str | None = None
    source: str | None = None
    base: str | None = None
    size: int | None = None
    #: The manifest's annotations: source URI, HF commit, MLflow run id, base, …
    annotations: dict[str, str] = {}
    platforms: list[str] = []
    layers: list[LayerInfo] = []
    files: list[FileEntry] = []


def _load(ref: Ref, options: StoreOptions):
    store = open_store(ref, options)
    fetched = store.get_manifest(ref.reference)
    return store, fetched


def describe(ref: Ref, options: StoreOptions) -> ImageInfo:
    store, fetched = _load(ref, options)
    pinned = str(ref.pinned(fetched.digest))
    if fetched.media_type in oci_mt.INDEX_TYPES:
        image_index = parse_index(fetched.data)
        plats = [
            f"{d.platform.os}/{d.platform.architecture}"
            for d in image_index.manifests
            if d.platform
        ]
        return ImageInfo(
            reference=pinned, digest=fetched.digest, media_type=fetched.media_type, platforms=plats
        )
    manifest = parse_manifest(fetched.data)
    config = load_json(store.read_blob(manifest.config.digest), "image config")
    index = file_index_from_config(config)
    ann = manifest.annotations or {}
    layers = [
        LayerInfo(
            digest=d.digest,
            size=d.size,
            media_type=d.mediaType,
            role=(d.annotations or {}).get(mt.LAYER_ROLE, "?"),
            title=(d.annotations or {}).get(oci_mt.TITLE),
        )
        for d in manifest.layers
    ]
    return ImageInfo(
        reference=pinned,
        digest=fetched.digest,
        media_type=fetched.media_type,
        created=ann.get(oci_mt.CREATED) or config.get("created"),
        source=ann.get(mt.SOURCE),
        base=ann.get(mt.BASE_NAME),
        size=index.total_size if index else None,
        annotations=ann,
        layers=layers,
        files=index.files if index else [],
    )


def render(info: ImageInfo) -> str:
    from modelcar.builder.progress import human

    lines = [f"reference  {info.reference}", f"type       {info.media_type}"]
    if info.platforms:
        lines.append("platforms  " + ", ".join(info.platforms))
        return "\n".join(lines)
    ann = info.annotations
    for label, value in (
        ("created", info.created),
        ("source", info.source or "unknown (not built by modelcar build)"),
        ("run", ann.get(mt.SOURCE_RUN_ID)),
        ("base", info.base),
    ):
        if value:
            lines.append(f"{label:<10} {value}")
    if info.size is not None:
        lines.append(f"size       {human(info.size)} in {len(info.files)} files")
    lines.append(f"layers     {len(info.layers)}")
    for layer in info.layers:
        lines.append(
            f"  {layer.digest[:19]}  {human(layer.size):>10}  {layer.role:<5}  {layer.title or ''}"
        )
    if info.files:
        lines.append("files")
        for f in info.files:
            lines.append(f"  {human(f.size):>10}  {f.sha256[:19]}  {f.path}")
    return "\n".join(lines)


def _verify_plain_blob(store: ImageStore, digest: str) -> None:
    with store.open_blob(digest) as f:
        r = HashingReader(f)
        r.drain()
    if r.digest != digest:
        raise DigestMismatch(f"layer digest mismatch (got {r.digest})", subject=digest)


def verify_image(ref: Ref, options: StoreOptions) -> tuple[int, int]:
    store = open_store(ref, options)
    image = load_model_image(store, ref)
    manifest, index = image.manifest, image.index
    expected = {f.path: f for f in index.files}
    seen: set[str] = set()
    model_layers = {d.digest for d in image.model_layers}
    for desc in manifest.layers:
        if desc.digest in model_layers:
            with store.open_blob(desc.digest) as f:
                seen |= read_model_layer(f, desc.digest, expected)
        else:
            _verify_plain_blob(store, desc.digest)
    missing = sorted(set(expected) - seen)
    if missing:
        raise DigestMismatch(
            "files in the index are missing from the layers", subject=", ".join(missing[:5])
        )
    return len(manifest.layers), len(seen)
