"""Admission webhooks over real HTTPS: `modelcar-api serve --webhook-port …` answers
AdmissionReviews; the JSONPatch it returns is applied with the `jsonpatch` library and
the patched InferenceService validated against KServe's CRD schema (vendored from
kserve/kserve at aaac4e294dae2c7b1aa1886447793f3aa1c30912, the v1beta1
openAPIV3Schema of config/crd/full/serving.kserve.io_inferenceservices.yaml)."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import jsonpatch
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from harness.localregistry import free_port
from harness.tls import make_cert, make_client_ca
from modelcar.api.settings import Settings
from modelcar.api.webhook import create_webhook_app
from tests.helpers import ROOT, run_api_cli, stop_process

REPO = "registry.example:5000/team/bert"
ISVC = {"group": "serving.kserve.io", "version": "v1beta1", "kind": "InferenceService"}
POD = {"group": "", "version": "v1", "kind": "Pod"}
DEPLOY = {"group": "apps", "version": "v1", "kind": "Deployment"}


def _digest(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def _tls(server_ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(server_ca))
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


class Webhook:
    def __init__(self, work: Path):
        self.work = work
        cert, key = make_cert(work)
        self.server_ca = cert
        self.client_ca, self.client_cert, self.client_key = make_client_ca(work)
        self.db = f"sqlite:///{work}/catalog.db"
        run_api_cli("db", "upgrade", "--db", self.db)
        self.admin = run_api_cli(
            "token", "create", "--role", "admin", "--name", "root", "--db", self.db
        ).stdout.strip()
        self.port, self.hook_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelcar.api.cli",
                "serve",
                "--db",
                self.db,
                "--port",
                str(self.port),
                "--webhook-port",
                str(self.hook_port),
                "--webhook-cert",
                str(cert),
                "--webhook-key",
                str(key),
                "--webhook-client-ca",
                str(self.client_ca),
                "--no-access-log",
            ],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.hook = f"https://127.0.0.1:{self.hook_port}"
        self.client = httpx.Client(verify=_tls(cert, self.client_cert, self.client_key))
        self.api = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.admin}"}
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.api.get("/readyz").status_code == 200:
                    self.client.post(f"{self.hook}/mutate", content=b"{}")
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)

    def review(
        self,
        path: str,
        kind: dict,
        obj: dict | None,
        *,
        operation: str = "CREATE",
        dry_run: bool = False,
        namespace: str = "team",
    ) -> dict:
        request = {
            "uid": str(uuid.uuid4()),
            "kind": kind,
            "namespace": namespace,
            "operation": operation,
            "dryRun": dry_run,
            "name": (obj or {}).get("metadata", {}).get("name"),
        }
        request["oldObject" if operation == "DELETE" else "object"] = obj
        body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
        r = self.client.post(f"{self.hook}{path}", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["kind"] == "AdmissionReview" and answer["response"]["uid"] == request["uid"]
        return answer["response"]

    def stop(self) -> str:
        self.client.close()
        self.api.close()
        return stop_process(self.proc)


@pytest.fixture(scope="module")
def hook(tmp_path_factory):
    server = Webhook(tmp_path_factory.mktemp("webhook"))
    for n in (1, 2):
        server.api.post(
            "/v1/models/bert/versions",
            json={
                "digest": _digest(n),
                "repository": REPO,
                "size": 10,
            },
        ).raise_for_status()
    server.api.put("/v1/models/bert/aliases/prod", json={"version": 1}).raise_for_status()
    yield server
    err = server.stop()
    assert "Traceback" not in err, err[-3000:]


def _patched(obj: dict, response: dict) -> dict:
    assert response["allowed"], response
    if "patch" not in response:
        return obj
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.JsonPatch(ops).apply(copy.deepcopy(obj))


def _crd_schema() -> dict:
    data = (ROOT / "tests/fixtures/kserve/inferenceservice-v1beta1.schema.json.gz").read_bytes()
    return json.loads(gzip.decompress(data))


def _valid_isvc(obj: dict) -> None:
    errors = [e.message for e in jsonschema.Draft7Validator(_crd_schema()).iter_errors(obj)]
    assert errors == []


def _isvc(uri: str, name: str = "bert", annotations: dict | None = None, **predictor) -> dict:
    meta: dict = {"name": name, "namespace": "team"}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": meta,
        "spec": {
            "predictor": {
                "model": {"modelFormat": {"name": "huggingface"}, "storageUri": uri},
                **predictor,
            }
        },
    }


def test_an_inference_service_is_pinned_and_stays_valid(hook):
    obj = _isvc("model://bert@prod")
    out = _patched(obj, hook.review("/mutate", ISVC, obj))
    _valid_isvc(out)
    model = out["spec"]["predictor"]["model"]
    assert model["storageUri"] == f"oci://{REPO}@{_digest(1)}"
    notes = out["metadata"]["annotations"]
    assert notes == {
        "modelcar.dev/model": "bert",
        "modelcar.dev/version": "1",
        "modelcar.dev/alias": "prod",
        "modelcar.dev/digest": _digest(1),
    }
    preferred = out["spec"]["predictor"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred[0]["preference"]["matchExpressions"][0]["values"] == ["ready"]
    # a second pass changes nothing
    again = hook.review("/mutate", ISVC, out)
    assert again["allowed"] and "patch" not in again


def test_hostpath_mode_framework_fields_and_storage_uris(hook):
    obj = _isvc("model://bert:2", annotations={"modelcar.dev/mode": "hostpath", "x": "y"})
    out = _patched(obj, hook.review("/mutate", ISVC, obj))
    _valid_isvc(out)
    predictor = out["spec"]["predictor"]
    assert "storageUri" not in predictor["model"]
    assert predictor["volumes"][0]["hostPath"]["path"].endswith(f"sha256-{_digest(2)[7:]}")
    assert predictor["model"]["volumeMounts"][0]["mountPath"] == "/mnt/models"
    required = predictor["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert required["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["ready"]
    assert out["metadata"]["annotations"]["x"] == "y"
    assert out["metadata"]["annotations"]["modelcar.dev/version"] == "2"

    sklearn = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "sk"},
        "spec": {
            "predictor": {
                "sklearn": {"storageUri": "model://bert@prod"},
                "storageUris": [{"uri": "model://bert:2", "mountPath": "/mnt/extra"}],
            }
        },
    }
    out = _patched(sklearn, hook.review("/mutate", ISVC, sklearn))
    _valid_isvc(out)
    assert out["spec"]["predictor"]["sklearn"]["storageUri"] == f"oci://{REPO}@{_digest(1)}"
    assert out["spec"]["predictor"]["storageUris"] == [
        {"uri": f"oci://{REPO}@{_digest(2)}", "mountPath": "/mnt/extra"}
    ]


def test_pods_and_pod_templates_get_pinned_image_volumes(hook):
    volume = {"name": "model", "image": {"reference": "model://bert@prod"}}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": [volume]},
    }
    out = _patched(pod, hook.review("/mutate", POD, pod))
    assert out["spec"]["volumes"][0]["image"]["reference"] == f"{REPO}@{_digest(1)}"
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": [], "volumes": [volume]}}},
    }
    out = _patched(deploy, hook.review("/mutate", DEPLOY, deploy))
    assert out["spec"]["template"]["spec"]["volumes"][0]["image"]["reference"] == (
        f"{REPO}@{_digest(1)}"
    )
    nameless = {"spec": {"volumes": [volume]}}  # a patch target that does not exist yet
    out = _patched(nameless, hook.review("/mutate", POD, nameless))
    assert out["metadata"]["annotations"]["modelcar.dev/digest"] == _digest(1)


def test_an_alias_moved_between_admissions_pins_the_new_digest_for_the_next_one(hook):
    a = _isvc("model://bert@prod", name="a")
    first = _patched(a, hook.review("/mutate", ISVC, a))
    hook.api.put("/v1/models/bert/aliases/prod", json={"version": 2}).raise_for_status()
    try:
        b = _isvc("model://bert@prod", name="b")
        second = _patched(b, hook.review("/mutate", ISVC, b))
    finally:
        hook.api.put("/v1/models/bert/aliases/prod", json={"version": 1}).raise_for_status()
    assert first["spec"]["predictor"]["model"]["storageUri"].endswith(_digest(1))
    assert second["spec"]["predictor"]["model"]["storageUri"].endswith(_digest(2))


def test_unknown_names_are_denied_and_bad_reviews_answered(hook):
    denied = hook.review("/mutate", ISVC, _isvc("model://nosuch@prod"))
    assert not denied["allowed"] and "nosuch" in denied["status"]["message"]
    denied = hook.review("/mutate", ISVC, _isvc("model://bert@canary"))
    assert not denied["allowed"] and "canary" in denied["status"]["message"]
    # not ours, no object, a 1 MiB object: answered, allowed, unchanged
    other = {"group": "example.com", "version": "v1", "kind": "Widget"}
    ignored = hook.review("/mutate", other, {"spec": {}})
    assert ignored["allowed"] and "patch" not in ignored
    assert hook.review("/mutate", ISVC, None)["allowed"]
    big = _isvc("oci://r.example/x@" + _digest(9))
    big["metadata"]["annotations"] = {"blob": "x" * (1 << 20)}
    assert hook.review("/mutate", ISVC, big)["allowed"]
    for bad in (
        b"not json",
        b"{}",
        json.dumps(
            {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}
        ).encode(),
    ):
        r = hook.client.post(f"{hook.hook}/mutate", content=bad)
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("not an admission")


def test_validate_refuses_unpinned_and_unregistered_images(hook):
    tag = _isvc("oci://r.example/x:latest")
    refused = hook.review("/validate", ISVC, tag)
    assert not refused["allowed"] and "not pinned by digest" in refused["status"]["message"]
    unknown = _isvc(f"oci://r.example/x@{_digest(7)}")
    refused = hook.review("/validate", ISVC, unknown)
    assert not refused["allowed"] and "no registered model version" in refused["status"]["message"]
    assert hook.review("/validate", ISVC, _isvc(f"oci://{REPO}@{_digest(1)}", name="v"))["allowed"]
    s3 = _isvc("s3://bucket/model")  # not an image: not the webhook's business
    assert hook.review("/validate", ISVC, s3)["allowed"]


def test_who_runs_what_is_recorded_and_protects_a_version(hook):
    def users() -> set[tuple[str, str, str]]:
        got = hook.api.get("/v1/models/bert/versions/2/usage").json()
        return {(u["namespace"], u["kind"], u["name"]) for u in got}

    mine = ("team", "InferenceService", "usage")
    obj = _isvc("model://bert:2", name="usage")
    before = hook.api.get("/v1/models/bert/versions/2").json()["usage"]
    hook.review("/mutate", ISVC, copy.deepcopy(obj), dry_run=True)
    assert mine not in users()
    hook.review("/mutate", ISVC, obj)
    assert mine in users()
    assert hook.api.get("/v1/models/bert/versions/2").json()["usage"] == before + 1
    refused = hook.api.delete("/v1/models/bert/versions/2")
    assert refused.status_code == 409 and "team/InferenceService/usage" in refused.text
    hook.review("/mutate", ISVC, obj, operation="DELETE", dry_run=True)
    assert mine in users()
    hook.review("/mutate", ISVC, obj, operation="DELETE")
    assert mine not in users()


def test_the_webhook_port_is_tls_only_and_wants_the_client_ca(hook, tmp_path):
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://127.0.0.1:{hook.hook_port}/mutate", json={}, timeout=5)
    no_cert = httpx.Client(verify=_tls(hook.server_ca), timeout=5)
    with pytest.raises(
        (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)
    ):
        no_cert.post(f"{hook.hook}/mutate", json={})
    _, other_cert, other_key = make_client_ca(tmp_path, "stranger")
    stranger = httpx.Client(verify=_tls(hook.server_ca, other_cert, other_key), timeout=5)
    with pytest.raises(
        (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)
    ):
        stranger.post(f"{hook.hook}/mutate", json={})
    # the webhooks are not on the main port, the API is not on the webhook port
    assert hook.api.post("/mutate", json={}).status_code in (404, 405)
    assert hook.client.get(f"{hook.hook}/v1/models").status_code in (404, 405)
    assert hook.client.get(f"{hook.hook}/openapi.json").status_code == 404


_SCHEMA = schemathesis.openapi.from_dict(
    create_webhook_app(Settings(db="sqlite://"), None).openapi()  # type: ignore[arg-type]
)


@_SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_the_webhooks_are_fuzzed_like_the_rest(case, hook):
    r = case.call(
        base_url=hook.hook,
        verify=str(hook.server_ca),
        cert=(str(hook.client_cert), str(hook.client_key)),
    )
    assert r.status_code < 500, r.text
    assert r.status_code in (200, 400, 405, 413), r.text  # 405: the methods other than POST
    if r.status_code == 200:
        assert r.json()["kind"] == "AdmissionReview"


# --- hostile objects: linear time, every storage field, bounded bodies, no 500 ----------


def _storage_paths() -> list[tuple[str, ...]]:
    """Every storageUri / storageUris field of KServe's CRD (the vendored schema is the
    list: predictor, transformer, explainer and its art, each canary's predictor)."""
    found: list[tuple[str, ...]] = []

    def walk(node: dict, path: tuple[str, ...]) -> None:
        for key, sub in (node.get("properties") or {}).items():
            if key in ("storageUri", "storageUris"):
                found.append((*path, key))
            walk(sub, (*path, key))
        if isinstance(node.get("items"), dict):
            walk(node["items"], (*path, "[]"))

    walk(_crd_schema(), ())
    return found


