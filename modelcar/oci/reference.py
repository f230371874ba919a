"""Image references: ``host[:port]/repo[:tag][@digest]`` and ``oci:PATH[:tag][@digest]``.

Registry references are normalised the way docker does: a first component
without ``.`` or ``:`` (and not ``localhost``) means Docker Hub, and a
single-component Hub name gets ``library/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Self

from modelcar.errors import InvalidDigest, InvalidReference
from modelcar.oci.digest import parse_digest

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?$"
)


def _split_digest(text: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    name, _, digest = text.rpartition("@")
    try:
        return name, parse_digest(digest)
    except InvalidDigest:
        raise InvalidReference("invalid digest in reference", subject=text) from None


def valid_tag(tag: str) -> bool:
    return bool(_TAG_RE.match(tag))


class _RefMixin:
    """Operations shared by both kinds of reference (fields: name, tag, digest)."""

    name: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """The manifest reference used on the wire: digest if pinned, else tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str | None) -> Self:
        return replace(self, tag=tag)  # type: ignore[type-var]  # mypy: replace() on Self

    def pinned(self, digest: str) -> Self:
        return replace(self, tag=None, digest=parse_digest(digest))  # type: ignore[type-var]  # as above

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


@dataclass(frozen=True)
class ImageRef(_RefMixin):
    """A reference to an image in an OCI distribution registry."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    transport = "registry"

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:  # type: ignore[override]  # the mixin declares a plain attribute
        return f"{self.registry}/{self.repository}"


@dataclass(frozen=True)
class LayoutRef(_RefMixin):
    """A reference to an image in an OCI image-layout directory."""

    path: Path
    tag: str | None = None
    digest: str | None = None

    transport = "oci"

    @property
    def name(self) -> str:  # type: ignore[override]  # as in ImageRef
        return f"oci:{self.path}"


Ref = ImageRef | LayoutRef


def parse_layout_ref(text: str) -> LayoutRef:
    body = text[len("oci:") :]
    body, digest = _split_digest(body)
    tag = None
    # oci:PATH:TAG — the tag is the part after the last ':' if it cannot be a path part.
    head, sep, tail = body.rpartition(":")
    if sep and head and "/" not in tail and valid_tag(tail):
        body, tag = head, tail
    if not body:
        raise InvalidReference("empty path in oci: reference", subject=text)
    return LayoutRef(path=Path(body), tag=tag, digest=digest)


def parse_image_ref(text: str) -> ImageRef:
    if not text or any(c.isspace() for c in text):
        raise InvalidReference("invalid image reference", subject=repr(text))
    name, digest = _split_digest(text)
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
        if not valid_tag(tag):
            raise InvalidReference("invalid tag in reference", subject=text)
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
        if not _HOST_RE.match(registry):
            raise InvalidReference("invalid registry host in reference", subject=text)
    else:
        registry, repository = DOCKER_HUB, name
        if "/" not in repository:
            repository = f"library/{repository}"
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if not _REPO_RE.match(repository) or len(repository) > 255:
        raise InvalidReference(
            "invalid repository name (lowercase letters, digits, '.', '_', '-', '/')",
            subject=text,
        )
    return ImageRef(registry=registry, repository=repository, tag=tag, digest=digest)


def parse_ref(text: str) -> Ref:
    """Parse a registry or ``oci:`` reference."""
    if text.startswith("oci:"):
        return parse_layout_ref(text)
    if text.startswith("docker://"):
        text = text[len("docker://") :]
    return parse_image_ref(text)
