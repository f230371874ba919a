"""Fleet scale: the source chain (Spegel, Dragonfly, mirrors, origin) and rollout waves.

The peers are stand-ins with the documented behaviour of Spegel's mirror and
Dragonfly's dfdaemon proxy (harness/peers.py); the origin is a real Distribution
registry whose own access log counts the blob bytes it served; the API and the
daemons are the real processes.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from harness.localregistry import LocalRegistry, free_port
from harness.models import make_sharded_model
from harness.peers import PeerStub, registry_blob
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.metrics import Metrics
from modelcar.cache_daemon.pull import Puller, PullOptions
from modelcar.cache_daemon.sources import parse_source
from modelcar.contract.nodecache import model_dir_name
from modelcar.format.image import load_model_image
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import assert_one_line_error, build, cache_cli, pull, run_cli, tree

MiB = 1 << 20


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A registry that logs every request, and a 4-layer model in it."""
    root = tmp_path_factory.mktemp("origin")
    with LocalRegistry(root / "reg", access_log=True) as reg:
        model = make_sharded_model(root / "model", shards=4, shard_size=2 * MiB)
        ref = build(model, f"{reg.host}/fleet/model:v1", "--plain-http")
        parsed = parse_ref(ref)
        image = load_model_image(open_store(parsed, StoreOptions(plain_http=True)), parsed)
        _facts[ref] = (
            [{"digest": d.digest, "size": d.size} for d in image.manifest.layers],
            image.manifest.config.size,
        )
        yield reg, ref, model


def _storage(reg: LocalRegistry) -> str:
    return str(reg.root / "storage")


_facts: dict[str, tuple[list[dict], int]] = {}


def _layers(reg: LocalRegistry, ref: str) -> list[dict]:
    """Every layer, the base's too (read once, before any byte is counted): the node
    fetches them all, so its containerd and its peers need nothing from the origin."""
    return _facts[ref][0]


def _config_size(reg: LocalRegistry, ref: str) -> int:
    return _facts[ref][1]


def _everything(reg: LocalRegistry):
    return lambda digest: registry_blob(_storage(reg), digest)


def test_spegel_serves_everything_and_the_origin_sends_no_blob(origin, tmp_path):
    reg, ref, model = origin
    before = reg.blob_bytes_served()
    with PeerStub("spegel", _everything(reg)) as spegel:
        _, result = pull(
            tmp_path / "cache", ref, "--plain-http", "--source", f"spegel={spegel.url}"
        )
    assert result is not None
    assert set(result["by_source"]) == {"spegel"}
    assert result["by_source"]["spegel"] == sum(d["size"] for d in _layers(reg, ref))
    assert reg.blob_bytes_served() == before  # config and layers: all from the peer
    assert tree(Path(result["path"])) == tree(model)
    blobs = spegel.blob_requests()
    assert blobs and all(s.query.get("ns") == [reg.host] for s in blobs)
    assert all("Authorization" not in s.headers for s in spegel.seen)


