"""``modelcar inspect`` and ``modelcar verify``."""

from __future__ import annotations

from pydantic import BaseModel

from modelcar import decode
from modelcar.errors import DigestMismatch, ImageFormatError, NotAModelcar
from modelcar.format import keys as mk
from modelcar.format.fileindex import FileEntry, file_index_from_config
from modelcar.format.foreign import FORMAT_NAMES, PATH_ANNOTATIONS, format_of, load_foreign
from modelcar.format.image import ModelImage, load_model_image
from modelcar.format.layer import read_model_layer
from modelcar.format.unpack import index_of, unpack_layer
from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import HashingReader
from modelcar.oci.manifest import parse_index, parse_manifest
from modelcar.oci.platform import platform_str
from modelcar.oci.reference import Ref
from modelcar.oci.store import FetchedManifest, ImageStore, StoreOptions
from modelcar.oci.stores import open_store
from modelcar.trust import attest, cosign, modelsig, provenance


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
    format: str | None = None
    created: str | None = None
    source: str | None = None
    base: str | None = None
    size: int | None = None
    #: The manifest's annotations: source URI, HF commit, MLflow run id, base, …
    annotations: dict[str, str] = {}
    platforms: list[str] = []
    layers: list[LayerInfo] = []
    files: list[FileEntry] = []
    #: The source's commit (a Hugging Face or git revision in the source URI) and run.
    commit: str | None = None
    run: str | None = None
    #: Cosign signatures and attestations attached to the digest (present, not checked:
    #: `modelcar verify --key PUB` checks them).
    signatures: int = 0
    attestations: list[str] = []


def _load(ref: Ref, options: StoreOptions) -> tuple[ImageStore, FetchedManifest]:
    store = open_store(ref, options)
    fetched = store.get_manifest(ref.reference)
    return store, fetched


def describe(ref: Ref, options: StoreOptions) -> ImageInfo:
    store, fetched = _load(ref, options)
    pinned = str(ref.pinned(fetched.digest))
    platforms: list[str] = []
    if fetched.media_type in mt.INDEX_TYPES:
        try:  # a multi-platform modelcar: its model, as this machine's platform has it
            image = load_model_image(store, ref)
        except ImageFormatError as e:
            if "file index" not in e.message:
                raise  # a modelcar whose platforms differ, …
            image_index = parse_index(fetched.data)  # another image: its platforms only
            plats = [platform_str(d.platform) for d in image_index.manifests if d.platform]
            return ImageInfo(
                reference=pinned,
                digest=fetched.digest,
                media_type=fetched.media_type,
                platforms=plats,
            )
        platforms = image.platforms
        manifest = image.manifest
    else:
        manifest = parse_manifest(fetched.data)
    config = decode.json_object(store.read_blob(manifest.config.digest), "image config")
    index = file_index_from_config(config)
    kind = "modelcar" if index else format_of(manifest)
    ann = manifest.annotations or {}
    layers = [
        LayerInfo(
            digest=d.digest,
            size=d.size,
            media_type=d.mediaType,
            role=(d.annotations or {}).get(mk.LAYER_ROLE, "?"),
            title=next((v for k in PATH_ANNOTATIONS if (v := (d.annotations or {}).get(k))), None),
        )
        for d in manifest.layers
    ]
    source = ann.get(mk.SOURCE)
    hf = mk.hf_commit(source or "")
    return ImageInfo(
        commit=hf[1] if hf else None,
        run=ann.get(mk.SOURCE_RUN_ID),
        signatures=cosign.count(store, fetched.digest),
        attestations=attest.listed(store, fetched.digest),
        reference=pinned,
        digest=fetched.digest,
        media_type=fetched.media_type,
        format=FORMAT_NAMES.get(kind or "", "not a model image"),
        created=ann.get(mt.CREATED) or config.get("created"),
        source=ann.get(mk.SOURCE),
        base=ann.get(mk.BASE_NAME),
        size=index.total_size if index else None,
        annotations=ann,
        platforms=platforms,
        layers=layers,
        files=index.files if index else [],
    )


_PREDICATES = {
    provenance.PREDICATE_TYPE: "SLSA provenance",
    modelsig.PREDICATE_TYPE: "model-signing bundle",
}


def render(info: ImageInfo) -> str:
    from modelcar.builder.progress import human

    lines = [f"reference  {info.reference}", f"type       {info.media_type}"]
    if info.format:
        lines.append(f"format     {info.format}")
    if info.platforms:
        lines.append("platforms  " + ", ".join(info.platforms))
    if info.platforms and not info.layers:
        return "\n".join(lines)
    ann = info.annotations
    for label, value in (
        ("created", info.created),
        ("source", info.source or "unknown (not built by modelcar build)"),
        ("commit", info.commit),
        ("run", info.run or ann.get(mk.SOURCE_RUN_ID)),
        ("base", info.base),
        (
            "signed",
            f"{info.signatures} cosign signature{'s' if info.signatures != 1 else ''} "
            "(not checked here: modelcar verify --key PUB)"
            if info.signatures
            else "no (no cosign signature)",
        ),
        ("attested", ", ".join(_PREDICATES.get(p, p) for p in info.attestations)),
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


def _verify_foreign(store: ImageStore, ref: Ref) -> tuple[int, int, list[str]]:
    """Another tool's model image: every layer read and checked as the node would
    unpack it (nothing written); the files it would publish counted."""
    image = load_foreign(store, ref)
    done = []
    for part in image.parts:
        with store.open_blob(part.layer.digest) as f:
            done.append((part.layer.digest, unpack_layer(f, part, None)))
    return len(image.parts), len(index_of(done).files), []


def verify_image(
    store: ImageStore, ref: Ref, image: ModelImage | None = None
) -> tuple[int, int, list[str]]:
    """Every blob read again: the layers' digests, the files' sha256 (each layer once,
    for every platform of an index); the layers and files verified, the platforms.
    ``image``: the modelcar ``ref`` names, when the caller has loaded it already."""
    if image is None:
        try:
            image = load_model_image(store, ref)
        except NotAModelcar:
            return _verify_foreign(store, ref)
    index = image.index
    # the base layers differ per platform; the model layers do not
    manifests = [v.manifest for v in image.variants.values()] or [image.manifest]
    expected = {f.path: f for f in index.files}
    seen: set[str] = set()
    model_layers = {d.digest for d in image.model_layers}
    done: set[str] = set()
    for desc in (d for m in manifests for d in m.layers):
        if desc.digest in done:
            continue
        done.add(desc.digest)
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
    return len(done), len(seen), image.platforms
