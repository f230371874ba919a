"""The Helm chart, rendered by the real Helm v4 SDK and validated object by object.

No helm binary or cluster exists here (docs/decisions/0018-chart-testing.md):
helm-python-sdk renders and lints; kubernetes-validate checks every object
against the Kubernetes 1.30 and 1.33 schemas, strictly (unknown fields fail).
"""

from __future__ import annotations

import base64
import copy
import os
from pathlib import Path

import helm_python
import pytest
import yaml
from kubernetes_validate import validate

from modelcar.contract.nodecache import LABEL_PREFIX

CHART = Path(__file__).resolve().parent.parent / "charts" / "modelcar"
PRODUCTION = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())
CRDS = {"ServiceMonitor", "Certificate", "Issuer"}  # not in the Kubernetes schemas: by hand


def render(values: dict) -> list[dict]:
    with helm_python.Chart.load(CHART) as chart:
        out = chart.render(values, name="mc", namespace="models")
    return [
        doc
        for path, text in sorted(out.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def by_kind(objects: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for o in objects:
        out.setdefault(o["kind"], []).append(o)
    return out


def test_lint_is_clean():
    report = helm_python.lint(CHART, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


APISERVER = {"networkPolicy": {"webhookFrom": [{"ipBlock": {"cidr": "10.0.0.0/24"}}]}}
WEBHOOK = {
    "api": {"webhook": {"enabled": True, "clientCA": {"configMap": "apiserver-ca"}}},
    **APISERVER,
}
WEBHOOK_OWN_CERT = {
    "api": {
        "webhook": {
            "enabled": True,
            "certManager": {"enabled": False},
            "existingSecret": "hook-tls",
            "caBundle": "LS0tLS1CRUdJTg==",
            "clientCA": {"configMap": "apiserver-ca"},
        }
    },
    **APISERVER,
}


@pytest.mark.parametrize(
    "values",
    [{}, PRODUCTION, WEBHOOK, WEBHOOK_OWN_CERT],
    ids=["default", "production", "webhook", "webhook-own-cert"],
)
@pytest.mark.parametrize("kube", ["1.30", "1.33"])
def test_every_rendered_object_validates(values, kube):
    objects = render(values)
    assert objects
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            assert obj["spec"]["endpoints"] and obj["spec"]["selector"]["matchLabels"]
            continue
        if obj["kind"] in CRDS:
            assert obj["apiVersion"] == "cert-manager.io/v1"
            continue
        validate(obj, kube, strict=True)


def test_secure_defaults():
    kinds = by_kind(render({}))
    api = kinds["Deployment"][0]["spec"]["template"]["spec"]
    daemon = kinds["DaemonSet"][0]["spec"]["template"]["spec"]
    assert api["securityContext"]["runAsNonRoot"] is True
    assert api["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert daemon["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for spec in (api, daemon):
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
    assert daemon["containers"][0]["securityContext"]["runAsNonRoot"] is True
    # the only root step hands the hostPath to the daemon, with CHOWN alone
    init = daemon["initContainers"][0]["securityContext"]
    assert init["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    # RBAC: nodes, get and patch, nothing else; the policy narrows it to the own Node
    rules = kinds["ClusterRole"][0]["rules"]
    assert rules == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    policy = kinds["ValidatingAdmissionPolicy"][0]["spec"]
    assert "authentication.kubernetes.io/node-name" in policy["validations"][0]["expression"]
    assert f'"{LABEL_PREFIX}/"' in policy["validations"][1]["expression"]


def test_the_daemon_gets_its_node_name_and_cache_dir():
    kinds = by_kind(render(PRODUCTION))
    daemon = kinds["DaemonSet"][0]["spec"]
    c = daemon["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["MODELCAR_API"]["value"] == "http://mc-modelcar-api.models.svc:8080"
    assert "--source=nodes" in c["args"]
    volume = daemon["template"]["spec"]["volumes"][0]["hostPath"]
    assert volume == {"path": "/mnt/nvme/modelcar", "type": "DirectoryOrCreate"}
    assert daemon["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%"
    assert daemon["template"]["spec"]["priorityClassName"] == "system-node-critical"
    api = kinds["Deployment"][0]["spec"]
    assert api["replicas"] == 3
    db = {e["name"]: e for e in api["template"]["spec"]["containers"][0]["env"]}
    assert db["MODELCAR_API_DB"]["valueFrom"]["secretKeyRef"]["name"] == "modelcar-db"
    assert db["MODELCAR_API_CACHE_ROOT"]["value"] == "/mnt/nvme/modelcar"
    assert "PersistentVolumeClaim" not in kinds  # PostgreSQL: no SQLite volume
    # --warm-cri: the CRI socket is mounted, and only then does the daemon run as root
    assert "--warm-cri" in c["args"]
    cri = daemon["template"]["spec"]["volumes"][-1]["hostPath"]
    assert cri == {"path": "/run/containerd/containerd.sock", "type": "Socket"}
    assert c["securityContext"]["runAsUser"] == 0
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"api": {"replicas": "three"}}, "replicas"),
        ({"cache": {"maxPercent": 150}}, "maxPercent"),
        ({"cache": {"cacheDir": "relative/path"}}, "cacheDir"),
        # the root init container chowns cacheDir: system directories are refused
        ({"cache": {"cacheDir": "/etc"}}, "cacheDir"),
        ({"cache": {"cacheDir": "/var/lib/kubelet"}}, "cacheDir"),
        ({"cache": {"cacheDir": "/."}}, "cacheDir"),
        ({"cache": {"cacheDir": "/"}}, "cacheDir"),
        ({"cache": {"cacheDir": "/var/lib/modelcar/../kubelet"}}, "cacheDir"),
        ({"cache": {"cacheDir": "/mnt/kubelet"}}, "cacheDir"),
        ({"cache": {"cacheDir": "/usr/local"}}, "cacheDir"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_the_schema_rejects_wrong_values(values, needle):
    with pytest.raises(helm_python.HelmError) as err:
        render(values)
    assert needle in str(err.value)


def test_sqlite_allows_one_replica_only():
    with pytest.raises(helm_python.HelmError) as err:
        render({"api": {"replicas": 2}})
    assert "PostgreSQL" in str(err.value)


@pytest.mark.parametrize(
    "path", ["/var/lib/modelcar", "/var/cache/modelcar/x", "/mnt/nvme/modelcar", "/data/mc"]
)
def test_the_schema_takes_cache_dirs_under_the_allowed_prefixes(path):
    daemon = by_kind(render({"cache": {"cacheDir": path}}))["DaemonSet"][0]
    assert daemon["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"] == path


def test_the_node_token_is_a_mounted_file_and_not_optional():
    for values in ({}, PRODUCTION):
        spec = by_kind(render(values))["DaemonSet"][0]["spec"]["template"]["spec"]
        c = spec["containers"][0]
        env = {e["name"]: e for e in c["env"]}
        assert "MODELCAR_API_TOKEN" not in env  # no secret in the environment
        assert all("secretKeyRef" not in e.get("valueFrom", {}) for e in c["env"])
        path = env["MODELCAR_API_TOKEN_FILE"]["value"]
        mount = next(m for m in c["volumeMounts"] if m["name"] == "token")
        assert mount["readOnly"] is True and path.startswith(mount["mountPath"] + "/")
        volume = next(v for v in spec["volumes"] if v["name"] == "token")["secret"]
        assert "optional" not in volume or volume["optional"] is False
        assert volume["secretName"] == (
            values.get("cache", {}).get("apiToken", {}).get("secretName")
            or "mc-modelcar-node-token"
        )
        # every init container has resources, like the main containers
        kinds = by_kind(render(values))
        for pod in (spec, kinds["Deployment"][0]["spec"]["template"]["spec"]):
            for init in pod.get("initContainers", []):
                assert init["resources"]["requests"] and init["resources"]["limits"]
    # a non-root daemon reads the 0440 token file through its group
    spec = by_kind(render({}))["DaemonSet"][0]["spec"]["template"]["spec"]
    assert spec["securityContext"]["fsGroup"] == 65532


def test_warm_cri_carries_a_warning_in_values_and_readme():
    values = (CHART / "values.yaml").read_text()
    assert "WARNING: the CRI socket" in values
    readme = " ".join((CHART.parent.parent / "README.md").read_text().split())
    assert "WARNING" in readme and "node-root equivalent" in readme


def _policy(values: dict, kind: str) -> dict:
    return next(
        o for o in by_kind(render(values))["NetworkPolicy"] if o["metadata"]["name"].endswith(kind)
    )


def test_network_policies_name_who_may_connect_and_where_daemons_may_go():
    values = {**PRODUCTION, "networkPolicy": PRODUCTION["networkPolicy"]}
    api = _policy(values, "-api")["spec"]
    cache = _policy(values, "-cache")["spec"]
    assert api["policyTypes"] == cache["policyTypes"] == ["Ingress", "Egress"]
    # every ingress rule names its peers: nobody else may connect
    for spec in (api, cache):
        assert spec["ingress"] and all(rule.get("from") for rule in spec["ingress"])
    peers = api["ingress"][0]["from"]
    assert {"kubernetes.io/metadata.name": "kserve"} in [
        p.get("namespaceSelector", {}).get("matchLabels") for p in peers
    ]
    assert any(
        p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
        == "cache"
        for p in peers
    )
    metrics = cache["ingress"][0]
    assert metrics["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    assert metrics["ports"] == [{"port": 9090, "protocol": "TCP"}]
    # the daemons reach the API, DNS, the registry CIDRs and the Kubernetes API only
    targets = [peer for rule in cache["egress"] for peer in rule["to"]]
    cidrs = sorted(p["ipBlock"]["cidr"] for p in targets if "ipBlock" in p)
    assert cidrs == ["10.0.0.1/32", "10.30.0.0/16", "10.40.0.0/16"]
    assert all("ipBlock" not in p or p["ipBlock"]["cidr"] != "0.0.0.0/0" for p in targets)
    dns = [r for r in cache["egress"] if {"port": 53, "protocol": "UDP"} in r.get("ports", [])]
    assert dns
    # and the API reaches DNS and what apiEgress names (its database)
    assert any(
        p.get("ipBlock", {}).get("cidr") == "10.20.0.5/32"
        for rule in api["egress"]
        for p in rule["to"]
    )


def test_the_source_chain_reaches_the_daemon_as_it_parses_it(monkeypatch):
    from modelcar.cache_daemon.sources import chain, parse_source

    values = {
        **PRODUCTION,
        "cache": {
            **PRODUCTION["cache"],
            "serve": {"enabled": False},
            "mirrors": ["http://spegel.spegel.svc:5000"],
            "sources": [
                {"kind": "spegel", "url": "http://$NODE_IP:30020"},
                {"kind": "dragonfly", "url": "http://$NODE_IP:4001"},
            ],
        },
    }
    c = _containers(render(values))["DaemonSet/cache"]
    sources = [a.removeprefix("--source=") for a in c["args"] if a.startswith("--source=")]
    assert sources == ["spegel=http://$NODE_IP:30020", "dragonfly=http://$NODE_IP:4001"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    monkeypatch.setenv("NODE_IP", "10.40.1.7")
    specs = chain([parse_source(s) for s in sources], ["http://spegel.spegel.svc:5000"])
    assert [(s.kind, s.url) for s in specs] == [
        ("spegel", "http://10.40.1.7:30020"),
        ("dragonfly", "http://10.40.1.7:4001"),
        ("mirror", "http://spegel.spegel.svc:5000"),
        ("origin", None),
    ]
    # no chain, no NODE_IP (and nothing kube play or a kubelet must fill in)
    assert "NODE_IP" not in {e["name"] for e in _containers(render({}))["DaemonSet/cache"]["env"]}
    with pytest.raises(helm_python.HelmError) as err:
        render({"cache": {"sources": [{"kind": "neighbour", "url": "http://x:1"}]}})
    assert "kind" in str(err.value)
    with pytest.raises(helm_python.HelmError) as err:
        render({**PRODUCTION, "networkPolicy": {**PRODUCTION["networkPolicy"], "peerCIDRs": []}})
    assert "peerCIDRs" in str(err.value)


def test_the_node_serves_with_the_fleet_token_and_containerd_asks_it_first(monkeypatch):
    """The shipped fleet setup: every daemon serves on a hostPort with the fleet token
    (a chart-made Secret), pulls from the nodes source, and an init container writes
    containerd's hosts.toml with the same command the tests run against containerd."""
    from modelcar.cache_daemon.config import DaemonConfig, PullConfig

    objects = render(PRODUCTION)
    c = _containers(objects)["DaemonSet/cache"]
    args = c["args"]
    assert "--source=nodes" in args
    assert "--serve=0.0.0.0:5050" in args and "--serve-url=http://$(NODE_IP):5050" in args
    assert "--fleet-token-file=/etc/modelcar/fleet/token" in args
    assert {"name": "serve", "containerPort": 5050, "hostPort": 5050, "protocol": "TCP"} in c[
        "ports"
    ]
    secret = next(o for o in objects if o["kind"] == "Secret" and "fleet" in o["metadata"]["name"])
    assert len(base64.b64decode(secret["data"]["token"])) == 48
    ds = next(o for o in objects if o["kind"] == "DaemonSet")["spec"]["template"]["spec"]
    init = next(i for i in ds["initContainers"] if i["name"] == "containerd-hosts")
    assert init["args"][:2] == ["modelcar-cache", "hosts-toml"]
    assert "--registry=registry.example.com" in init["args"]
    volumes = {v["name"]: v for v in ds["volumes"]}
    assert volumes["certs-d"]["hostPath"]["path"] == "/etc/containerd/certs.d"
    assert volumes["fleet-token"]["secret"]["secretName"] == secret["metadata"]["name"]
    # the flags pass the daemon's own checks
    token = (tmp := Path(os.environ.get("TMPDIR", "/tmp"))) / f"fleet-{os.getpid()}"
    token.write_text("x" * 48)
    try:
        monkeypatch.setenv("NODE_IP", "10.40.1.7")
        cfg = DaemonConfig(
            node="n",
            cache_dir=str(tmp),
            api="http://api",
            serve="0.0.0.0:5050",
            serve_url="http://10.40.1.7:5050",
            pull=PullConfig(sources=["nodes"], fleet_token_file=str(token)),
        ).check()
        assert cfg.advertised() == "http://10.40.1.7:5050"
    finally:
        token.unlink()
    # the daemons accept the serve port from the nodes' addresses only
    policy = next(
        o
        for o in objects
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-cache")
    )
    serve_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 5050)
    assert serve_rule["from"] == [{"ipBlock": {"cidr": "10.40.0.0/16"}}]
    # serving without a chain: the token is still mounted; a nodes chain alone too
    alone = _containers(render({"cache": {"sources": [{"kind": "nodes"}]}}))["DaemonSet/cache"]
    assert "--fleet-token-file=/etc/modelcar/fleet/token" in alone["args"]


def test_streamed_start_opens_the_serve_port_to_the_serving_pods_and_tells_the_api():
    streams = [{"namespaceSelector": {"matchLabels": {"modelcar.dev/streams": "true"}}}]
    values = copy.deepcopy(PRODUCTION)
    values["cache"]["serve"]["stream"] = {"from": streams, "anonymous": True}
    values["api"]["streamSecret"] = "fleet-copy"
    objects = render(values)
    args = _containers(objects)["DaemonSet/cache"]["args"]
    assert "--s3-anonymous" in args
    env = {e["name"]: e.get("value") for e in _containers(objects)["Deployment/api"]["env"]}
    assert env["MODELCAR_API_STREAM_PORT"] == "5050"
    assert env["MODELCAR_API_STREAM_SECRET"] == "fleet-copy"
    policy = next(
        o
        for o in objects
        if o["kind"] == "NetworkPolicy" and o["metadata"]["name"].endswith("-cache")
    )
    rules = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 5050]
    assert [r["from"] for r in rules] == [[{"ipBlock": {"cidr": "10.40.0.0/16"}}], streams]
    # off by default: signed reads only, no policy rule for pods
    plain = render(PRODUCTION)
    assert "--s3-anonymous" not in _containers(plain)["DaemonSet/cache"]["args"]
    with pytest.raises(helm_python.HelmError):
        render({"api": {"streamSecret": "Not_A_Name"}})


def test_network_policy_without_registry_cidrs_is_refused():
    with pytest.raises(helm_python.HelmError) as err:
        render({"networkPolicy": {"enabled": True}})
    assert "registryCIDRs" in str(err.value)


# --- the node policy's CEL, evaluated by an independent CEL implementation ---------------


def _cel_policy() -> tuple[dict, list[tuple[str, str]]]:
    policy = by_kind(render({}))["ValidatingAdmissionPolicy"][0]["spec"]
    variables = {v["name"]: v["expression"] for v in policy["variables"]}
    return variables, [(v["expression"], v["message"]) for v in policy["validations"]]


def _admit(old: dict, new: dict, node: str = "gpu-1") -> list[str]:
    """The messages of the validations that deny this old -> new Node update."""
    import celpy

    env = celpy.Environment()
    variables, validations = _cel_policy()
    request = {
        "userInfo": {"username": "sa", "extra": {"authentication.kubernetes.io/node-name": [node]}}
    }
    activation = {"object": new, "oldObject": old, "request": request}
    values = {
        name: env.program(env.compile(expr)).evaluate(
            {k: celpy.json_to_cel(v) for k, v in activation.items()}
        )
        for name, expr in variables.items()
    }
    denied = []
    for expr, message in validations:
        act = {k: celpy.json_to_cel(v) for k, v in activation.items()}
        act["variables"] = celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): v for k, v in values.items()}
        )
        result = env.program(env.compile(expr)).evaluate(act)
        if not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            denied.append(message)
    return denied


NODE = {
    "metadata": {
        "name": "gpu-1",
        "labels": {"gpu": "a100", f"{LABEL_PREFIX}/sha256-aaaa": "ready"},
        "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
    },
    "spec": {"podCIDR": "10.1.0.0/24", "taints": [{"key": "gpu", "effect": "NoSchedule"}]},
}


def _changed(**patch) -> dict:
    import copy

    node = copy.deepcopy(NODE)
    for path, value in patch.items():
        where = node
        *parents, last = path.split("__")
        for p in parents:
            where = where.setdefault(p, {})
        if value is None:
            where.pop(last, None)
        else:
            where[last] = value
    return node


@pytest.mark.parametrize(
    "new, allowed",
    [
        (
            _changed(
                metadata__labels={
                    **NODE["metadata"]["labels"],
                    f"{LABEL_PREFIX}/sha256-bbbb": "ready",
                }
            ),
            True,
        ),
        (_changed(metadata__labels={"gpu": "a100"}), True),  # drop our own label
        (_changed(metadata__labels={**NODE["metadata"]["labels"], "gpu": "h100"}), False),
        (_changed(spec__taints=[]), False),
        (_changed(spec__unschedulable=True), False),
        (_changed(metadata__annotations={"x": "y"}), False),
        (_changed(metadata__annotations=None), False),
        (_changed(metadata__finalizers=["example.com/hold"]), False),
    ],
    ids=[
        "add-own-label",
        "drop-own-label",
        "other-label",
        "taints",
        "unschedulable",
        "annotations",
        "drop-annotations",
        "finalizers",
    ],
)
def test_the_node_policy_allows_only_modelcar_labels(new, allowed):
    denied = _admit(NODE, new)
    assert (denied == []) is allowed, denied


def test_the_node_policy_allows_only_the_own_node():
    assert _admit(NODE, NODE, node="gpu-2") == [
        "the modelcar cache daemon may change only the Node it runs on"
    ]


def test_registry_pull_secrets_are_mounted_read_only_and_merged():
    role = {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/pull"}
    values = {
        "cache": {
            "registryAuth": {"existingSecrets": ["harbor-robot", "ghcr-pull"]},
            "serviceAccount": {"annotations": role},
        }
    }
    kinds = by_kind(render(values))
    for kube in ("1.30", "1.33"):
        for obj in kinds["DaemonSet"] + kinds["ServiceAccount"]:
            validate(obj, kube, strict=True)
    spec = kinds["DaemonSet"][0]["spec"]["template"]["spec"]
    c = spec["containers"][0]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for name in ("harbor-robot", "ghcr-pull"):
        m = mounts[f"/etc/modelcar/registry-auth/{name}"]
        assert m["readOnly"] is True
        secret = volumes[m["name"]]["secret"]
        assert secret["secretName"] == name
        assert secret["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
        assert f"--docker-config=/etc/modelcar/registry-auth/{name}" in c["args"]
    order = [a for a in c["args"] if a.startswith("--docker-config=")]
    assert order == [
        f"--docker-config=/etc/modelcar/registry-auth/{n}" for n in ("harbor-robot", "ghcr-pull")
    ]
    assert all("DOCKER" not in e["name"] for e in c["env"])  # no secrets in env
    sa = next(o for o in kinds["ServiceAccount"] if o["metadata"]["name"].endswith("-cache"))
    assert sa["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/pull"
    }


def _containers(objects: list[dict]) -> dict[str, dict]:
    out = {}
    for o in objects:
        if o["kind"] not in ("Pod", "Deployment", "DaemonSet"):
            continue
        spec = o["spec"]["template"]["spec"] if o["kind"] != "Pod" else o["spec"]
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            out[f"{o['kind']}/{c['name']}"] = c
    return out


def test_pods_keep_the_images_entrypoint_and_can_take_a_role_image():
    pods = _containers(render({}))
    assert set(pods) == {
        "DaemonSet/own-cache-dir",
        "DaemonSet/cache",
        "Deployment/migrate",
        "Deployment/api",
        "Pod/healthz",
    }
    for name, c in pods.items():
        assert "command" not in c, name  # dumb-init (ENTRYPOINT) stays PID 1: SIGTERM arrives
        assert c["image"] == "ghcr.io/modelcar/modelcar:0.1.0", name
    pinned = "sha256:" + "c" * 64
    roles = _containers(
        render(
            {
                "image": {"repository": "r.example/modelcar", "digest": "sha256:" + "a" * 64},
                "cache": {"image": {"repository": "r.example/modelcar-cache", "digest": pinned}},
                "api": {"image": {"repository": "r.example/modelcar-api", "tag": "0.1.1"}},
            }
        )
    )
    assert roles["DaemonSet/cache"]["image"] == f"r.example/modelcar-cache@{pinned}"
    assert roles["DaemonSet/own-cache-dir"]["image"] == f"r.example/modelcar-cache@{pinned}"
    # the global digest pins the global repository only
    assert roles["Deployment/api"]["image"] == "r.example/modelcar-api:0.1.1"
    assert roles["Pod/healthz"]["image"] == "r.example/modelcar-api:0.1.1"
    daemon = by_kind(render({}))["DaemonSet"][0]["spec"]["template"]["spec"]
    assert daemon["terminationGracePeriodSeconds"] == 30


def test_a_registry_ca_configmap_is_mounted_and_trusted():
    values = {"cache": {"registryCA": {"configMap": "corp-ca", "key": "root.pem"}}}
    spec = by_kind(render(values))["DaemonSet"][0]["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert "--ca-file=/etc/modelcar/registry-ca/root.pem" in c["args"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "registry-ca")
    assert mount == {
        "name": "registry-ca",
        "mountPath": "/etc/modelcar/registry-ca",
        "readOnly": True,
    }
    volume = next(v for v in spec["volumes"] if v["name"] == "registry-ca")
    assert volume["configMap"] == {
        "name": "corp-ca",
        "items": [{"key": "root.pem", "path": "root.pem"}],
    }
    plain = by_kind(render({}))["DaemonSet"][0]["spec"]["template"]["spec"]
    assert not any(a.startswith("--ca-file") for a in plain["containers"][0]["args"])


# --- the admission webhooks -------------------------------------------------------------


def test_the_webhook_configurations_are_safe_by_default():
    kinds = by_kind(render(WEBHOOK))
    (mutating,) = kinds["MutatingWebhookConfiguration"][0]["webhooks"]
    validating, recording = kinds["ValidatingWebhookConfiguration"][0]["webhooks"]
    assert recording["clientConfig"]["service"]["path"] == "/record"
    assert recording["failurePolicy"] == "Ignore"  # it only records: never blocks an object
    assert {e["key"] for e in recording["namespaceSelector"]["matchExpressions"]} == {
        "kubernetes.io/metadata.name"
    }  # every namespace, not only the validated ones
    # the port answers the apiserver only: its client certificate, and a NetworkPolicy
    (policy,) = [p for p in kinds["NetworkPolicy"] if p["metadata"]["name"].endswith("-webhook")]
    hook_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 8443)
    assert hook_rule["from"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
    for hook, path in ((mutating, "/mutate"), (validating, "/validate")):
        assert hook["sideEffects"] == "NoneOnDryRun" and hook["timeoutSeconds"] <= 5
        assert hook["failurePolicy"] == "Fail" and hook["admissionReviewVersions"] == ["v1"]
        assert hook["clientConfig"]["service"] == {
            "name": "mc-modelcar-api",
            "namespace": "models",
            "path": path,
            "port": 8443,
        }
        skipped = [
            e
            for e in hook["namespaceSelector"]["matchExpressions"]
            if e["key"] == "kubernetes.io/metadata.name"
        ]
        assert skipped == [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["kube-system", "models"],
            }
        ]
    assert {"key": "modelcar.dev/validate", "operator": "In", "values": ["enabled"]} in (
        validating["namespaceSelector"]["matchExpressions"]
    )
    for config in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        notes = kinds[config][0]["metadata"]["annotations"]
        assert notes["cert-manager.io/inject-ca-from"] == "models/mc-modelcar-api-webhook"
    (cert,) = kinds["Certificate"]
    assert "mc-modelcar-api.models.svc" in cert["spec"]["dnsNames"]
    api = next(d for d in kinds["Deployment"] if d["metadata"]["name"] == "mc-modelcar-api")
    args = api["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--webhook-port") + 1] == "8443"
    own = by_kind(render(WEBHOOK_OWN_CERT))
    hook = own["MutatingWebhookConfiguration"][0]["webhooks"][0]
    assert hook["clientConfig"]["caBundle"] == "LS0tLS1CRUdJTg==" and "Certificate" not in own
    api = next(d for d in own["Deployment"] if d["metadata"]["name"] == "mc-modelcar-api")
    assert "--webhook-client-ca" in api["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"api": {"webhook": {"enabled": True, "timeoutSeconds": 10}}}, "timeoutSeconds"),
        (
            {
                "api": {
                    "webhook": {
                        "enabled": True,
                        "certManager": {"enabled": False},
                        "existingSecret": "s",
                        "allowAnyClient": True,
                    }
                },
                **APISERVER,
            },
            "caBundle",
        ),
        # secure by default: no client CA, or no peers for the webhook port, is refused
        ({"api": {"webhook": {"enabled": True}}, **APISERVER}, "clientCA.configMap"),
        (
            {"api": {"webhook": {"enabled": True, "clientCA": {"configMap": "ca"}}}},
            "networkPolicy.webhookFrom",
        ),
    ],
)
def test_webhook_values_that_cannot_work_are_refused(values, needle):
    with pytest.raises(Exception, match=needle):
        render(values)


def _matches(obj: dict | None, operation: str = "CREATE", old: dict | None = None) -> bool:
    import celpy

    (hook,) = by_kind(render(WEBHOOK))["MutatingWebhookConfiguration"][0]["webhooks"]
    (condition,) = hook["matchConditions"]
    env = celpy.Environment()
    activation = {"object": obj, "oldObject": old, "request": {"operation": operation}}
    result = env.program(env.compile(condition["expression"])).evaluate(
        {k: celpy.json_to_cel(v) for k, v in activation.items()}
    )
    return bool(result)


def test_only_objects_that_name_a_model_reach_the_mutating_webhook():
    def isvc(field: str, uri: str) -> dict:
        return {"spec": {"predictor": {field: {"storageUri": uri}}}}

    volume = {"spec": {"volumes": [{"name": "m", "image": {"reference": "model://bert@prod"}}]}}
    template = {"spec": {"template": {"spec": volume["spec"]}}}
    assert _matches(isvc("model", "model://bert@prod"))
    assert _matches(isvc("sklearn", "model://bert:3"))
    assert _matches({"spec": {"predictor": {"storageUris": [{"uri": "model://bert@prod"}]}}})
    assert _matches(volume) and _matches(template)
    # every storage field of the CRD: transformer, explainer (and its art), canaries
    uri = "model://bert@prod"
    assert _matches({"spec": {"transformer": {"storageUris": [{"uri": uri}]}}})
    assert _matches({"spec": {"explainer": {"storageUris": [{"uri": uri}]}}})
    assert _matches({"spec": {"explainer": {"art": {"storageUri": uri}}}})
    assert _matches({"spec": {"canary": [{"predictor": {"onnx": {"storageUri": uri}}}]}})
    assert not _matches({"spec": {"canary": [{"predictor": {"onnx": {"storageUri": "s3://x"}}}]}})
    assert not _matches(isvc("model", "oci://r.example/bert@sha256:" + "a" * 64))
    assert not _matches({"spec": {"containers": [{"name": "c", "image": "model://x"}]}})
    pinned = {"metadata": {"annotations": {"modelcar.dev/digest": "sha256:" + "a" * 64}}}
    assert _matches(None, "DELETE", pinned)
    assert not _matches(None, "DELETE", {"metadata": {"name": "other"}})
