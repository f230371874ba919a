"""The cache's pure parts: journal replay, the rate limiter, the budget and LRU."""

from __future__ import annotations

import os
import time

import pytest

from modelcar.cache_daemon.blobstream import RateLimiter
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.evict import Budget, Evictor, InsufficientSpace
from modelcar.cache_daemon.journal import LayerJournal

MiB = 1 << 20


def _journal_a_layer(tmp_path, checkpoint_after: int, torn: bytes = b""):
    """Journal a layer of [header][file a: 10 bytes][header][file b: 6 bytes] as the
    puller does, with one checkpoint; return (journal path, staging, layer bytes)."""
    staging = tmp_path / "staging"
    staging.mkdir()
    h1, a, h2, b = b"H" * 512, b"0123456789", b"J" * 512, b"abcdef"
    layer = h1 + a + h2 + b
    j = LayerJournal(tmp_path / "journal", staging)
    j.open()
    j.raw(0, h1)
    j.file_start(512, "a.bin", len(a))
    (staging / "a.bin").write_bytes(a)
    j.raw(522, h2)
    j.file_start(1034, "b.bin", len(b))
    (staging / "b.bin").write_bytes(b)
    fd = os.open(staging / "b.bin", os.O_RDONLY)
    j.checkpoint(checkpoint_after, fd)
    os.close(fd)
    j.raw(1040, b"after the checkpoint")
    j.close()
    if torn:
        with open(tmp_path / "journal", "ab") as f:
            f.write(torn)
    return tmp_path / "journal", staging, layer


@pytest.mark.parametrize("torn", [b"", b'{"at":9,"raw":"QUJD'], ids=["clean", "torn-tail"])
def test_a_journal_replays_the_verified_prefix_from_disk(tmp_path, torn):
    path, staging, layer = _journal_a_layer(tmp_path, checkpoint_after=1040, torn=torn)
    j = LayerJournal(path, staging)
    assert j.load() == 1040
    replay = j.replay()
    out = b""
    while block := replay.read(100):
        out += block
    assert out == layer[:1040]
    assert b"after the checkpoint" not in path.read_bytes()  # truncated to the checkpoint


def test_a_staged_file_shorter_than_its_journal_restarts_the_layer(tmp_path):
    path, staging, _ = _journal_a_layer(tmp_path, checkpoint_after=1040)
    (staging / "a.bin").write_bytes(b"0123")
    j = LayerJournal(path, staging)
    j.load()
    replay = j.replay()
    with pytest.raises(OSError, match="shorter"):
        while replay.read(1 << 16):
            pass


def test_the_rate_limiter_holds_the_average_and_allows_one_second_of_burst():
    limiter = RateLimiter(4 * MiB)
    started = time.monotonic()
    limiter.consume(4 * MiB)  # the burst: free
    assert time.monotonic() - started < 0.2
    for _ in range(4):
        limiter.consume(MiB // 2)  # 2 MiB more at 4 MiB/s: about half a second
    assert 0.35 < time.monotonic() - started < 1.5
    RateLimiter(None).consume(1 << 40)  # no limit: no wait


def _published(cache: CacheDir, n: int, size: int) -> str:
    digest = "sha256:" + f"{n:064x}"
    (cache.model_dir(digest)).mkdir(parents=True)
    cache.db.set(digest, image=f"r/m@{digest}", state="ready", size=size, used=True)
    return digest


def test_eviction_takes_the_least_recently_used_unassigned_models_first(tmp_path):
    with CacheDir(tmp_path / "cache") as cache:
        a, b, c = (_published(cache, i, 3 * MiB) for i in (1, 2, 3))
        time.sleep(0.01)
        cache.db.set(a, used=True)  # a used last; b is the least recently used
        assigned = {c}
        evictor = Evictor(cache, Budget(max_bytes=10 * MiB, high=0.9, low=0.5), lambda: assigned)
        evictor.make_room("sha256:" + "f" * 64, 3 * MiB)  # 9 + 3 > 9: evict down to 5
        states = {r.digest: r.state for r in cache.db.all()}
        assert states[b] == "evicted" and states[a] == "evicted" and states[c] == "ready"
        assert not cache.model_dir(b).exists() and cache.model_dir(c).exists()


def test_assigned_models_are_never_evicted_and_a_model_that_cannot_fit_fails(tmp_path):
    with CacheDir(tmp_path / "cache") as cache:
        a, b = (_published(cache, i, 4 * MiB) for i in (1, 2))
        evictor = Evictor(cache, Budget(max_bytes=9 * MiB), lambda: {a, b})
        with pytest.raises(InsufficientSpace, match="insufficient space"):
            evictor.make_room("sha256:" + "f" * 64, 4 * MiB)
        assert {r.state for r in cache.db.all()} == {"ready"}


def test_collect_evicts_above_the_high_watermark_down_to_the_low_one(tmp_path):
    with CacheDir(tmp_path / "cache") as cache:
        digests = [_published(cache, i, 2 * MiB) for i in range(1, 6)]  # 10 MiB
        evictor = Evictor(cache, Budget(max_bytes=10 * MiB, high=0.9, low=0.6), set)
        evicted = evictor.collect()
        assert evicted == digests[:2]  # LRU first, down to 6 MiB
        assert evictor.collect() == []


def test_only_model_dirs_count_as_staged_or_published_not_journals_or_strays(tmp_path):
    hex_ = "ab" * 32
    with CacheDir(tmp_path / "cache") as cache:
        for sub in ("staging", "models"):
            (cache.root / sub / f"sha256-{hex_}").mkdir()
            (cache.root / sub / f"sha256-{hex_}.journal").mkdir()  # a pull's journal
            (cache.root / sub / "sha256-not-a-digest").mkdir()
            (cache.root / sub / f"sha256-{'cd' * 32}").write_text("a file")
        assert cache.staged() == cache.published() == [f"sha256:{hex_}"]


def test_a_cache_dir_from_before_the_node_served_counts_no_blobs(tmp_path):
    """Read beside its daemon, an older cache dir (no blobs/ or served/) is not an error."""
    from modelcar.cache_daemon.cachedir import CacheDir
    from modelcar.cache_daemon.served import Served

    CacheDir(tmp_path / "c").open().close()
    (tmp_path / "c" / "blobs").rmdir()
    (tmp_path / "c" / "served").rmdir()
    reader = CacheDir.reader(tmp_path / "c")
    try:
        assert reader.blob_bytes() == 0
        assert Served(reader).open("sha256:" + "0" * 64) is None
        assert Served(reader).held("sha256:" + "1" * 64) == []
    finally:
        reader.close()