def _with_uri_at(path: tuple[str, ...], uri: str) -> dict:
    obj: dict = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "every", "namespace": "team"},
    }
    node = obj
    for i, key in enumerate(path[:-1]):
        if key == "[]":
            continue
        nxt: dict = {}
        node[key] = [nxt] if path[i + 1] == "[]" else nxt
        node = nxt
    if path[-1] == "storageUris":
        node["storageUris"] = [{"uri": uri}]
    else:
        node["storageUri"] = uri
    return obj


def test_every_storage_field_of_the_crd_is_pinned_and_validated(hook):
    paths = _storage_paths()
    assert len(paths) >= 20  # predictor, transformer, explainer, canaries: all of them
    for path in paths:
        where = ".".join(path)
        obj = _with_uri_at(path, "model://bert@prod")
        out = _patched(obj, hook.review("/mutate", ISVC, obj))  # the patch applies
        assert f"oci://{REPO}@{_digest(1)}" in json.dumps(out), where
        assert "model://" not in json.dumps(out["spec"]), where
        for bad in ("oci://r.example/x:latest", "model://bert@prod"):
            refused = hook.review("/validate", ISVC, _with_uri_at(path, bad))
            assert not refused["allowed"], (where, bad)
            assert "not pinned by digest" in refused["status"]["message"], where


