"""Models, versions, aliases and resolve — on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading

from tests.helpers import digest, error_of, register


def test_versions_are_numbered_and_immutable(api):
    c = api.client(api.admin)
    r1 = register(c, "llama", 1, size=100, file_count=3, source_uri="hf://org/llama@abc")
    assert r1.status_code == 201
    v1 = r1.json()
    assert v1["version"] == 1 and v1["digest"] == digest(1)
    assert v1["image"] == f"registry.example:5000/team/llama@{digest(1)}"
    assert v1["created_by"] == "root"

    # the same digest again: the existing version, 200, nothing new
    again = register(c, "llama", 1)
    assert again.status_code == 200 and again.json()["version"] == 1
    assert register(c, "llama", 2).json()["version"] == 2

    # an existing number with another digest is refused; the version is unchanged
    clash = register(c, "llama", 3, version=1)
    assert clash.status_code == 409
    assert "version 1 exists" in error_of(clash)["message"]
    assert c.get("/v1/models/llama/versions/1").json()["digest"] == digest(1)
    # the same digest under another number is refused too
    assert register(c, "llama", 2, version=1).status_code == 409
    # an explicit number is accepted when it is the next one, and idempotent
    assert register(c, "llama", 3, version=3).status_code == 201
    assert register(c, "llama", 3, version=3).status_code == 200
    skip = register(c, "llama", 4, version=9)
    assert skip.status_code == 409 and "next one is 4" in error_of(skip)["message"]

    versions = c.get("/v1/models/llama/versions").json()
    assert [v["version"] for v in versions] == [1, 2, 3]
    detail = c.get("/v1/models/llama").json()
    assert detail["latest_version"] == 3 and len(detail["versions"]) == 3


def test_concurrent_registrations_get_distinct_gap_free_numbers(api):
    n_threads, per_thread = 8, 4
    results: list[int] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        with api.client(api.admin) as c:
            for i in range(per_thread):
                r = register(c, "race", f"{t}-{i}")
                with lock:
                    statuses.append(r.status_code)
                    if r.status_code == 201:
                        results.append(r.json()["version"])
                # and the same digest from every thread at once
                r = register(c, "race", "shared")
                with lock:
                    statuses.append(r.status_code)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(statuses) <= {200, 201}, statuses
    versions = api.client(api.admin).get("/v1/models/race/versions").json()
    numbers = sorted(v["version"] for v in versions)
    assert numbers == list(range(1, n_threads * per_thread + 2))  # gap-free, +1 for "shared"
    assert sum(v["digest"] == digest("shared") for v in versions) == 1
    assert len(set(results)) == len(results)


def test_alias_moves_are_kept_in_order_and_resolve_follows(api):
    c = api.client(api.admin)
    for seed in (1, 2, 3):
        register(c, "m", seed)
    moves = [(1, "first"), (2, "better eval"), (3, "new data"), (2, "rollback: regression")]
    for version, reason in moves:
        r = c.put("/v1/models/m/aliases/prod", json={"version": version, "reason": reason})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == version
        assert c.get("/v1/resolve/m@prod").json()["digest"] == digest(version)
    # pointing it where it already points is not a move
    c.put("/v1/models/m/aliases/prod", json={"version": 2})
    history = c.get("/v1/models/m/aliases/prod/history").json()
    assert [(h["from_version"], h["to_version"], h["reason"]) for h in history] == [
        (None, 1, "first"),
        (1, 2, "better eval"),
        (2, 3, "new data"),
        (3, 2, "rollback: regression"),
    ]
    assert all(h["actor"] == "root" for h in history)
    stamps = [h["at"] for h in history]
    assert stamps == sorted(stamps)

    assert c.get("/v1/models/m").json()["aliases"] == {"prod": 2}
    assert c.get("/v1/models/m/aliases/prod").json()["version"] == 2
    assert [a["alias"] for a in c.get("/v1/models/m/aliases").json()] == ["prod"]

    # deleting an alias is recorded too
    assert c.delete("/v1/models/m/aliases/prod", params={"reason": "retired"}).status_code == 204
    assert c.get("/v1/models/m/aliases/prod/history").json()[-1]["to_version"] is None
    assert c.get("/v1/resolve/m@prod").status_code == 404


def test_alias_errors(api):
    c = api.client(api.admin)
    register(c, "m", 1)
    assert c.put("/v1/models/m/aliases/prod", json={"version": 7}).status_code == 404
    assert c.put("/v1/models/nope/aliases/prod", json={"version": 1}).status_code == 404
    bad = c.put("/v1/models/m/aliases/1prod", json={"version": 1})
    assert bad.status_code == 422 and error_of(bad)["code"] == "invalid"
    assert c.get("/v1/models/m/aliases/prod/history").status_code == 404


def test_deleting_an_aliased_version_is_refused(api):
    c = api.client(api.admin)
    register(c, "m", 1)
    register(c, "m", 2)
    c.put("/v1/models/m/aliases/prod", json={"version": 1})
    refused = c.delete("/v1/models/m/versions/1")
    assert refused.status_code == 409
    assert "prod" in error_of(refused)["message"]
    assert c.get("/v1/resolve/m:1").status_code == 200

    assert c.delete("/v1/models/m/versions/2").status_code == 200
    assert c.get("/v1/models/m/versions/2").status_code == 404
    # numbers are never reused
    assert register(c, "m", 3).json()["version"] == 3


def test_resolve_by_alias_version_and_digest(api):
    c = api.client(api.admin)
    register(c, "m", 1, size=1234, file_count=5)
    c.put("/v1/models/m/aliases/prod", json={"version": 1})
    answers = [c.get(f"/v1/resolve/{ref}").json() for ref in ("m@prod", "m:1", f"m@{digest(1)}")]
    for a in answers:
        assert a["digest"] == digest(1) and a["version"] == 1 and a["name"] == "m"
        assert a["image"] == f"registry.example:5000/team/m@{digest(1)}"
        assert a["storage_uri"] == f"oci://{a['image']}"
        assert a["host_path"] == f"/var/lib/modelcar/models/sha256-{digest(1)[7:]}"
        assert a["size"] == 1234 and a["file_count"] == 5
    assert answers[0]["alias"] == "prod" and answers[1]["alias"] is None

    oci = answers[0]
    assert oci["mode"] == "oci"
    vol = oci["pod_spec"]["volumes"][0]
    assert vol["image"]["reference"] == oci["image"]
    mount = oci["pod_spec"]["volumeMounts"][0]
    assert (
        mount["mountPath"] == "/mnt/models" and mount["readOnly"] and mount["subPath"] == "models"
    )
    pref = oci["pod_spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert pref[0]["preference"]["matchExpressions"][0]["key"] == oci["node_label"]

    hp = c.get("/v1/resolve/m@prod", params={"mode": "hostpath"}).json()
    assert hp["pod_spec"]["volumes"][0]["hostPath"] == {
        "path": hp["host_path"],
        "type": "Directory",
    }
    req = hp["pod_spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert req["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["ready"]

    isvc = c.get("/v1/resolve/m@prod", params={"format": "kserve"}).json()
    assert isvc["kind"] == "InferenceService"
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == oci["storage_uri"]
    isvc_hp = c.get("/v1/resolve/m@prod", params={"format": "kserve", "mode": "hostpath"}).json()
    assert isvc_hp["spec"]["predictor"]["volumes"][0]["hostPath"]["path"] == hp["host_path"]

    # stream: no mount; vLLM loads from its node's S3 endpoint, at the pod's host IP
    st = c.get("/v1/resolve/m@prod", params={"mode": "stream"}).json()
    assert st["mode"] == "stream" and st["s3_uri"] == f"s3://modelcar/sha256-{digest(1)[7:]}/"
    assert st["pod_spec"]["args"] == ["--model", st["s3_uri"], "--load-format", "runai_streamer"]
    env = {e["name"]: e for e in st["pod_spec"]["env"]}
    assert env["MODELCAR_NODE_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://$(MODELCAR_NODE_IP):5050"
    assert env["RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"]["value"] == "0"
    assert env["RUNAI_STREAMER_S3_UNSIGNED"]["value"] == "1"  # no stream_secret set
    assert "volumes" not in st["pod_spec"]
    assert "preferredDuringSchedulingIgnoredDuringExecution" in str(st["pod_spec"]["affinity"])
    assert c.get("/v1/resolve/m@prod", params={"mode": "sideways"}).status_code == 422


def test_resolve_errors_are_clear(api):
    c = api.client(api.admin)
    register(c, "m", 1)
    c.put("/v1/models/m/aliases/prod", json={"version": 1})
    cases = {
        "nope@prod": (404, "unknown model"),
        "m@canary": (404, "unknown alias"),
        "m:9": (404, "unknown version"),
        f"m@{digest(9)}": (404, "no version"),
        "M@prod": (422, "'M@prod' is not a model reference: NAME@ALIAS"),
        "m": (422, "not a model reference"),
        "m:0": (422, "not a model reference"),
        "m@sha256:abc": (422, "not a model reference"),
    }
    for ref, (status, text) in cases.items():
        r = c.get(f"/v1/resolve/{ref}")
        assert r.status_code == status, (ref, r.text)
        assert text in error_of(r)["message"], (ref, r.text)
    assert "its aliases: prod" in error_of(c.get("/v1/resolve/m@canary"))["hint"]


def test_layout_images_resolve_to_hostpath(api):
    c = api.client(api.admin)
    r = c.post("/v1/models/m/versions", json={"digest": digest(1), "repository": "oci:/srv/layout"})
    assert r.status_code == 201, r.text
    a = c.get("/v1/resolve/m:1").json()
    assert a["mode"] == "hostpath" and a["storage_uri"] is None
    assert a["image"] == f"oci:/srv/layout@{digest(1)}"
    refused = c.get("/v1/resolve/m:1", params={"mode": "oci"})
    assert refused.status_code == 409 and "oci: layout" in error_of(refused)["message"]


def test_models_have_metadata(api):
    c = api.client(api.admin)
    created = c.put("/v1/models/llama", json={"description": "Llama 3 8B", "owner": "ml-team"})
    assert created.status_code == 201
    updated = c.put("/v1/models/llama", json={"owner": "platform"})
    assert updated.status_code == 200
    m = c.get("/v1/models/llama").json()
    assert (m["description"], m["owner"], m["latest_version"]) == ("Llama 3 8B", "platform", None)
    register(c, "llama", 1)
    register(c, "bert", 1)
    assert [x["name"] for x in c.get("/v1/models").json()] == ["bert", "llama"]
    assert c.put("/v1/models/Bad_Name", json={}).status_code == 422
    assert c.get("/v1/models/nope").status_code == 404


def test_concurrent_puts_of_a_new_model_create_it_once(api):
    """The row is locked (or created under the unique index) before anyone decides
    whether it was new: of ten concurrent PUTs exactly one answers 201."""
    from concurrent.futures import ThreadPoolExecutor

    def put(i: int) -> int:
        with api.client(api.admin) as c:
            return c.put("/v1/models/racy", json={"description": f"d{i}"}).status_code

    with ThreadPoolExecutor(max_workers=10) as pool:
        codes = list(pool.map(put, range(10)))
    assert sorted(codes) == [200] * 9 + [201], codes
