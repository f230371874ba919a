"""Peers: the `nodes` source over real node endpoints (BlobServer on real cache dirs).

A peer that serves bad bytes (its file rotted after it was published) is dropped and
counted, and the pull goes on from another; a peer killed mid-layer hands over to the
next at the same byte; a busy node answers 429 with Retry-After.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from harness.endpoint import Endpoint
from harness.localregistry import LocalRegistry
from harness.models import make_sharded_model
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.metrics import Metrics
from modelcar.cache_daemon.pull import Puller, PullOptions
from modelcar.cache_daemon.serve import BlobServer
from modelcar.cache_daemon.sources import Fleet, parse_source
from modelcar.contract.nodecache import model_dir_name
from modelcar.contract.wire import BlobHolder
from modelcar.http.body import StallRule
from modelcar.oci.store import StoreOptions
from tests.helpers import build, pull, tree

MiB = 1 << 20
TOKEN = "fleet-token-0123456789abcdef"
ZONE = "topology.kubernetes.io/zone"


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    root = tmp_path_factory.mktemp("peers-origin")
    with LocalRegistry(root / "reg", access_log=True) as reg:
        model = make_sharded_model(root / "model", shards=2, shard_size=4 * MiB)
        ref = build(model, f"{reg.host}/peers/model:v1", "--plain-http")
        yield reg, ref, model


def _holder(name: str, server: BlobServer | str, zone: str) -> BlobHolder:
    url = server if isinstance(server, str) else f"http://127.0.0.1:{server.port}"
    return BlobHolder(node=name, url=url, ready=True, labels={ZONE: zone})


def _puller(
    cache: CacheDir,
    holders: list[BlobHolder],
    metrics=None,
    stall=None,
    origin_last: bool = False,
    **options,
) -> Puller:
    fleet = Fleet(
        token=TOKEN,
        holders=lambda digest: holders,
        node="me",
        labels=lambda: {ZONE: "near"},
    )
    return Puller(
        cache,
        PullOptions(
            sources=[parse_source("nodes"), *([parse_source("origin")] if origin_last else [])],
            store=StoreOptions(plain_http=True, **({"stall": stall} if stall else {})),
            fleet=fleet,
            **options,
        ),
        metrics=metrics,
    )


def _filled(tmp_path: Path, name: str, ref: str) -> Path:
    cache = tmp_path / name
    pull(cache, ref, "--plain-http")
    return cache


def test_bad_bytes_from_a_peer_drop_that_peer_and_the_next_one_serves(origin, tmp_path):
    """The nearest peer's copy rotted on disk after it was verified: the layer it
    regenerates fails its digest at the puller, that peer is never asked again, the
    bad bytes are counted, and another peer serves the layer: no byte from the origin."""
    reg, ref, model = origin
    digest = ref.split("@")[1]
    rotten, good = _filled(tmp_path, "rotten", ref), _filled(tmp_path, "good", ref)
    shard = next((rotten / "models" / model_dir_name(digest)).rglob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with CacheDir.reader(rotten) as a, CacheDir.reader(good) as b:
        bad_server = BlobServer(a, "127.0.0.1", 0, TOKEN).start()
        good_server = BlobServer(b, "127.0.0.1", 0, TOKEN).start()
        try:
            holders = [_holder("rotten", bad_server, "near"), _holder("good", good_server, "far")]
            metrics = Metrics()
            before = reg.blob_bytes_served()
            with CacheDir(tmp_path / "me") as cache:
                result = _puller(cache, holders, metrics).pull(ref, origin=False)
                assert tree(Path(result.path)) == tree(model)
            assert reg.blob_bytes_served() == before
            assert bad_server.bytes_served > 0 and good_server.bytes_served > 0
            assert (
                metrics.registry.get_sample_value(
                    "modelcar_cache_source_bad_bytes_total", {"source": "nodes"}
                )
                == 1
            )
        finally:
            bad_server.stop()
            good_server.stop()


@pytest.mark.parametrize("how", ["killed", "stalled"])
def test_a_peer_lost_mid_layer_hands_over_to_the_next_at_the_same_byte(origin, tmp_path, how):
    """Killed (connection reset) or stalled (SIGSTOP: the stall rule ends the wait):
    the next peer goes on at the byte reached; nothing is fetched twice."""
    _reg, ref, model = origin
    first, second = _filled(tmp_path, "first", ref), _filled(tmp_path, "second", ref)
    endpoint = Endpoint(first, TOKEN, tmp_path / "token")
    url, proc = endpoint.url, endpoint.proc
    with CacheDir.reader(second) as b:
        other = BlobServer(b, "127.0.0.1", 0, TOKEN).start()
        try:
            holders = [_holder("first", url, "near"), _holder("second", other, "far")]
            with CacheDir(tmp_path / "me") as cache:
                # slow enough (2 MiB/s over 8 MiB) that the first peer dies mid-layer
                stall = StallRule(window=3.0, min_speed=16 << 10)
                puller = _puller(cache, holders, jobs=1, max_rate=2 * MiB, stall=stall)
                sig = signal.SIGKILL if how == "killed" else signal.SIGSTOP
                done = threading.Event()

                def lose_the_first_peer_mid_layer() -> None:
                    """Once a model file has 1 MiB staged (a condition, not a clock: a
                    loaded machine starts the pull later), the first peer goes."""
                    deadline = time.monotonic() + 120
                    while not done.wait(0.05) and time.monotonic() < deadline:
                        staged = cache.root / "staging"
                        if any(f.stat().st_size >= MiB for f in staged.rglob("*.safetensors")):
                            proc.send_signal(sig)
                            return

                killer = threading.Thread(target=lose_the_first_peer_mid_layer, daemon=True)
                killer.start()
                try:
                    result = puller.pull(ref, origin=False)
                finally:
                    done.set()
                    killer.join()
                assert tree(Path(result.path)) == tree(model)
            if how == "stalled":
                proc.kill()
            assert proc.wait(timeout=30) == -signal.SIGKILL
            # the second peer sent only what the first had not: less than the model
            size = sum(f.stat().st_size for f in model.rglob("*") if f.is_file())
            assert 0 < other.bytes_served < size
            assert result.by_source == {"nodes": result.bytes_fetched}
        finally:
            other.stop()
            if proc.poll() is None:
                proc.kill()


def test_a_busy_node_answers_429_with_retry_after(tmp_path):
    """One transfer at a time: a second client is sent elsewhere at once."""
    with LocalRegistry(tmp_path / "reg") as reg:
        model = tmp_path / "big"
        model.mkdir()
        with open(model / "big.bin", "wb") as f:
            f.write(os.urandom(64 * MiB))
        ref = build(model, f"{reg.host}/busy/model:v1", "--plain-http")
        cache = _filled(tmp_path, "cache", ref)
    with CacheDir.reader(cache) as c:
        server = BlobServer(c, "127.0.0.1", 0, TOKEN, max_uploads=1).start()
        try:
            layer = next(
                "sha256:" + p.name.split(".")[0]
                for p in c.served_records()
                if '"tar"' in p.read_text()
            )
            url = f"http://127.0.0.1:{server.port}/v2/busy/model/blobs/{layer}"
            auth = {"Authorization": f"Bearer {TOKEN}"}
            with httpx.stream("GET", url, headers=auth, timeout=60) as held:
                assert held.status_code == 200
                chunks = held.iter_raw(1024)  # kept: a dropped iterator closes the stream
                next(chunks)  # the transfer is under way, and held
                busy = httpx.get(url, headers=auth, timeout=60)
                assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
                assert server.busy_refusals == 1
            deadline = time.monotonic() + 60  # once the first ends, the slot is free
            while (r := httpx.get(url, headers=auth, timeout=60)).status_code == 429:
                assert time.monotonic() < deadline
                time.sleep(0.2)
            assert r.status_code == 200 and len(r.content) > 64 * MiB
        finally:
            server.stop()


@pytest.mark.parametrize("kind", ["dragonfly", "spegel", "peer"])
def test_a_peer_that_errors_is_a_miss_so_a_wave_waits_instead_of_failing(origin, tmp_path, kind):
    """Without an origin lease, a dfdaemon (or Spegel, or a peer) that answers with an
    error leaves the layer missing (the daemon then waits for a peer or a lease); the
    pull is not failed and what was staged stays."""
    from harness.peers import PeerStub
    from modelcar.cache_daemon.blobstream import SourcesMissed

    _reg, ref, _model = origin
    with PeerStub(kind if kind != "peer" else "spegel", lambda d: None, status=500) as stub:
        options = PullOptions(
            sources=[parse_source(f"{kind}={stub.url}")],
            store=StoreOptions(plain_http=True),
            fleet=Fleet(token=TOKEN),
        )
        with CacheDir(tmp_path / "me") as cache:
            with pytest.raises(SourcesMissed):
                Puller(cache, options).pull(ref, origin=False)
            assert cache.db.get(ref.split("@")[1]).state != "failed"
    assert any(s.status == 500 for s in stub.seen)


def test_busy_holders_are_waited_for_and_never_replaced_by_the_origin(tmp_path):
    """A leased node (the origin in its chain) whose only holder is serving its fan-out
    does not take the layer from the origin: the pull ends PeersBusy (the daemon keeps
    its lease and asks again); once the holder is free, it all comes from the holder."""
    from modelcar.cache_daemon.blobstream import PeersBusy

    with LocalRegistry(tmp_path / "reg", access_log=True) as reg:
        model = tmp_path / "big"
        model.mkdir()
        with open(model / "big.bin", "wb") as f:
            f.write(os.urandom(64 * MiB))
        ref = build(model, f"{reg.host}/busy/model:v1", "--plain-http")
        holder_cache = _filled(tmp_path, "holder", ref)
        with CacheDir.reader(holder_cache) as c:
            server = BlobServer(c, "127.0.0.1", 0, TOKEN, max_uploads=1).start()
            try:
                layers = {
                    "sha256:" + p.name.split(".")[0]
                    for p in c.served_records()
                    if '"tar"' in p.read_text()
                }
                (layer,) = layers
                url = f"http://127.0.0.1:{server.port}/v2/busy/model/blobs/{layer}"
                auth = {"Authorization": f"Bearer {TOKEN}"}
                before = reg.blob_bytes_served(layers)
                holders = [_holder("holder", server, "near")]
                with CacheDir(tmp_path / "me") as cache:
                    with httpx.stream("GET", url, headers=auth, timeout=60) as held:
                        chunks = held.iter_raw(1024)
                        next(chunks)  # the holder's one slot is taken
                        with pytest.raises(PeersBusy):
                            _puller(cache, holders, origin_last=True).pull(ref)
                    assert reg.blob_bytes_served(layers) == before  # not a byte of it
                    deadline = time.monotonic() + 60  # the slot frees once that stream ends
                    while True:
                        try:
                            result = _puller(cache, holders, origin_last=True).pull(ref)
                            break
                        except PeersBusy:
                            assert time.monotonic() < deadline
                            time.sleep(0.5)
                    assert tree(Path(result.path)) == tree(model)
                assert reg.blob_bytes_served(layers) == before
                assert result.by_source["nodes"] >= 64 * MiB
                assert result.by_source.get("origin", 0) < MiB  # the base layer at most
            finally:
                server.stop()


def test_a_flood_of_idle_connections_is_bounded(tmp_path):
    """Connections are a thread each: past the bound the node answers 503 and closes,
    and serves again once they go."""
    import socket

    with CacheDir(tmp_path / "c") as cache:
        server = BlobServer(cache, "127.0.0.1", 0, TOKEN, max_connections=2).start()
        idle = []
        try:
            for _ in range(2):
                idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=30))
            deadline = time.monotonic() + 60  # the two idle ones hold both slots
            while True:
                third = socket.create_connection(("127.0.0.1", server.port), timeout=30)
                third.settimeout(1)  # a probe: no answer yet means a slot was still free
                try:
                    answer = third.recv(200)
                except TimeoutError:
                    answer = b""
                third.close()
                if answer.startswith(b"HTTP/1.1 503"):
                    break
                assert time.monotonic() < deadline
                time.sleep(0.1)
            for s in idle:
                s.close()
            deadline = time.monotonic() + 60
            url = f"http://127.0.0.1:{server.port}/v2/"
            auth = {"Authorization": f"Bearer {TOKEN}"}
            while httpx.get(url, headers=auth, timeout=60).status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            for s in idle:
                s.close()
            server.stop()
