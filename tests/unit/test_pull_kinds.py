"""The pull's strategies over the in-memory store: a modelcar's layers in parallel, a
hand-built image's in order, an artifact's disjoint ones; the first failed layer ends the
pull without fetching the rest; progress is written by a watcher, not by the layers."""

from __future__ import annotations

import gzip
import json
import threading

import pytest

from modelcar.builder.build import Builder, BuildOptions
from modelcar.builder.sources.local import LocalSource
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.kinds import (
    ArtifactLayers,
    HandBuiltLayers,
    ModelcarLayers,
    strategy_for,
)
from modelcar.cache_daemon.pull import Puller, PullOptions
from modelcar.cache_daemon.sources import origin_only
from modelcar.errors import UnsafeArchive
from modelcar.format import modelpack
from modelcar.format.foreign import load_foreign
from modelcar.format.image import load_model_image
from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import sha256_bytes as sha
from modelcar.oci.memory import MemoryStore
from modelcar.oci.reference import parse_ref
from tests.helpers import make_tar

REF = parse_ref("memory.invalid/kinds/m:v1")
KiB = 1 << 10


def _push(
    store: MemoryStore,
    config: bytes,
    layers: list[tuple[str, bytes, dict]],
    artifact: str | None = None,
    config_type: str = mt.OCI_CONFIG,
) -> str:
    for blob in (config, *(data for _, data, _ in layers)):
        store.blobs[sha(blob)] = blob
    manifest: dict = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": sha(config), "size": len(config)},
        "layers": [
            {"mediaType": m, "digest": sha(d), "size": len(d), "annotations": a}
            for m, d, a in layers
        ],
    }
    if artifact:
        manifest["artifactType"] = artifact
    data = json.dumps(manifest).encode()
    store.manifests[sha(data)] = data
    return f"memory.invalid/kinds/m@{sha(data)}"


def _modelcar(tmp_path, store: MemoryStore, files: int) -> str:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(files):  # each file over the threshold: a layer of its own
        (src / f"w{i:02d}.bin").write_bytes(bytes([i]) * (64 * KiB))
    options = BuildOptions(base="scratch", large_file_threshold=32 * KiB, stat_cache=False)
    record = Builder(LocalSource(str(src)), REF, options, target=store).run()
    return str(REF.pinned(record.digest))


def test_each_image_kind_has_its_strategy(tmp_path):
    store = MemoryStore(REF)
    mc = load_model_image(store, parse_ref(_modelcar(tmp_path, store, 2)))
    assert isinstance(strategy_for(mc), ModelcarLayers)
    config = b'{"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}'
    hand = _push(store, config, [(mt.OCI_LAYER_TAR, make_tar([("models/a", b"a")]), {})])
    assert isinstance(strategy_for(load_foreign(store, parse_ref(hand))), HandBuiltLayers)
    raw = [(modelpack.PREFIX + "weight.v1.raw", b"w" * 100, {modelpack.FILEPATH: "w.bin"})]
    pack = _push(store, b"{}", raw, modelpack.ARTIFACT_TYPE, modelpack.CONFIG_TYPE)
    assert isinstance(strategy_for(load_foreign(store, parse_ref(pack))), ArtifactLayers)


def test_a_hand_built_image_applies_its_layers_in_order(tmp_path):
    store = MemoryStore(REF)
    config = b'{"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}'
    layers = [
        (
            mt.OCI_LAYER_GZIP,
            gzip.compress(make_tar([("models/a", b"old"), ("models/b", b"b")])),
            {},
        ),
        (mt.OCI_LAYER_TAR, make_tar([("models/a", b"new"), ("models/.wh.b", b"")]), {}),
    ]
    image = _push(store, config, layers)
    with CacheDir(tmp_path / "cache") as cache:
        result = Puller(cache, PullOptions(jobs=2), sources=origin_only(store)).pull(image)
        out = cache.model_dir(result.digest)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == {"a": b"new"}


def test_an_artifact_refuses_a_file_in_two_layers(tmp_path):
    store = MemoryStore(REF)
    tar = modelpack.PREFIX + "weight.v1.tar"
    layers = [(tar, make_tar([("x", b"1")]), {}), (tar, make_tar([("x", b"2")]), {})]
    image = _push(store, b"{}", layers, modelpack.ARTIFACT_TYPE, modelpack.CONFIG_TYPE)
    with CacheDir(tmp_path / "cache") as cache:
        with pytest.raises(UnsafeArchive, match="the same file in two layers"):
            Puller(cache, PullOptions(jobs=2), sources=origin_only(store)).pull(image)
        assert cache.published() == []


def test_a_corrupt_first_layer_ends_a_40_layer_pull_without_fetching_the_rest(tmp_path):
    store = MemoryStore(REF)
    image = _modelcar(tmp_path, store, 40)
    model = load_model_image(store, parse_ref(image))
    first = model.model_layers[0].digest
    bad = bytearray(store.blobs[first])
    bad[0] ^= 1  # its first tar header: refused at its first read
    store.blobs[first] = bytes(bad)
    slow = _Slow(store)  # each layer takes a while, so the other three are in flight
    with CacheDir(tmp_path / "cache") as cache:
        with pytest.raises(UnsafeArchive):
            Puller(cache, PullOptions(jobs=4, attempts=1), sources=origin_only(slow)).pull(image)
        layers = {d.digest for d in model.model_layers}
        fetched = {digest for digest, _ in store.reads if digest in layers}
        # the first one and those already in flight on the other three threads, not 40
        assert first in fetched and len(fetched) <= 4 + 3, len(fetched)
        assert cache.db.get(model.digest).state == "failed"


def test_progress_is_written_by_a_watcher_never_by_a_download_thread(tmp_path):
    store = MemoryStore(REF)
    image = _modelcar(tmp_path, store, 8)
    seen: set[str] = set()

    def on_progress(digest: str, done: int, total: int) -> None:
        seen.add(threading.current_thread().name)

    with CacheDir(tmp_path / "cache") as cache:
        original = cache.db.set

        def recording_set(digest: str, **fields: object) -> None:
            if set(fields) == {"bytes_done"}:  # a pull's progress, not a state change
                seen.add(threading.current_thread().name)
            original(digest, **fields)

        cache.db.set = recording_set  # type: ignore[method-assign]
        slow = _Slow(store)
        Puller(cache, PullOptions(jobs=4), sources=origin_only(slow), on_progress=on_progress).pull(
            image
        )
    assert seen and all(name.startswith("progress-") for name in seen), seen


class _Slow:
    """A store whose blob reads take a little while (so a pull lasts over a second)."""

    def __init__(self, store: MemoryStore):
        self.store = store

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    def open_blob(self, digest: str, offset: int = 0):
        import contextlib
        import time

        @contextlib.contextmanager
        def slow():
            with self.store.open_blob(digest, offset) as f:

                class Reader:
                    def read(self, n: int = -1) -> bytes:
                        time.sleep(0.2)
                        return f.read(min(n, 16 * KiB) if n > 0 else 16 * KiB)

                yield Reader()

        return slow()
