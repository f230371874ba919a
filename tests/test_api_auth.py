"""The auth matrix: every role against every write endpoint, node scoping, token storage."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import text

from tests.helpers import digest, error_of, register

_seq = itertools.count()


def _model_put(c):
    return "PUT", f"/v1/models/m{next(_seq)}", {"description": "x"}


def _version_post(c):
    return "POST", "/v1/models/m/versions", {"digest": digest(next(_seq)), "repository": "r.io/m"}


def _alias_put(c):
    return "PUT", f"/v1/models/m/aliases/a{next(_seq)}", {"version": 1}


def _alias_delete(c):
    alias = f"a{next(_seq)}"
    c.put(f"/v1/models/m/aliases/{alias}", json={"version": 1})
    return "DELETE", f"/v1/models/m/aliases/{alias}", None


def _version_delete(c):
    number = register(c, "m", next(_seq)).json()["version"]
    return "DELETE", f"/v1/models/m/versions/{number}", None


def _policy_put(c):
    return "PUT", f"/v1/policies/p{next(_seq)}", {"models": ["m:1"]}


def _policy_delete(c):
    name = f"p{next(_seq)}"
    c.put(f"/v1/policies/{name}", json={"models": ["m:1"]})
    return "DELETE", f"/v1/policies/{name}", None


def _status_put(c):
    return "PUT", "/v1/nodes/gpu-1/status", {"models": []}


def _token_post(c):
    return "POST", "/v1/tokens", {"name": f"t{next(_seq)}", "role": "read"}


def _token_delete(c):
    token_id = c.post("/v1/tokens", json={"name": "victim", "role": "read"}).json()["id"]
    return "DELETE", f"/v1/tokens/{token_id}", None


# endpoint -> roles allowed to call it
WRITES = {
    _model_put: {"publish", "admin"},
    _version_post: {"publish", "admin"},
    _alias_put: {"publish", "admin"},
    _alias_delete: {"publish", "admin"},
    _version_delete: {"admin"},
    _policy_put: {"admin"},
    _policy_delete: {"admin"},
    _status_put: {"admin", "node-gpu-1"},
    _token_post: {"admin"},
    _token_delete: {"admin"},
}
ROLES = ["anonymous", "read", "publish", "admin", "node-gpu-1", "node-gpu-2"]


@pytest.fixture
def tokens(api):
    out = {"anonymous": None, "admin": api.admin}
    for role in ("read", "publish"):
        out[role] = api.token(role, f"{role}-bot")
    for node in ("gpu-1", "gpu-2"):
        out[f"node-{node}"] = api.token("node", node)
    register(api.client(api.admin), "m", "base")
    return out


def test_every_role_against_every_write_endpoint(api, tokens):
    admin = api.client(api.admin)
    failures = []
    for prepare, allowed in WRITES.items():
        for role in ROLES:
            method, path, body = prepare(admin)
            r = api.client(tokens[role]).request(method, path, json=body)
            want = "2xx" if role in allowed else 401 if role == "anonymous" else 403
            ok = r.is_success if want == "2xx" else r.status_code == want
            if not ok:
                failures.append((prepare.__name__, role, want, r.status_code, r.text[:200]))
            elif want != "2xx":
                error_of(r)
    assert not failures, failures


def test_reads_need_a_read_token_unless_open(make_api):
    api = make_api()
    register(api.client(api.admin), "m", 1)
    anonymous = api.client().get("/v1/resolve/m:1")
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    assert api.client(api.token("read", "r")).get("/v1/resolve/m:1").status_code == 200
    assert api.client(api.token("node", "gpu-1")).get("/v1/resolve/m:1").status_code == 403
    assert api.client("mct_not-a-token").get("/v1/resolve/m:1").status_code == 401
    basic = api.client().get("/v1/resolve/m:1", headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401

    open_api = make_api(open_reads=True)
    register(open_api.client(open_api.admin), "m", 1)
    assert open_api.client().get("/v1/resolve/m:1").status_code == 200
    assert open_api.client().get("/v1/models").status_code == 200
    # writes stay closed
    assert register(open_api.client(), "m", 2).status_code == 401
    # health and metrics never need a token
    for path in ("/healthz", "/readyz", "/metrics"):
        assert api.client().get(path).status_code == 200


def test_a_node_token_speaks_only_for_its_node(api, tokens):
    mine = api.client(tokens["node-gpu-1"])
    assert mine.put("/v1/nodes/gpu-1/status", json={"models": []}).status_code == 200
    assert mine.get("/v1/nodes/gpu-1/assignments").status_code == 200
    assert mine.get("/v1/nodes/gpu-1").status_code == 200
    for method, path in [
        ("PUT", "/v1/nodes/gpu-2/status"),
        ("GET", "/v1/nodes/gpu-2/assignments"),
        ("GET", "/v1/nodes/gpu-2"),
        ("GET", "/v1/nodes"),
        ("GET", "/v1/models"),
    ]:
        r = mine.request(method, path, json={"models": []} if method == "PUT" else None)
        assert r.status_code == 403, (method, path, r.text)
        error_of(r)
    # read tokens may read any node's assignments, not write status
    reader = api.client(tokens["read"])
    assert reader.get("/v1/nodes/gpu-2/assignments").status_code == 200
    assert reader.put("/v1/nodes/gpu-2/status", json={"models": []}).status_code == 403


def test_tokens_are_stored_hashed_and_can_be_revoked(api):
    admin = api.client(api.admin)
    created = admin.post("/v1/tokens", json={"name": "ci", "role": "publish"})
    assert created.status_code == 201
    secret, token_id = created.json()["token"], created.json()["id"]
    assert secret.startswith("mct_") and len(secret) > 40
    assert register(api.client(secret), "m", 1).status_code == 201

    listed = admin.get("/v1/tokens").json()
    assert all("token" not in t for t in listed)
    assert {t["name"] for t in listed} >= {"root", "ci"}
    with api.db.reading() as s:
        rows = s.execute(text("SELECT * FROM tokens")).all()
    dump = repr(rows)
    assert secret not in dump and secret[4:] not in dump and api.admin not in dump

    node = admin.post("/v1/tokens", json={"name": "gpu-7", "role": "node", "node": "gpu-7"})
    assert node.json()["node"] == "gpu-7"
    assert admin.post("/v1/tokens", json={"name": "n", "role": "node"}).status_code == 422
    bad = admin.post("/v1/tokens", json={"name": "x", "role": "read", "node": "gpu-1"})
    assert bad.status_code == 422
    assert admin.post("/v1/tokens", json={"name": "x", "role": "root"}).status_code == 422

    assert admin.delete(f"/v1/tokens/{token_id}").status_code == 204
    assert register(api.client(secret), "m", 2).status_code == 401
    assert admin.delete(f"/v1/tokens/{token_id}").status_code == 404


def test_a_fleet_node_token_acts_for_every_node_and_nothing_more(api):
    fleet = api.client(api.token("node", "daemonset", node="*"))
    for node in ("gpu-1", "gpu-2"):
        assert fleet.put(f"/v1/nodes/{node}/status", json={"models": []}).status_code == 200
        assert fleet.get(f"/v1/nodes/{node}/assignments").status_code == 200
    assert register(fleet, "m", 1).status_code == 403
    assert fleet.get("/v1/models").status_code == 403
    assert fleet.put("/v1/policies/p", json={"models": []}).status_code == 403