def test_a_miss_moves_on_at_once_and_range_resumes_on_the_next_source(origin, tmp_path):
    """Spegel holds nothing (404 each time); Dragonfly holds two layers and cuts the
    first one off half-way, so the origin resumes it at that byte."""
    reg, ref, model = origin
    layers = _layers(reg, ref)
    half = {layers[0]["digest"], layers[1]["digest"]}
    cut = {layers[0]["digest"]: layers[0]["size"] // 2}

    def dragonfly_holds(digest: str) -> bytes | None:
        return registry_blob(_storage(reg), digest) if digest in half else None

    before = reg.blob_bytes_served()
    with (
        PeerStub("spegel", lambda d: None) as spegel,
        PeerStub("dragonfly", dragonfly_holds, cut=cut) as dragonfly,
    ):
        started = time.monotonic()
        _, result = pull(
            tmp_path / "cache",
            ref,
            "--plain-http",
            "--jobs",
            "1",
            "--source",
            f"spegel={spegel.url}",
            "--source",
            f"dragonfly={dragonfly.url}",
            "--source",
            "origin",
        )
        took = time.monotonic() - started
    assert result is not None and tree(Path(result["path"])) == tree(model)
    total = sum(d["size"] for d in layers)
    by = result["by_source"]
    assert by["dragonfly"] == layers[0]["size"] // 2 + layers[1]["size"]
    assert by["origin"] == total - by["dragonfly"]
    assert "spegel" not in by
    # every layer was asked of spegel, which answered 404, and of nobody twice for it
    assert {s.path.rsplit("/", 1)[1] for s in spegel.blob_requests()} >= {
        d["digest"] for d in layers
    }
    assert all(s.status == 404 for s in spegel.blob_requests())
    assert all(
        s.headers.get("X-Dragonfly-Registry") == f"http://{reg.host}" for s in dragonfly.seen
    )
    # the origin sent exactly the rest: the cut layer from its half (a Range request)
    assert reg.blob_bytes_served() - before == by["origin"] + _config_size(reg, ref)
    assert took < 60  # no backoff spent on misses (bounded, not a benchmark)


def test_bad_bytes_from_a_peer_drop_it_for_the_layer_and_are_counted(origin, tmp_path):
    reg, ref, model = origin
    layers = _layers(reg, ref)
    metrics = Metrics()
    before = reg.blob_bytes_served()
    with PeerStub("spegel", _everything(reg), corrupt=True) as spegel:
        options = PullOptions(
            jobs=2,
            sources=[parse_source(f"spegel={spegel.url}")],
            store=StoreOptions(plain_http=True),
        )
        with CacheDir(tmp_path / "cache") as cache:
            result = Puller(cache, options, metrics=metrics).pull(ref)
    assert tree(Path(result.path)) == tree(model)
    total = sum(d["size"] for d in layers)
    assert result.by_source["origin"] == total  # every layer again, whole, from the origin
    assert reg.blob_bytes_served() - before >= total
    bad = metrics.registry.get_sample_value(
        "modelcar_cache_source_bad_bytes_total", {"source": "spegel"}
    )
    assert bad == len(layers)
    assert (
        metrics.registry.get_sample_value("modelcar_cache_source_bytes_total", {"source": "origin"})
        == total
    )


def test_origin_credentials_never_reach_a_peer_unless_it_is_told_to(auth_registry, tmp_path):
    reg = auth_registry
    config = reg.docker_config(tmp_path / "auth")
    model = make_sharded_model(tmp_path / "model", shards=2, shard_size=MiB + 1)
    env = {"DOCKER_CONFIG": str(config)}
    ref = run_cli(
        "build",
        str(model),
        f"{reg.host}/fleet/private:v1",
        "-q",
        "--large-file-threshold",
        "1MiB",
        "--ca-file",
        str(reg.ca_file),
        env=env,
    ).last_line
    storage = str(reg.registry.root / "storage")
    layer_digests = set()

    def second_layer_only(digest: str) -> bytes | None:
        return registry_blob(storage, digest) if digest in layer_digests else None

    with (
        PeerStub("spegel", lambda d: None) as spegel,
        PeerStub("dragonfly", lambda d: None) as plain_df,
    ):
        _, result = pull(
            tmp_path / "c1",
            ref,
            "--ca-file",
            str(reg.ca_file),
            "--docker-config",
            str(config),
            "--source",
            f"spegel={spegel.url}",
            "--source",
            f"dragonfly={plain_df.url}",
        )
    assert result is not None and result["by_source"] == {"origin": result["bytes_fetched"]}
    assert spegel.blob_requests() and plain_df.blob_requests()
    for seen in spegel.seen + plain_df.seen:
        assert "Authorization" not in seen.headers, seen.path
    expected = "Basic " + base64.b64encode(f"{reg.user}:{reg.password}".encode()).decode()
    layer_digests.update(r.path.rsplit("/", 1)[1] for r in plain_df.blob_requests())
    with PeerStub("dragonfly", second_layer_only) as trusted_df:
        _, result = pull(
            tmp_path / "c2",
            ref,
            "--ca-file",
            str(reg.ca_file),
            "--docker-config",
            str(config),
            "--source",
            f"dragonfly={trusted_df.url},credentials",
        )
    assert result is not None and set(result["by_source"]) == {"dragonfly"}
    assert tree(Path(result["path"])) == tree(model)
    assert trusted_df.blob_requests()
    assert all(s.headers.get("Authorization") == expected for s in trusted_df.blob_requests())
    assert all(
        s.headers.get("X-Dragonfly-Registry") == f"https://{reg.host}" for s in trusted_df.seen
    )


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--source", "neighbour=http://x:1"], ["invalid --source", "spegel, dragonfly"]),
        (["--source", "peer=http://x:1"], ["peer source needs the fleet credential"]),
        (["--source", "nodes=http://x:1"], ["nodes source takes no URL"]),
        (["--source", "peer=http://x:1,credentials"], ["a peer gets the fleet credential"]),
        (["--source", "origin", "--source", "spegel=http://x:1"], ["origin source comes once"]),
        (["--source", "spegel"], ["spegel source needs a URL"]),
        (["--source", "spegel=ftp://x"], ["invalid --source", "http(s)://HOST"]),
        (["--source", "spegel=http://$NO_SUCH_VAR:1"], ["names $NO_SUCH_VAR, which is not set"]),
        (["--source", "mirror=http://x:1,credentials"], ["mirror uses its own credentials"]),
        (["--source", "dragonfly=http://x:1,tokens"], ["unknown source option"]),
    ],
)
def test_a_bad_chain_is_one_line(tmp_path, args, needles):
    ref = "127.0.0.1:1/m@sha256:" + "a" * 64
    r = cache_cli("pull", ref, "--cache-dir", str(tmp_path / "c"), *args, check=False)
    assert_one_line_error(r, *needles)