def test_many_references_take_one_affinity_term_per_digest_and_a_cap(hook):
    def pod(n: int, name: str) -> dict:
        refs = [f"model://bert:{1 + i % 2}" for i in range(n)]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "containers": [{"name": "c", "image": "busybox"}],
                "volumes": [
                    {"name": f"m{i}", "image": {"reference": r}} for i, r in enumerate(refs)
                ],
            },
        }

    out = _patched(pod(256, "many"), hook.review("/mutate", POD, pod(256, "many")))
    preferred = out["spec"]["affinity"]["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert len(preferred) == 2  # two distinct digests, not 256 terms
    assert {v["image"]["reference"] for v in out["spec"]["volumes"]} == {
        f"{REPO}@{_digest(1)}",
        f"{REPO}@{_digest(2)}",
    }
    denied = hook.review("/mutate", POD, pod(2000, "too-many"))
    assert not denied["allowed"]
    assert (
        "2000 model:// references in one object, over the limit of 256"
        in (denied["status"]["message"])
    )


def _tls_socket(hook):
    import socket

    ctx = _tls(hook.server_ca, hook.client_cert, hook.client_key)
    raw = socket.create_connection(("127.0.0.1", hook.hook_port), timeout=60)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_a_body_over_the_cap_is_refused_on_its_length_and_slow_clients_are_cut(hook):
    with _tls_socket(hook) as s:  # announces 1 GB, sends nothing: refused at once
        s.sendall(
            b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        assert s.recv(100).startswith(b"HTTP/1.1 413")
    r = hook.client.post(
        f"{hook.hook}/mutate",
        content=(b"x" for _ in range(1)),  # chunked
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400
    with _tls_socket(hook) as s:  # half a request head, then silence: the server hangs up
        s.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert s.recv(100) == b""  # closed (the socket's own timeout is 60 s)
        assert time.monotonic() - started < 59
    with _tls_socket(hook) as s:  # a head, then a body that never comes
        s.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        assert s.recv(100).startswith(b"HTTP/1.1 408")


def _raw_review(hook, path: str, kind: dict, obj, operation: str = "CREATE", old=None) -> dict:
    request = {
        "uid": str(uuid.uuid4()),
        "kind": kind,
        "namespace": "team",
        "operation": operation,
        "object": obj,
        "oldObject": old,
    }
    body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    r = hook.client.post(f"{hook.hook}{path}", json=body)
    assert r.status_code == 200, r.text
    return r.json()["response"]


def test_malformed_objects_are_denied_or_patched_never_a_500(hook):
    volume = {"name": "m", "image": {"reference": "model://bert@prod"}}
    base = {"spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": [volume]}}
    for metadata in (None, {"annotations": None}, {"annotations": ["a"]}, {"name": "p"}):
        pod = {**copy.deepcopy(base), "metadata": metadata}
        answer = _raw_review(hook, "/mutate", POD, pod)
        out = _patched(pod, answer)  # the patch applies, whatever metadata was
        assert out["metadata"]["annotations"]["modelcar.dev/digest"] == _digest(1)
    for spec_patch in ({"affinity": "near"}, {"affinity": {"nodeAffinity": "x"}}):
        pod = {"metadata": {"name": "p"}, "spec": {**copy.deepcopy(base["spec"]), **spec_patch}}
        out = _patched(pod, _raw_review(hook, "/mutate", POD, pod))
        assert out["spec"]["affinity"]["nodeAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
    hostpath = {"modelcar.dev/mode": "hostpath"}
    for predictor in (
        {"volumes": "v", "model": {"storageUri": "model://bert@prod"}},
        {"model": {"storageUri": "model://bert@prod", "volumeMounts": "x"}},
        {
            "model": {"storageUri": "model://bert@prod"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": 7}},
        },
    ):
        obj = {"metadata": {"name": "m", "annotations": hostpath}, "spec": {"predictor": predictor}}
        answer = _raw_review(hook, "/mutate", ISVC, obj)
        assert not answer["allowed"] and "not" in answer["status"]["message"], predictor
    for obj in (
        {"metadata": None, "spec": {"predictor": "p"}},
        {"spec": {"volumes": "v"}},
        {"spec": []},
        {"metadata": [], "spec": {"volumes": [None, 3, {"image": 4}]}},
    ):
        for path in ("/mutate", "/validate", "/record"):
            _raw_review(hook, path, POD, obj)  # answered (200), whatever it says
            _raw_review(hook, path, ISVC, obj)
    _raw_review(hook, "/mutate", POD, None, "DELETE", {"metadata": None})


def _users(hook, version: int = 2) -> set[tuple[str, str]]:
    got = hook.api.get(f"/v1/models/bert/versions/{version}/usage").json()
    return {(u["name"], u["uid"]) for u in got}


def test_usage_converges_on_what_runs(hook):
    pinned = f"{REPO}@{_digest(2)}"
    volumes = [{"name": "m", "image": {"reference": "model://bert:2"}}]
    pod = {"metadata": {"generateName": "web-"}, "spec": {"containers": [], "volumes": volumes}}
    out = _patched(pod, _raw_review(hook, "/mutate", POD, pod))  # provisional: no uid yet
    assert ("web-", "") in _users(hook)
    # the apiserver names it and gives it a uid; the validating review confirms it
    out["metadata"].update({"name": "web-x1", "uid": "u-1"})
    assert _raw_review(hook, "/record", POD, out)["allowed"]
    assert _users(hook) >= {("web-x1", "u-1")} and ("web-", "") not in _users(hook)
    # its deletion is seen: the pod carries the annotations the template got
    assert _raw_review(hook, "/mutate", POD, None, "DELETE", out)["allowed"]
    assert ("web-x1", "u-1") not in _users(hook)
    # mutate, then denied by validate: the provisional record goes
    unknown = {
        "metadata": {"name": "den"},
        "spec": {
            "containers": [],
            "volumes": [
                {"name": "m", "image": {"reference": "model://bert:2"}},
                {"name": "t", "image": {"reference": "r.example/x:latest"}},
            ],
        },
    }
    _raw_review(hook, "/mutate", POD, unknown)
    assert ("den", "") in _users(hook)
    assert not _raw_review(hook, "/validate", POD, unknown)["allowed"]
    assert ("den", "") not in _users(hook)
    # an UPDATE that drops the reference forgets the object
    image = [{"name": "m", "image": {"reference": pinned}}]
    kept = {"metadata": {"name": "upd", "uid": "u-2"}, "spec": {"containers": [], "volumes": image}}
    _raw_review(hook, "/record", POD, kept)
    assert ("upd", "u-2") in _users(hook)
    dropped = {"metadata": {"name": "upd", "uid": "u-2"}, "spec": {"containers": [], "volumes": []}}
    _raw_review(hook, "/record", POD, dropped, "UPDATE", kept)
    assert ("upd", "u-2") not in _users(hook)
    # a provisional record nobody confirms expires (here: made old in the database)
    import sqlite3

    ghost = {"metadata": {"name": "ghost"}, "spec": pod["spec"]}
    _raw_review(hook, "/mutate", POD, ghost)
    assert ("ghost", "") in _users(hook)
    with sqlite3.connect(hook.db.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE workloads SET updated = '2000-01-01 00:00:00.000000' WHERE uid = ''")
    assert ("ghost", "") not in _users(hook)


def test_a_pod_is_never_given_an_oci_layout_reference(hook):
    hook.api.post(
        "/v1/models/local/versions",
        json={
            "digest": _digest(5),
            "repository": "oci:/srv/layouts/local",
            "size": 10,
        },
    ).raise_for_status()
    for mode in ({}, {"modelcar.dev/mode": "hostpath"}):
        pod = {
            "metadata": {"name": "lay", "annotations": mode},
            "spec": {
                "containers": [],
                "volumes": [{"name": "m", "image": {"reference": "model://local:1"}}],
            },
        }
        denied = _raw_review(hook, "/mutate", POD, pod)
        assert not denied["allowed"] and "oci: layout" in denied["status"]["message"], mode
