"""Node status, staleness, cache policies and assignments."""

from __future__ import annotations

import time

from tests.helpers import digest, error_of, register


def _status(c, node, models, labels=None, **extra):
    body = {"models": models, "labels": labels or {}, **extra}
    return c.put(f"/v1/nodes/{node}/status", json=body)


def _ready(seed):
    return {"digest": digest(seed), "state": "ready", "bytes_done": 10, "bytes_total": 10}


def test_status_reports_show_where_models_are_ready(api):
    c = api.client(api.admin)
    register(c, "m", 1)
    register(c, "m", 2)
    c.put("/v1/models/m/aliases/prod", json={"version": 1})
    pulling = {"digest": digest(2), "state": "pulling", "bytes_done": 5, "bytes_total": 10}
    disk = {"used_bytes": 10, "capacity_bytes": 1000, "budget_bytes": 500}
    r = _status(c, "gpu-1", [_ready(1), pulling], {"pool": "a100"}, disk=disk, cache_root="/c")
    assert r.status_code == 200, r.text
    node = r.json()
    assert node["ready"] == 1 and node["stale"] is False and node["disk"]["budget_bytes"] == 500
    assert _status(c, "gpu-2", [_ready(1)]).status_code == 200
    failed = {"digest": digest(1), "state": "failed", "error": "disk full"}
    _status(c, "gpu-3", [failed])

    assert c.get("/v1/resolve/m@prod").json()["nodes_ready"] == ["gpu-1", "gpu-2"]
    assert c.get("/v1/resolve/m:2").json()["nodes_ready"] == []
    versions = c.get("/v1/models/m").json()["versions"]
    assert versions[0]["nodes_ready"] == ["gpu-1", "gpu-2"]
    assert versions[0]["aliases"] == ["prod"]

    nodes = c.get("/v1/nodes").json()
    assert [n["name"] for n in nodes] == ["gpu-1", "gpu-2", "gpu-3"]
    one = c.get("/v1/nodes/gpu-1").json()
    assert one["labels"] == {"pool": "a100"} and one["cache_root"] == "/c"
    assert {m["digest"]: m["state"] for m in one["models"]} == {
        digest(1): "ready",
        digest(2): "pulling",
    }
    assert c.get("/v1/nodes/gpu-3").json()["models"][0]["error"] == "disk full"

    # a report replaces the last one: an evicted model is no longer ready there
    _status(c, "gpu-2", [{"digest": digest(1), "state": "evicted"}])
    assert c.get("/v1/resolve/m@prod").json()["nodes_ready"] == ["gpu-1"]
    _status(c, "gpu-1", [])
    assert c.get("/v1/nodes/gpu-1").json()["models"] == []
    assert c.get("/v1/nodes/nope").status_code == 404


def test_silent_nodes_turn_stale_and_do_not_count(make_api):
    api = make_api(stale_after=0.5)
    c = api.client(api.admin)
    register(c, "m", 1)
    _status(c, "gpu-1", [_ready(1)])
    assert c.get("/v1/resolve/m:1").json()["nodes_ready"] == ["gpu-1"]
    deadline = time.monotonic() + 10
    while c.get("/v1/nodes/gpu-1").json()["stale"] is False:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert c.get("/v1/resolve/m:1").json()["nodes_ready"] == []
    assert c.get("/v1/nodes").json()[0]["ready"] == 0
    _status(c, "gpu-1", [_ready(1)])  # reporting again makes it fresh
    assert c.get("/v1/resolve/m:1").json()["nodes_ready"] == ["gpu-1"]


def test_policies_assign_models_and_follow_aliases(api):
    c = api.client(api.admin)
    for seed in (1, 2):
        register(c, "llama", seed, size=100 * seed)
    register(c, "bert", "bert-1")
    c.put("/v1/models/llama/aliases/prod", json={"version": 1})
    r = c.put(
        "/v1/policies/a100",
        json={"models": ["llama@prod", "bert:1"], "node_selector": {"gpu": "a100"}},
    )
    assert r.status_code == 200, r.text
    c.put("/v1/policies/everywhere", json={"models": ["llama@prod"]})

    got = c.get("/v1/nodes/gpu-1/assignments", params={"labels": "gpu=a100,zone=x"}).json()
    by_name = {a["name"]: a for a in got["models"]}
    assert set(by_name) == {"llama", "bert"}
    assert by_name["llama"]["digest"] == digest(1) and by_name["llama"]["size"] == 100
    assert by_name["llama"]["policies"] == ["a100", "everywhere"]
    assert by_name["llama"]["image"].endswith("@" + digest(1))

    other = c.get("/v1/nodes/cpu-1/assignments", params={"labels": "gpu=none"}).json()
    assert [a["name"] for a in other["models"]] == ["llama"]

    # moving prod re-targets every node at its next poll
    c.put("/v1/models/llama/aliases/prod", json={"version": 2})
    got = c.get("/v1/nodes/gpu-1/assignments", params={"labels": "gpu=a100"}).json()
    assert {a["digest"] for a in got["models"]} == {digest(2), digest("bert-1")}

    # without labels, the labels of the node's last report count
    _status(c, "gpu-9", [], {"gpu": "a100"})
    assert len(c.get("/v1/nodes/gpu-9/assignments").json()["models"]) == 2

    # an alias that goes away is reported, not fatal
    c.delete("/v1/models/llama/aliases/prod")
    got = c.get("/v1/nodes/gpu-1/assignments", params={"labels": "gpu=a100"}).json()
    assert [a["name"] for a in got["models"]] == ["bert"]
    assert {u["ref"] for u in got["unresolved"]} == {"llama@prod"}

    assert [p["name"] for p in c.get("/v1/policies").json()] == ["a100", "everywhere"]
    assert c.get("/v1/policies/a100").json()["node_selector"] == {"gpu": "a100"}
    assert c.delete("/v1/policies/everywhere").status_code == 204
    assert c.get("/v1/policies/everywhere").status_code == 404


