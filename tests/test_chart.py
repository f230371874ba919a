"""The Helm chart, rendered by the real Helm v4 SDK and validated object by object.

No helm binary or cluster exists here (docs/decisions/0018-chart-testing.md):
helm-python-sdk renders and lints; kubernetes-validate checks every object
against the Kubernetes 1.30 and 1.33 schemas, strictly (unknown fields fail).
"""

from __future__ import annotations

from pathlib import Path

import helm_python
import pytest
import yaml
from kubernetes_validate import validate

from modelcar.nodecache import LABEL_PREFIX

CHART = Path(__file__).resolve().parent.parent / "charts" / "modelcar"
PRODUCTION = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())
CRDS = {"ServiceMonitor"}  # not in the Kubernetes schemas; checked by hand below


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


@pytest.mark.parametrize("values", [{}, PRODUCTION], ids=["default", "production"])
@pytest.mark.parametrize("kube", ["1.30", "1.33"])
def test_every_rendered_object_validates(values, kube):
    objects = render(values)
    assert objects
    for obj in objects:
        if obj["kind"] in CRDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            assert obj["spec"]["endpoints"] and obj["spec"]["selector"]["matchLabels"]
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
    assert "--mirror=http://spegel.spegel.svc:5000" in c["command"]
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
    assert "--warm-cri" in c["command"]
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
