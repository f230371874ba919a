"""CNCF ModelPack (modelpack/model-spec v1): its media types, annotations, and the
manifest and config modelcar writes for ``build --format modelpack|both``.

A file becomes one raw layer (the layer *is* the file, so its digest is the file's
sha256), named by ``org.cncf.model.filepath`` and ``org.opencontainers.image.title``,
with fixed file metadata. The layer's kind (weight, weight.config, doc, code) comes
from the file's name; where that is a guess, the layer says so
(``org.cncf.model.file.mediatype.untested: "true"``).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from modelcar.oci import mediatypes as mt
from modelcar.oci.manifest import Descriptor, Manifest, canonical_json

ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_TYPE = "application/vnd.cncf.model.config.v1+json"
PREFIX = "application/vnd.cncf.model."
KINDS = ("weight", "weight.config", "doc", "code", "dataset")
FILEPATH = "org.cncf.model.filepath"
FILEPATH_OLD = "org.cnai.model.filepath"
FILE_METADATA = "org.cncf.model.file.metadata+json"
UNTESTED = "org.cncf.model.file.mediatype.untested"

_WEIGHTS = (
    ".safetensors",
    ".bin",
    ".gguf",
    ".pt",
    ".pth",
    ".onnx",
    ".h5",
    ".ckpt",
    ".msgpack",
    ".pb",
    ".tflite",
    ".mlmodel",
    ".npz",
    ".keras",
)
_CODE = (".py", ".sh", ".ipynb", ".js", ".ts", ".go", ".rs", ".c", ".cc", ".cpp", ".h", ".cu")
_CONFIG_NAMES = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "preprocessor_config.json",
    "added_tokens.json",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "chat_template.jinja",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
}
_DOC_NAMES = ("readme", "license", "licence", "notice", "model_card", "modelcard", "citation")


def kind_of(path: str) -> tuple[str, bool]:
    """The layer kind for a file, and whether that is a guess (untested)."""
    name = path.rsplit("/", 1)[-1]
    lower = name.lower()
    if name in _CONFIG_NAMES:
        return "weight.config", False
    if lower.endswith(_WEIGHTS):
        return "weight", False
    if lower.startswith(_DOC_NAMES) or lower.endswith((".md", ".rst")):
        return "doc", False
    if lower.endswith(_CODE):
        return "code", False
    if lower.endswith((".json", ".txt", ".yaml", ".yml", ".model", ".jinja")):
        return "weight.config", True
    return "weight", True  # an unknown binary: most likely model data


def raw_media_type(kind: str) -> str:
    return f"{PREFIX}{kind}.v1.raw"


def layer(path: str, digest: str, size: int) -> Descriptor:
    kind, guessed = kind_of(path)
    metadata = json.dumps(
        {
            "name": path,
            "mode": 0o644,
            "uid": 0,
            "gid": 0,
            "size": size,
            "mtime": "1970-01-01T00:00:00Z",
            "typeflag": ord("0"),
        },
        separators=(",", ":"),
    )
    annotations = {FILEPATH: path, mt.TITLE: path, FILE_METADATA: metadata}
    if guessed:
        annotations[UNTESTED] = "true"
    return Descriptor(
        mediaType=raw_media_type(kind), digest=digest, size=size, annotations=annotations
    )


def _format(paths: list[str]) -> str | None:
    for ext in ("safetensors", "gguf", "onnx", "bin", "pt", "pth", "h5"):
        if any(p.lower().endswith("." + ext) for p in paths):
            return {"bin": "pytorch", "pt": "pytorch", "pth": "pytorch"}.get(ext, ext)
    return None


def config(
    name: str, layers: list[Descriptor], created: int | None, revision: str | None, source: str
) -> bytes:
    """The model config: no wall-clock time (``created`` is the source's commit time or
    SOURCE_DATE_EPOCH, or absent), the source's revision, the layers as diffIds."""
    descriptor: dict[str, Any] = {"name": name, "sourceURL": source}
    if created is not None:
        descriptor["createdAt"] = datetime.fromtimestamp(created, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    if revision:
        descriptor["revision"] = revision
    model_config: dict[str, Any] = {}
    if fmt := _format([d.annotations[FILEPATH] for d in layers if d.annotations]):
        model_config["format"] = fmt
    return canonical_json(
        {
            "descriptor": descriptor,
            "modelfs": {"type": "layers", "diffIds": [d.digest for d in layers]},
            "config": model_config,
        }
    )


def manifest(
    config_bytes: bytes,
    config_digest: str,
    layers: list[Descriptor],
    subject: Descriptor | None,
    annotations: dict[str, str],
) -> bytes:
    return Manifest(
        artifactType=ARTIFACT_TYPE,
        config=Descriptor(mediaType=CONFIG_TYPE, digest=config_digest, size=len(config_bytes)),
        layers=layers,
        subject=subject,
        annotations=annotations or None,
    ).canonical()