def test_policy_input_is_checked(api):
    c = api.client(api.admin)
    register(c, "m", 1)
    unknown = c.put("/v1/policies/p", json={"models": ["ghost@prod"]})
    assert unknown.status_code == 409 and "ghost" in error_of(unknown)["message"]
    assert c.put("/v1/policies/p", json={"models": ["m"]}).status_code == 422
    bad_label = c.put("/v1/policies/p", json={"models": ["m:1"], "node_selector": {"a b": "x"}})
    assert bad_label.status_code == 422
    bad_labels = c.get("/v1/nodes/n/assignments", params={"labels": "novalue"})
    assert bad_labels.status_code == 422
    assert c.get("/v1/policies").json() == []


def test_metrics_count_requests_and_the_catalog(api):
    c = api.client(api.admin)
    register(c, "m", 1)
    register(c, "m", 2)
    _status(c, "gpu-1", [_ready(1)])
    c.get("/v1/resolve/m:1")
    c.get("/v1/resolve/m:9")
    text = api.client().get("/metrics").text
    for line in (
        'modelcar_api_requests_total{method="GET",route="/v1/resolve/{ref}",status="200"} 1.0',
        'modelcar_api_requests_total{method="GET",route="/v1/resolve/{ref}",status="404"} 1.0',
        "modelcar_models 1.0",
        "modelcar_versions 2.0",
        'modelcar_nodes{state="fresh"} 1.0',
        "modelcar_models_ready_on_nodes 1.0",
    ):
        assert line in text, line
    assert (
        'modelcar_api_request_seconds_bucket{le="0.01",method="GET",route="/v1/resolve/{ref}"}'
        in text
    )


def test_nodes_find_the_peers_serving_a_blob(make_api):
    """A node reports where it serves and the blobs of each model; the API answers
    who holds a blob: fresh nodes that serve, ready holders first, to node tokens and
    readers, never anonymously."""
    api = make_api(stale_after=2)
    c = api.client(api.admin)
    layer, other = digest("layer"), digest("other")
    ready = {**_ready(1), "blobs": [layer, other]}
    pulling = {"digest": digest(2), "state": "pulling", "blobs": [layer]}
    failed = {"digest": digest(3), "state": "failed", "blobs": [other]}
    zone = "topology.kubernetes.io/zone"
    r = _status(c, "b", [pulling], {zone: "z1"}, serve_url="http://10.0.0.2:5050/")
    assert r.status_code == 200, r.text
    _status(c, "a", [ready], {zone: "z2"}, serve_url="http://10.0.0.1:5050")
    _status(c, "c", [failed], serve_url="http://10.0.0.3:5050")
    _status(c, "d", [ready])  # holds it, serves nothing
    node = api.client(api.token("node", "node-x", "x"))
    out = node.get(f"/v1/blobs/{layer}/holders").json()
    assert out["holders"] == [
        {"node": "a", "url": "http://10.0.0.1:5050", "ready": True, "labels": {zone: "z2"}},
        {"node": "b", "url": "http://10.0.0.2:5050", "ready": False, "labels": {zone: "z1"}},
    ]
    assert [h["node"] for h in node.get(f"/v1/blobs/{other}/holders").json()["holders"]] == ["a"]
    reader = api.client(api.token("read", "r"))
    assert reader.get(f"/v1/blobs/{layer}/holders").status_code == 200
    anon = api.client(None).get(f"/v1/blobs/{layer}/holders")
    assert anon.status_code == 401 and "token" in error_of(anon)["message"]
    assert node.get("/v1/blobs/sha256:nope/holders").status_code == 422
    bad = _status(c, "e", [], serve_url="ftp://x")
    assert bad.status_code == 422
    # a node that stops reporting is no longer a holder
    deadline = time.monotonic() + 30
    while node.get(f"/v1/blobs/{layer}/holders").json()["holders"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
