"""Platforms (``os/architecture[/variant]``) as image indexes name them."""

from __future__ import annotations

import platform as _platform
import re

from modelcar.errors import ImageFormatError, UsageError
from modelcar.oci.manifest import Descriptor, Platform

_SPEC = re.compile(r"([a-z0-9]+)/([a-z0-9_]+)(?:/([a-z0-9]+))?")
_MACHINES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def parse_platform(spec: str) -> Platform:
    """``linux/arm64`` (or ``linux/arm/v7``) as a Platform; a one-line error otherwise."""
    m = _SPEC.fullmatch(spec.strip())
    if not m:
        raise UsageError(
            "not a platform", subject=spec, hint="write OS/ARCH[/VARIANT], e.g. linux/arm64"
        )
    os_, arch, variant = m.groups()
    if arch == "arm64" and variant == "v8":  # the same platform, as containerd normalises it
        variant = None
    return Platform(os=os_, architecture=arch, variant=variant)


def platform_str(p: Platform) -> str:
    return f"{p.os}/{p.architecture}" + (f"/{p.variant}" if p.variant else "")


def host_arch() -> str:
    m = _platform.machine().lower()
    return _MACHINES.get(m, m)


def host_platform() -> Platform:
    return Platform(os="linux", architecture=host_arch())


def _key(p: Platform) -> tuple[str, str, str | None]:
    variant = None if p.architecture == "arm64" and p.variant in (None, "v8") else p.variant
    return p.os, p.architecture, variant


def same_platform(a: Platform, b: Platform) -> bool:
    """Equal, reading an absent arm64 variant as v8 (the only one)."""
    return _key(a) == _key(b)


def is_runnable(p: Platform | None) -> bool:
    """A platform image, not an attestation or other artifact (``unknown/unknown``)."""
    return p is not None and p.os != "unknown" and p.architecture != "unknown"


def platform_images(manifests: list[Descriptor], subject: str) -> list[Descriptor]:
    """An index's runnable images; ImageFormatError if two name the same platform (one
    node would take one and another tool the other: a platform names one image)."""
    children = [d for d in manifests if is_runnable(d.platform)]
    seen: set[tuple[str, str, str | None]] = set()
    for d in children:
        key = _key(d.platform)  # type: ignore[arg-type]  # is_runnable: not None
        if key in seen:
            raise ImageFormatError(
                f"the image index lists {platform_str(d.platform)} twice",  # type: ignore[arg-type]
                subject=subject,
                hint="an index names one image per platform",
            )
        seen.add(key)
    return children