# --- rollout waves -----------------------------------------------------------------

NODES = 10
K = 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the leases: both, below
def test_rollout_waves_feed_the_fleet_from_the_nodes_own_endpoints(origin, make_api, tmp_path):
    """10 daemons (`run --serve`, a cache dir and an endpoint each, the `nodes` source)
    under a policy with origin_concurrency 2: the leased nodes pull from the origin, the
    others from the nodes that hold each layer (finished layers of pulls in progress
    included), found through the API. Nothing but the daemons serves a byte: the
    origin sends at most 2 × the model, and every node's tree is the model's."""
    reg, ref, model = origin
    api = make_api(stale_after=60)
    admin = api.client(api.admin)
    digest = ref.split("@")[1]
    repo = ref.split("@")[0]
    layers = _layers(reg, ref)
    size = sum(d["size"] for d in layers)
    config_size = _config_size(reg, ref)
    parsed = parse_ref(ref)
    image = load_model_image(open_store(parsed, StoreOptions(plain_http=True)), parsed)
    base = {d.digest: d.size for d in image.manifest.layers} | {}
    for d in layers:
        base.pop(d["digest"])
    r = admin.post(
        "/v1/models/fleet/versions",
        json={"digest": digest, "repository": repo, "size": size, "file_count": 4},
    )
    assert r.status_code == 201, r.text
    rollout = {"origin_concurrency": K, "wave_timeout": "3m"}
    r = admin.put("/v1/policies/gpus", json={"models": ["fleet:1"], "rollout": rollout})
    assert r.status_code == 200, r.text
    fleet_token = tmp_path / "fleet-token"
    fleet_token.write_text("fleet-0123456789abcdef-token\n")
    caches = [tmp_path / f"node-{i:02d}" for i in range(NODES)]
    ports = [free_port() for _ in range(NODES)]
    layer_digests = {d["digest"] for d in layers}
    before = reg.blob_bytes_served()
    layers_before = reg.blob_bytes_served(layer_digests | set(base))
    procs = []
    try:
        for i, cache in enumerate(caches):
            node = f"node-{i:02d}"
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "modelcar.cache_daemon.cli",
                        "run",
                        "--node",
                        node,
                        "--api",
                        api.url,
                        "--cache-dir",
                        str(cache),
                        "--source",
                        "nodes",
                        "--serve",
                        f"127.0.0.1:{ports[i]}",
                        "--fleet-token-file",
                        str(fleet_token),
                        "--plain-http",
                        "--listen",
                        "",
                        "--interval",
                        "0.5",
                        "--label",
                        "gpu=yes",
                        "--label",
                        f"topology.kubernetes.io/zone=z{i % 2}",
                    ],
                    env={**os.environ, "MODELCAR_API_TOKEN": api.token("node", node, node)},
                    stdout=subprocess.DEVNULL,
                    stderr=open(tmp_path / f"{node}.log", "wb"),
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            state = admin.get("/v1/models/fleet/versions/1/rollout").json()
            if state["ready"] == NODES or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.5)
        # the endpoints serve only the fleet: an anonymous request is refused
        anon = httpx.get(
            f"http://127.0.0.1:{ports[0]}/v2/x/blobs/{layers[0]['digest']}", timeout=60
        )
        assert anon.status_code == 401
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
    logs = {i: (tmp_path / f"node-{i:02d}.log").read_text()[-800:] for i in range(NODES)}
    want = tree(model)
    for cache in caches:
        assert tree(cache / "models" / model_dir_name(digest)) == want, logs
    origin_bytes = reg.blob_bytes_served() - before
    origin_layers = reg.blob_bytes_served(layer_digests | set(base)) - layers_before
    image_bytes = size + sum(base.values())
    # layers (the base's too): at most K copies, counted by the registry itself;
    # besides them only manifests' and configs' kilobytes
    assert size <= origin_layers <= K * image_bytes, (origin_layers, image_bytes)
    assert origin_bytes - origin_layers <= NODES * config_size
    state = admin.get("/v1/models/fleet/versions/1/rollout").json()
    assert state["ready"] == NODES and state["leases"] == []
    # the daemons' own count (base layers included) agrees
    assert state["bytes_from_origin"] <= K * image_bytes
    assert state["bytes_from_origin"] + state["bytes_from_peers"] == NODES * image_bytes
    assert set(state["bytes_by_source"]) <= {"origin", "nodes"}
    full = [(tmp_path / f"node-{i:02d}.log").read_text() for i in range(NODES)]
    assert "Traceback" not in "".join(full)
    leases = sum(log.count('"event": "lease"') for log in full)
    assert leases >= 1
    print(
        json.dumps(
            {
                "nodes": NODES,
                "origin_bytes": origin_bytes,
                "origin_layers_and_base": origin_layers,
                "model_bytes": size,
                "K": K,
                "by_source": state["bytes_by_source"],
                "leases": leases,
            }
        )
    )


