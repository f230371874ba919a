"""The base under the model layers.

Default: a minimal image made deterministically from a *static* busybox
(``$MODELCAR_BUSYBOX`` or Debian's ``busybox-static`` at ``/bin/busybox``), so
KServe's modelcar init check and sidecar (``sh``, ``ls``, ``ln``, ``sleep``) run
in it. ``--base REF`` takes any image from a registry or ``oci:`` layout, one
platform or an index of several (the build then makes one manifest per platform
over the same model layers); ``--base scratch`` builds a weights-only image (for
ImageVolume mounts).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelcar import decode
from modelcar.errors import ImageFormatError, UsageError
from modelcar.format import keys as mk
from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import sha256_bytes
from modelcar.oci.manifest import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    canonical_json,
    parse_index,
    parse_manifest,
)
from modelcar.oci.platform import (
    host_arch,
    host_platform,
    is_runnable,
    platform_str,
    same_platform,
)
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import ImageStore, StoreOptions
from modelcar.oci.stores import open_store
from modelcar.oci.tarstream import Member, TarWriter, with_parents

EPOCH = "1970-01-01T00:00:00Z"
BUSYBOX_LINKS = (
    "[",
    "ash",
    "cat",
    "cp",
    "du",
    "echo",
    "env",
    "false",
    "find",
    "head",
    "id",
    "ln",
    "ls",
    "mkdir",
    "mv",
    "readlink",
    "rm",
    "sh",
    "sha256sum",
    "sleep",
    "stat",
    "tail",
    "test",
    "touch",
    "true",
    "wc",
)
_ELF_ARCH = {
    0x3E: "amd64",
    0xB7: "arm64",
    0x28: "arm",
    0x03: "386",
    0xF3: "riscv64",
    0x15: "ppc64le",
    0x16: "s390x",
}


@dataclass
class BaseImage:
    name: str
    digest: str | None  # the base manifest's digest (None for scratch)
    config: dict[str, Any]
    layers: list[Descriptor]
    blobs: dict[str, bytes] = field(default_factory=dict)  # small blobs held in memory
    store: ImageStore | None = None  # where to copy the layers from otherwise
    manifest_bytes: bytes | None = None

    @property
    def platform(self) -> Platform:
        c = self.config
        return Platform(
            os=c.get("os") or "linux",
            architecture=c.get("architecture") or host_arch(),
            variant=c.get("variant") or None,
        )


@dataclass
class Bases:
    """What ``--base`` names: one image, or the images of an index (one per platform)."""

    name: str
    digest: str | None  # the index's digest, or the single image's
    images: list[BaseImage]
    is_index: bool = False
    index_bytes: bytes | None = None  # for an index made here (base create)

    @property
    def platforms(self) -> list[str]:
        return [platform_str(b.platform) for b in self.images]


def _elf_arch_if_static(data: bytes, path: str) -> str:
    if data[:4] != b"\x7fELF":
        raise UsageError("busybox is not an ELF binary", subject=path)
    is64 = data[4] == 2
    endian = "<" if data[5] == 1 else ">"
    machine = struct.unpack_from(endian + "H", data, 18)[0]
    if is64:
        (phoff,) = struct.unpack_from(endian + "Q", data, 32)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 54)
    else:
        (phoff,) = struct.unpack_from(endian + "I", data, 28)
        phentsize, phnum = struct.unpack_from(endian + "HH", data, 42)
    for i in range(phnum):
        (p_type,) = struct.unpack_from(endian + "I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP: needs a dynamic loader the image does not have
            raise UsageError(
                "busybox is dynamically linked",
                subject=path,
                hint="install busybox-static or set MODELCAR_BUSYBOX to a static build",
            )
    if machine not in _ELF_ARCH:
        raise UsageError(f"busybox is for an unknown ELF machine ({machine:#x})", subject=path)
    return _ELF_ARCH[machine]


def busybox_path() -> str:
    return os.environ.get("MODELCAR_BUSYBOX") or "/bin/busybox"


def busybox_base(path: str | None = None, platform: Platform | None = None) -> BaseImage:
    """The busybox base for ``platform`` (default: the binary's own architecture)."""
    path = path or busybox_path()
    try:
        binary = Path(path).read_bytes()
    except OSError:
        raise UsageError(
            "no busybox for the default base",
            subject=path,
            hint="apt-get install busybox-static, set MODELCAR_BUSYBOX, "
            "or pass --base REF / --base scratch",
        ) from None
    arch = _elf_arch_if_static(binary, path)
    if platform is not None and arch != platform.architecture:
        raise UsageError(
            f"busybox is built for {arch}, not for {platform_str(platform)}",
            subject=path,
            hint=f"give a static busybox for {platform.architecture}: "
            f"--busybox {platform_str(platform)}=PATH",
        )
    members = [Member("bin/busybox", size=len(binary), mode=0o755, data=binary)]
    members += [Member(f"bin/{name}", kind="symlink", linkname="busybox") for name in BUSYBOX_LINKS]
    members += [Member("tmp", kind="dir", mode=0o1777)]
    layer = b"".join(TarWriter(with_parents(members)))
    layer_digest = sha256_bytes(layer)
    config: dict[str, Any] = {
        "architecture": arch,
        "os": "linux",
        "created": EPOCH,
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": EPOCH, "created_by": "modelcar base: static busybox"}],
    }
    if platform is not None and platform.variant:
        config["variant"] = platform.variant
    config_bytes = canonical_json(config)
    desc = Descriptor(
        mediaType=mt.OCI_LAYER_TAR,
        digest=layer_digest,
        size=len(layer),
        annotations={mk.LAYER_ROLE: "base"},
    )
    manifest = Manifest(
        config=Descriptor(
            mediaType=mt.OCI_CONFIG, digest=sha256_bytes(config_bytes), size=len(config_bytes)
        ),
        layers=[desc],
        annotations={mt.CREATED: EPOCH, mk.PREFIX + "base": "busybox"},
    )
    manifest_bytes = manifest.canonical()
    return BaseImage(
        name="modelcar-busybox",
        digest=sha256_bytes(manifest_bytes),
        config=config,
        layers=[desc],
        blobs={layer_digest: layer, sha256_bytes(config_bytes): config_bytes},
        manifest_bytes=manifest_bytes,
    )


def busybox_index(binaries: list[tuple[Platform, str | None]]) -> Bases:
    """A multi-platform busybox base: one image per (platform, binary), in an index.
    A binary of None is the default one (``$MODELCAR_BUSYBOX`` or /bin/busybox)."""
    images = [busybox_base(path, p) for p, path in binaries]
    index = Index(
        manifests=[_platform_descriptor(b) for b in images],
        annotations={mt.CREATED: EPOCH, mk.PREFIX + "base": "busybox"},
    )
    index_bytes = index.canonical()
    return Bases(
        name="modelcar-busybox",
        digest=sha256_bytes(index_bytes),
        images=images,
        is_index=True,
        index_bytes=index_bytes,
    )


def _platform_descriptor(b: BaseImage) -> Descriptor:
    assert b.manifest_bytes is not None and b.digest is not None
    return Descriptor(
        mediaType=mt.OCI_MANIFEST,
        digest=b.digest,
        size=len(b.manifest_bytes),
        platform=b.platform,
    )


def scratch_base(platform: Platform | None = None) -> BaseImage:
    p = platform or host_platform()
    config: dict[str, Any] = {
        "architecture": p.architecture,
        "os": p.os,
        "created": EPOCH,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }
    if p.variant:
        config["variant"] = p.variant
    return BaseImage(name="scratch", digest=None, config=config, layers=[])


_LAYER_TYPES = {
    mt.DOCKER_LAYER_TAR: mt.OCI_LAYER_TAR,
    mt.DOCKER_LAYER_GZIP: mt.OCI_LAYER_GZIP,
}
MAX_PLATFORMS = 64


def load_bases(
    spec: str | None, options: StoreOptions, platforms: list[Platform] | None = None
) -> Bases:
    """Resolve ``--base`` (None: busybox, ``scratch``, or an image reference) for the
    ``--platform``s asked for (None: every platform an index has; else the image's)."""
    if spec is None or spec == "busybox":
        b = busybox_base()
        if platforms and not all(same_platform(p, b.platform) for p in platforms):
            raise UsageError(
                f"the default base is this machine's busybox ({platform_str(b.platform)})",
                subject=", ".join(platform_str(p) for p in platforms),
                hint="make a multi-platform base once with `modelcar base create TARGET "
                "--platform …` and pass it as --base",
            )
        return Bases(name=b.name, digest=b.digest, images=[b])
    if spec == "scratch":
        if not platforms:
            return Bases(name="scratch", digest=None, images=[scratch_base()])
        images = [scratch_base(p) for p in platforms]
        return Bases(name="scratch", digest=None, images=images, is_index=len(images) > 1)
    ref = parse_ref(spec)
    store = open_store(ref, options)
    fetched = store.get_manifest(ref.reference)
    name = str(ref.with_tag(ref.tag) if not ref.digest else ref)
    if fetched.media_type not in mt.INDEX_TYPES:
        image = _load_image(store, spec, name, fetched.data, fetched.digest)
        if platforms and not all(same_platform(p, image.platform) for p in platforms):
            raise UsageError(
                f"base image is for {platform_str(image.platform)} only",
                subject=spec,
                hint="use a multi-platform base (an image index) for other platforms",
            )
        return Bases(name=name, digest=fetched.digest, images=[image])
    index = parse_index(fetched.data)
    children = [d for d in index.manifests if is_runnable(d.platform)]
    if len(children) > MAX_PLATFORMS:
        raise ImageFormatError(
            f"base image index lists over {MAX_PLATFORMS} platforms", subject=spec
        )
    if platforms:
        chosen = []
        for p in platforms:
            match = next((d for d in children if same_platform(d.platform, p)), None)  # type: ignore[arg-type]  # children: platforms checked by is_runnable
            if match is None:
                has = ", ".join(platform_str(d.platform) for d in children) or "none"  # type: ignore[arg-type]  # as above
                raise UsageError(
                    f"base image has no {platform_str(p)} manifest (it has: {has})",
                    subject=spec,
                )
            chosen.append(match)
        children = chosen
    if not children:
        raise ImageFormatError("base image index lists no platform images", subject=spec)
    images = []
    for d in children:
        child = store.get_manifest(d.digest)
        if sha256_bytes(child.data) != d.digest:
            raise ImageFormatError(
                "base image manifest does not match its digest", subject=f"{spec}: {d.digest}"
            )
        images.append(_load_image(store, spec, name, child.data, d.digest))
    return Bases(name=name, digest=fetched.digest, images=images, is_index=True)


def _load_image(store: ImageStore, spec: str, name: str, data: bytes, digest: str) -> BaseImage:
    manifest = parse_manifest(data)
    config = decode.json_object(store.read_blob(manifest.config.digest), "base image config")
    layers = [
        Descriptor(
            mediaType=_LAYER_TYPES.get(d.mediaType, d.mediaType),
            digest=d.digest,
            size=d.size,
            annotations={mk.LAYER_ROLE: "base"},
        )
        for d in manifest.layers
    ]
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(layers):
        raise ImageFormatError("base image config does not match its layers", subject=spec)
    return BaseImage(
        name=name,
        digest=digest,
        config=json.loads(json.dumps(config)),
        layers=layers,
        store=store,
        manifest_bytes=data,
    )
