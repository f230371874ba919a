"""Catalog references: ``name@alias``, ``name:version`` and ``name@sha256:…``.

These name a model *in the API's catalog*, not an image in a registry; the API
resolves them to a pinned image reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modelcar.errors import InvalidDigest, InvalidReference
from modelcar.oci.digest import parse_digest

#: A model name is a DNS label (RFC 1123): it becomes part of Kubernetes object names.
MODEL_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
#: An alias starts with a letter, so ``name@1`` or ``name@sha256:…`` can never be one.
ALIAS_RE = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")

_HINT = "use NAME@ALIAS, NAME:VERSION or NAME@sha256:HEX (NAME: lowercase letters, digits, '-')"


def valid_model_name(name: str) -> bool:
    return bool(MODEL_NAME_RE.match(name))


def valid_alias(alias: str) -> bool:
    return bool(ALIAS_RE.match(alias))


@dataclass(frozen=True)
class ModelRef:
    """Exactly one of ``alias``, ``version`` and ``digest`` is set."""

    name: str
    alias: str | None = None
    version: int | None = None
    digest: str | None = None

    def __str__(self) -> str:
        if self.alias:
            return f"{self.name}@{self.alias}"
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.digest}"


def parse_model_ref(text: str) -> ModelRef:
    name, at, rest = text.partition("@")
    if at:
        if rest.startswith("sha256:"):
            try:
                return _named(name, text, digest=parse_digest(rest))
            except InvalidDigest as e:
                raise InvalidReference("invalid digest in model reference", subject=text) from e
        if not valid_alias(rest):
            raise InvalidReference(
                "invalid alias in model reference (a letter, then letters, digits, '-')",
                subject=text,
                hint=_HINT,
            )
        return _named(name, text, alias=rest)
    name, colon, version = text.partition(":")
    if colon:
        if not version.isdigit() or int(version) < 1 or len(version) > 9:
            raise InvalidReference(
                "invalid version in model reference (a number from 1)", subject=text, hint=_HINT
            )
        return _named(name, text, version=int(version))
    raise InvalidReference(
        "a model reference needs an alias, version or digest", subject=text, hint=_HINT
    )


def _named(name: str, text: str, **kind: object) -> ModelRef:
    if not valid_model_name(name):
        raise InvalidReference("invalid model name in reference", subject=text, hint=_HINT)
    return ModelRef(name=name, **kind)  # type: ignore[arg-type]  # kind: one of alias/version/digest
