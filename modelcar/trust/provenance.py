"""SLSA Provenance v1 (``https://slsa.dev/provenance/v1``) for a modelcar build.

The source is named in its immutable form: a Hugging Face repo with its git commit, an
MLflow model version with the run that logged it, every S3 object with its ETag, or a
local tree by the digest of its file list. Everything here comes from the build record
and the image's own config: nothing re-reads the weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from modelcar.format.fileindex import FileIndex
from modelcar.format.keys import hf_commit
from modelcar.oci.digest import hex_of, sha256_bytes
from modelcar.oci.manifest import canonical_json

PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://modelcar.dev/slsa/build/v1"
BUILDER_ID = "https://modelcar.dev/builder/modelcar-build"
_MLFLOW = re.compile(r"^mlflow://(?P<name>.+)/(?P<version>[0-9]+)$")


@dataclass(frozen=True)
class BuildFacts:
    """What a build knows of itself; the build record and the image config supply it."""

    source: str
    index: FileIndex
    builder_version: str
    started: str
    finished: str
    run_id: str | None = None
    objects: dict[str, dict[str, str]] = field(default_factory=dict)  # S3: path -> etag, version
    base: str = ""
    base_digest: str | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    platforms: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


def tree_digest(index: FileIndex) -> str:
    """A tree's content digest: sha256 of the canonical list of (path, size, sha256)."""
    rows = sorted([f.path, f.size, f.sha256] for f in index.files)
    return sha256_bytes(canonical_json(rows))


def source_dependencies(facts: BuildFacts) -> list[dict[str, Any]]:
    """The source as in-toto ResourceDescriptors, each in its immutable form."""
    if pinned := hf_commit(facts.source):
        repo, commit = pinned
        return [{"uri": f"hf://{repo}", "digest": {"gitCommit": commit}}]
    if m := _MLFLOW.match(facts.source):
        described: dict[str, Any] = {"uri": facts.source, "name": m["name"]}
        if facts.run_id:
            described["annotations"] = {"runId": facts.run_id}
        return [described]
    if facts.source.startswith("s3://") and facts.objects:
        by_path = {f.path: f for f in facts.index.files}
        out = []
        for path, version in sorted(facts.objects.items()):
            entry: dict[str, Any] = {
                "uri": f"{facts.source}/{path}",
                "annotations": dict(sorted(version.items())),
            }
            if path in by_path:
                entry["digest"] = {"sha256": hex_of(by_path[path].sha256)}
            out.append(entry)
        return out
    return [{"uri": facts.source, "digest": {"sha256": hex_of(tree_digest(facts.index))}}]


def predicate(facts: BuildFacts) -> dict[str, Any]:
    dependencies = source_dependencies(facts)
    if facts.base_digest:
        dependencies.append({"uri": facts.base, "digest": {"sha256": hex_of(facts.base_digest)}})
    external: dict[str, Any] = {"source": facts.source}
    for key in ("include", "exclude", "platforms"):
        if value := getattr(facts, key):
            external[key] = value
    return {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": external,
            "internalParameters": facts.options,
            "resolvedDependencies": dependencies,
        },
        "runDetails": {
            "builder": {"id": BUILDER_ID, "version": {"modelcar": facts.builder_version}},
            "metadata": {"startedOn": facts.started, "finishedOn": facts.finished},
        },
    }


def subject(name: str, digest: str) -> list[dict[str, Any]]:
    return [{"name": name, "digest": {"sha256": hex_of(digest)}}]


def under(source: str, prefix: str) -> bool:
    """Whether ``source`` is ``prefix`` or lies under it, by whole path segments:
    ``hf://acme`` holds ``hf://acme/m@<commit>``, not ``hf://acme-evil/m``; a prefix that
    ends in ``/``, ``@`` or ``:`` (``file:``) ends a segment itself."""
    if (
        not prefix
        or source == prefix
        or (prefix.endswith(("/", "@", ":")) and source.startswith(prefix))
    ):
        return True
    return source.startswith(prefix) and source[len(prefix)] in "/@"


def source_of(statement: dict[str, Any]) -> str:
    """The source a provenance statement names (its ``externalParameters.source``)."""
    try:
        value = statement["predicate"]["buildDefinition"]["externalParameters"]["source"]
    except (KeyError, TypeError):
        return ""
    return value if isinstance(value, str) else ""
