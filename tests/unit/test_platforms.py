"""Multi-platform modelcars over an in-memory store: one index, a manifest per
platform, the model layers shared; variants that differ in model content refused."""

from __future__ import annotations

import json
import struct

import pytest

from modelcar.builder.base import busybox_index
from modelcar.builder.build import Builder, BuildOptions
from modelcar.builder.sources.local import LocalSource
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.pull import Puller, PullOptions
from modelcar.cache_daemon.sources import origin_only
from modelcar.errors import ImageFormatError, UsageError
from modelcar.format.image import load_model_image
from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import sha256_bytes
from modelcar.oci.manifest import parse_index, parse_manifest
from modelcar.oci.memory import MemoryStore
from modelcar.oci.platform import parse_platform, platform_str
from modelcar.oci.reference import parse_ref

MACHINES = {"amd64": 0x3E, "arm64": 0xB7}


def fake_static_elf(path, arch: str) -> str:
    """A 64-bit ELF header for ``arch`` with no program headers (so: static)."""
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, MACHINES[arch], 1, 0, 64, 0, 0, 64, 56, 0, 64, 0, 0
    )
    path.write_bytes(header + arch.encode() * 100)
    return str(path)


@pytest.fixture
def base_store(tmp_path, monkeypatch):
    """A two-platform busybox base, as `modelcar base create --platform …` makes it."""
    bases = busybox_index(
        [
            (parse_platform("linux/amd64"), fake_static_elf(tmp_path / "bb-amd64", "amd64")),
            (parse_platform("linux/arm64"), fake_static_elf(tmp_path / "bb-arm64", "arm64")),
        ]
    )
    ref = parse_ref("memory.invalid/base/busybox:1")
    store = MemoryStore(ref)
    for b in bases.images:
        for digest, data in b.blobs.items():
            store.put_blob(digest, len(data), lambda d=data: [d])
        store.put_manifest(b.manifest_bytes, mt.OCI_MANIFEST, b.digest)
    store.put_manifest(bases.index_bytes, mt.OCI_INDEX, "1")
    # --base memory.invalid/base/busybox:1 opens this store
    monkeypatch.setattr("modelcar.builder.base.open_store", lambda ref, options=None: store)
    return store, bases


def test_platforms_parse_and_bad_ones_are_one_line():
    assert platform_str(parse_platform("linux/arm64/v8")) == "linux/arm64"
    assert platform_str(parse_platform("linux/arm/v7")) == "linux/arm/v7"
    with pytest.raises(UsageError, match="not a platform"):
        parse_platform("arm64")


def test_a_busybox_for_another_machine_is_refused(tmp_path):
    arm = fake_static_elf(tmp_path / "bb", "arm64")
    with pytest.raises(UsageError, match="built for arm64, not for linux/amd64") as e:
        busybox_index([(parse_platform("linux/amd64"), arm)])
    assert e.value.subject == arm


def _build(tmp_path, target, base_ref, **options):
    model = tmp_path / "model"
    if not model.exists():
        model.mkdir()
        (model / "config.json").write_text('{"a": 1}')
        (model / "weights.bin").write_bytes(bytes(range(256)) * 8192)
    ref = parse_ref("memory.invalid/team/m:v1")
    opts = BuildOptions(base=base_ref, large_file_threshold=1 << 20, stat_cache=False, **options)
    return Builder(LocalSource(str(model)), ref, opts, target=target).run()


def test_a_multi_platform_base_gives_an_index_over_the_same_model_layers(tmp_path, base_store):
    target = MemoryStore(parse_ref("memory.invalid/team/m"))
    record = _build(tmp_path, target, "memory.invalid/base/busybox:1")
    again = _build(tmp_path, target, "memory.invalid/base/busybox:1")
    arm_only = _build(
        tmp_path, target, "memory.invalid/base/busybox:1", platforms=[parse_platform("linux/arm64")]
    )
    with pytest.raises(UsageError, match=r"no linux/riscv64 manifest \(it has: linux/amd64"):
        _build(
            tmp_path,
            target,
            "memory.invalid/base/busybox:1",
            platforms=[parse_platform("linux/riscv64")],
        )
    assert record.digest == again.digest  # reproducible
    assert record.platforms == ["linux/amd64", "linux/arm64"]
    assert arm_only.platforms == ["linux/arm64"] and arm_only.digest != record.digest
    fetched = target.get_manifest(record.digest)
    assert fetched.media_type == mt.OCI_INDEX
    index = parse_index(fetched.data)
    manifests = [parse_manifest(target.get_manifest(d.digest).data) for d in index.manifests]
    model = [[d.digest for d in m.layers[1:]] for m in manifests]
    assert model[0] == model[1] and len(model[0]) == 2  # shared model layers
    assert manifests[0].layers[0].digest != manifests[1].layers[0].digest  # own busybox
    image = load_model_image(target, parse_ref(f"memory.invalid/team/m@{record.digest}"))
    assert set(image.platforms) == {"linux/amd64", "linux/arm64"}
    with CacheDir(tmp_path / "cache") as cache:
        result = Puller(cache, PullOptions(jobs=1), sources=origin_only(target)).pull(
            f"memory.invalid/team/m@{record.digest}"
        )
        assert result.files == 2
        assert (cache.model_dir(record.digest) / "weights.bin").stat().st_size == 256 * 8192


def test_variants_that_differ_in_model_content_are_refused(tmp_path, base_store):
    target = MemoryStore(parse_ref("memory.invalid/team/m"))
    record = _build(tmp_path, target, "memory.invalid/base/busybox:1")
    (tmp_path / "model" / "weights.bin").write_bytes(b"other weights" * 100_000)
    other = _build(tmp_path, target, "memory.invalid/base/busybox:1")
    # by hand: the first build's amd64 manifest with the second build's arm64 one
    first = parse_index(target.get_manifest(record.digest).data)
    second = parse_index(target.get_manifest(other.digest).data)
    mixed = first.model_copy(update={"manifests": [first.manifests[0], second.manifests[1]]})
    data = mixed.canonical()
    target.put_manifest(data, mt.OCI_INDEX, sha256_bytes(data))
    ref = f"memory.invalid/team/m@{sha256_bytes(data)}"
    with pytest.raises(ImageFormatError, match="platform variants differ in model content"):
        load_model_image(target, parse_ref(ref))
    with CacheDir(tmp_path / "cache") as cache:
        with pytest.raises(ImageFormatError):
            Puller(cache, PullOptions(jobs=1), sources=origin_only(target)).pull(ref)
        assert cache.published() == [] and cache.staged() == []
    assert json.loads(data)["manifests"][1]["platform"]["architecture"] == "arm64"