def test_leases_are_capped_renewed_by_reports_and_freed_when_a_node_goes_quiet(make_api):
    api = make_api(stale_after=2)
    admin = api.client(api.admin)
    digest = "sha256:" + "b" * 64
    r = admin.post(
        "/v1/models/big/versions",
        json={"digest": digest, "repository": "registry.example/big", "size": 10},
    )
    assert r.status_code == 201, r.text
    admin.put(
        "/v1/policies/all",
        json={"models": ["big:1"], "rollout": {"origin_concurrency": 1, "wave_timeout": 30}},
    )
    a = api.client(api.token("node", "a", "a"))
    b = api.client(api.token("node", "b", "b"))
    status = {"models": [{"digest": digest, "state": "pulling"}]}
    assert a.put("/v1/nodes/a/status", json=status).status_code == 200
    assert b.put("/v1/nodes/b/status", json=status).status_code == 200
    got_a = a.post("/v1/nodes/a/leases", json={"digest": digest}).json()
    got_b = b.post("/v1/nodes/b/leases", json={"digest": digest}).json()
    assert got_a["granted"] and got_a["limit"] == 1
    assert not got_b["granted"] and got_b["holders"] == ["a"] and got_b["retry_after"] > 0
    # a node cannot take or give back another node's lease
    assert b.post("/v1/nodes/a/leases", json={"digest": digest}).status_code == 403
    assert b.delete(f"/v1/nodes/a/leases/{digest}").status_code == 403
    # a goes quiet: once stale, its lease is free for b
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        b.put("/v1/nodes/b/status", json=status)
        if b.post("/v1/nodes/b/leases", json={"digest": digest}).json()["granted"]:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the quiet node's lease never expired")
    # b reports the model ready: its lease ends with that report
    b.put("/v1/nodes/b/status", json={"models": [{"digest": digest, "state": "ready"}]})
    assert admin.get("/v1/models/big/versions/1/rollout").json()["leases"] == []
    # bad input: a JSON error, never a 500
    assert a.post("/v1/nodes/a/leases", json={"digest": "nope"}).status_code == 422
    assert (
        admin.put(
            "/v1/policies/all", json={"models": ["big:1"], "rollout": {"origin_concurrency": 0}}
        ).status_code
        == 422
    )
    assert (
        admin.put(
            "/v1/policies/all",
            json={
                "models": ["big:1"],
                "rollout": {"origin_concurrency": 1, "wave_timeout": "10 minutes"},
            },
        ).status_code
        == 422
    )
    # no rollout: every lease is granted, with no limit
    admin.put("/v1/policies/all", json={"models": ["big:1"]})
    free = a.post("/v1/nodes/a/leases", json={"digest": digest}).json()
    assert free["granted"] and free["limit"] is None


def test_the_chain_from_the_config_file(origin, tmp_path):
    """`sources:` in --config (strings or mappings), used by `run` when no --source."""
    reg, ref, model = origin
    with PeerStub("spegel", _everything(reg)) as spegel:
        config = tmp_path / "node.yaml"
        config.write_text(
            json.dumps(
                {"models": [ref], "sources": [{"kind": "spegel", "url": spegel.url}, "origin"]}
            )
        )
        r = cache_cli(
            "run",
            "--once",
            "--node",
            "n1",
            "--config",
            str(config),
            "--cache-dir",
            str(tmp_path / "c"),
            "--plain-http",
            "--listen",
            "",
        )
        assert r.code == 0, r.stderr
        assert spegel.blob_requests() and all(s.status == 200 for s in spegel.blob_requests())
    (published,) = (tmp_path / "c" / "models").iterdir()
    assert tree(published) == tree(model)
    config.write_text(json.dumps({"models": [ref], "sources": [{"kind": "neighbour", "url": "x"}]}))
    bad = cache_cli(
        "run",
        "--once",
        "--node",
        "n1",
        "--config",
        str(config),
        "--cache-dir",
        str(tmp_path / "c"),
        "--listen",
        "",
        check=False,
    )
    assert_one_line_error(bad, "invalid source in --config", str(config), "kind: Input should be")
