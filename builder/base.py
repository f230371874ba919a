"""The base under the model layers.

Default: a minimal image made deterministically from a *static* busybox
(``$MODELCAR_BUSYBOX`` or Debian's ``busybox-static`` at ``/bin/busybox``), so
KServe's modelcar init check and sidecar (``sh``, ``ls``, ``ln``, ``sleep``) run
in it. ``--base REF`` takes any image from a registry or ``oci:`` layout;
``--base scratch`` builds a weights-only image (for ImageVolume mounts).
"""

from __future__ import annotations

import json
import os
import platform
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelcar.errors import ImageFormatError, UsageError
from modelcar.format import keys as mt
from modelcar.oci import mediatypes as oci_mt
from modelcar.oci.digest import sha256_bytes
from modelcar.oci.manifest import (
    Descriptor,
    Manifest,
    canonical_json,
    load_json,
    parse_index,
    parse_manifest,
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


def host_arch() -> str:
    m = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(m, m)


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
    return _ELF_ARCH.get(machine, host_arch())


def busybox_path() -> str:
    return os.environ.get("MODELCAR_BUSYBOX") or "/bin/busybox"


def busybox_base(path: str | None = None) -> BaseImage:
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
    members = [Member("bin/busybox", size=len(binary), mode=0o755, data=binary)]
    members += [Member(f"bin/{name}", kind="symlink", linkname="busybox") for name in BUSYBOX_LINKS]
    members += [Member("tmp", kind="dir", mode=0o1777)]
    layer = b"".join(TarWriter(with_parents(members)))
    layer_digest = sha256_bytes(layer)
    config = {
        "architecture": arch,
        "os": "linux",
        "created": EPOCH,
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": EPOCH, "created_by": "modelcar base: static busybox"}],
    }
    config_bytes = canonical_json(config)
    desc = Descriptor(
        mediaType=oci_mt.OCI_LAYER_TAR,
        digest=layer_digest,
        size=len(layer),
        annotations={mt.LAYER_ROLE: "base"},
    )
    manifest = Manifest(
        config=Descriptor(
            mediaType=oci_mt.OCI_CONFIG, digest=sha256_bytes(config_bytes), size=len(config_bytes)
        ),
        layers=[desc],
        annotations={oci_mt.CREATED: EPOCH, mt.PREFIX + "base": "busybox"},
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


def scratch_base() -> BaseImage:
    config = {
        "architecture": host_arch(),
        "os": "linux",
        "created": EPOCH,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
    }
    return BaseImage(name="scratch", digest=None, config=config, layers=[])


_LAYER_TYPES = {
    oci_mt.DOCKER_LAYER_TAR: oci_mt.OCI_LAYER_TAR,
    oci_mt.DOCKER_LAYER_GZIP: oci_mt.OCI_LAYER_GZIP,
}


def load_base(spec: str | None, options: StoreOptions) -> BaseImage:
    """Resolve ``--base``: None (busybox), ``scratch``, or an image reference."""
    if spec is None or spec == "busybox":
        return busybox_base()
    if spec == "scratch":
        return scratch_base()
    ref = parse_ref(spec)
    store = open_store(ref, options)
    fetched = store.get_manifest(ref.reference)
    data, digest = fetched.data, fetched.digest
    if fetched.media_type in oci_mt.INDEX_TYPES:
        index = parse_index(data)
        arch = host_arch()
        chosen = next(
            (
                d
                for d in index.manifests
                if d.platform and d.platform.os == "linux" and d.platform.architecture == arch
            ),
            None,
        )
        if chosen is None:
            raise ImageFormatError(f"base image has no linux/{arch} manifest", subject=spec)
        fetched = store.get_manifest(chosen.digest)
        data, digest = fetched.data, fetched.digest
    manifest = parse_manifest(data)
    config = load_json(store.read_blob(manifest.config.digest), "base image config")
    layers = [
        Descriptor(
            mediaType=_LAYER_TYPES.get(d.mediaType, d.mediaType),
            digest=d.digest,
            size=d.size,
            annotations={mt.LAYER_ROLE: "base"},
        )
        for d in manifest.layers
    ]
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(layers):
        raise ImageFormatError("base image config does not match its layers", subject=spec)
    return BaseImage(
        name=str(ref.with_tag(ref.tag) if not ref.digest else ref),
        digest=digest,
        config=json.loads(json.dumps(config)),
        layers=layers,
        store=store,
        manifest_bytes=data,
    )
