"""The builder and the puller over an in-memory store: no registry, no network."""

from __future__ import annotations

import contextlib
import json
import threading

import pytest

from modelcar.builder.build import Builder, BuildOptions
from modelcar.builder.sources.local import LocalSource
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.pull import Puller, PullOptions, PullStopped
from modelcar.cache_daemon.sources import origin_only
from modelcar.errors import DigestMismatch, NotFound
from modelcar.oci.memory import MemoryStore
from modelcar.oci.reference import parse_ref


@pytest.fixture
def model(tmp_path):
    root = tmp_path / "model"
    (root / "tok").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"hidden": 64}))
    (root / "tok" / "vocab.txt").write_text("a\nb\n")
    (root / "weights.bin").write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    return root


def _build(model, store, ref):
    options = BuildOptions(base="scratch", large_file_threshold=1 << 20, stat_cache=False)
    return Builder(LocalSource(str(model)), ref, options, target=store).run()


def test_build_then_pull_without_a_server(model, tmp_path):
    ref = parse_ref("memory.invalid/team/model:v1")
    store = MemoryStore(ref)
    record = _build(model, store, ref)
    assert store.tags["v1"] == record.digest
    assert [len(layer.files) for layer in record.layers] == [2, 1]  # small files, weights
    again = _build(model, store, ref)
    assert again.digest == record.digest and again.bytes_skipped > 0  # reproducible

    with CacheDir(tmp_path / "cache") as cache:
        puller = Puller(cache, PullOptions(jobs=2), sources=origin_only(store))
        result = puller.pull(str(ref.pinned(record.digest)))
        out = cache.model_dir(record.digest)
        assert (out / "weights.bin").read_bytes() == (model / "weights.bin").read_bytes()
        assert (out / "tok" / "vocab.txt").read_text() == "a\nb\n"
        assert result.files == 3 and result.bytes_fetched > 2 << 20


def test_a_corrupted_layer_in_the_store_is_refused_and_nothing_published(model, tmp_path):
    ref = parse_ref("memory.invalid/team/model:v1")
    store = MemoryStore(ref)
    record = _build(model, store, ref)
    big = max(record.layers, key=lambda layer: layer.size).digest
    data = bytearray(store.blobs[big])
    data[-2000] ^= 1
    store.blobs[big] = bytes(data)
    with CacheDir(tmp_path / "cache") as cache:
        puller = Puller(cache, PullOptions(jobs=1), sources=origin_only(store))
        with pytest.raises(DigestMismatch):
            puller.pull(str(ref.pinned(record.digest)))
        assert cache.published() == []


def test_a_layer_the_origin_lacks_fails_the_pull_and_is_recorded(model, tmp_path):
    """Every source (here the origin alone) answers "not found": the pull fails, and the
    state says so (only a wave's peer-only try waits instead)."""
    ref = parse_ref("memory.invalid/team/model:v1")
    store = MemoryStore(ref)
    record = _build(model, store, ref)
    del store.blobs[max(record.layers, key=lambda layer: layer.size).digest]
    with CacheDir(tmp_path / "cache") as cache:
        puller = Puller(cache, PullOptions(jobs=1), sources=origin_only(store))
        with pytest.raises(NotFound):
            puller.pull(str(ref.pinned(record.digest)))
        row = cache.db.get(record.digest)
        assert row is not None and row.state == "failed" and "no source holds" in row.error
        assert cache.published() == []


class _StopAfter:
    """A store whose blobs set ``stop`` once ``after`` bytes of them have been read."""

    def __init__(self, store: MemoryStore, after: int, stop: threading.Event):
        self.store, self.after, self.stop = store, after, stop
        self.read = 0

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    @contextlib.contextmanager
    def open_blob(self, digest: str, offset: int = 0):
        outer = self

        class Reader:
            def __init__(self, inner):
                self.inner = inner

            def read(self, n: int = -1) -> bytes:
                data = self.inner.read(min(n, 64 << 10) if n > 0 else 64 << 10)
                outer.read += len(data)
                if outer.read > outer.after:
                    outer.stop.set()
                return data

        with self.store.open_blob(digest, offset) as f:
            yield Reader(f)


def test_a_stopped_pull_keeps_its_work_and_the_next_one_resumes(model, tmp_path):
    ref = parse_ref("memory.invalid/team/model:v1")
    store = MemoryStore(ref)
    record = _build(model, store, ref)
    image = str(ref.pinned(record.digest))
    stop = threading.Event()
    with CacheDir(tmp_path / "cache") as cache:
        options = PullOptions(jobs=1, checkpoint_bytes=256 << 10)
        stopping = _StopAfter(store, 1 << 20, stop)  # the daemon stops mid-layer
        stopper = Puller(cache, options, sources=origin_only(stopping), stop=stop)
        with pytest.raises(PullStopped):
            stopper.pull(image)
        assert cache.published() == []
        assert cache.db.get(record.digest).state == "pulling"  # reset to pending at start
        result = Puller(cache, options, sources=origin_only(store)).pull(image)
        assert result.bytes_resumed >= 1 << 20  # from the last checkpoint, not from zero
        out = cache.model_dir(record.digest)
        assert (out / "weights.bin").read_bytes() == (model / "weights.bin").read_bytes()
