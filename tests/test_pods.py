"""Pod specs run for real under podman's ``kube play``: the pod KServe makes for a
modelcar, and the chart's API, cache DaemonSet and ``helm test`` pods with the images
``make image`` builds. What ``kube play`` does differently from kubelet, and what the
test's copy of a spec changes for it, is listed in harness/pods.py.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from harness.kserve.modelcar_pod import UID_MODELCAR, configure_modelcar
from harness.localregistry import free_port
from harness.models import write_safetensors
from harness.pods import Node, as_kubelet_would, image_script
from modelcar.contract.nodecache import MOUNT_PATH
from modelcar.format.image import load_model_image
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import ROOT, VERSION, build, run_cli
from tests.test_chart import by_kind, render

# any image with a shell and sha256sum serves as the model server: make image's base
SERVER_IMAGE = image_script.BASE
SERVICE_URL = "http://mc-modelcar-api.models.svc:8080"


def sums(pinned: str) -> tuple[str, int]:
    """``sha256sum -c`` input from the image's file index, and the number of files."""
    ref = parse_ref(pinned)
    index = load_model_image(open_store(ref, StoreOptions(plain_http=True)), ref).index
    lines = [f"{f.sha256.split(':', 1)[1]}  {f.path}" for f in index.files]
    return "\n".join(lines) + "\n", len(lines)


def check_files(wait_for: str) -> list[str]:
    """The model server: wait (bounded) for the model dir, as KServe's runtimes do under
    MODEL_INIT_MODE=async, then check every file of the index through it."""
    return [
        "/bin/sh",
        "-c",
        f"i=0; until [ -L {wait_for} ] || [ -e {wait_for}/ ] || [ $i -ge 300 ]; do "
        f"i=$((i+1)); sleep 0.1; done; ls {wait_for}/ >/dev/null && cd {wait_for}/ && "
        f"printf '%s' \"$SUMS\" | sha256sum -c -",
    ]


def model_dir(root: Path, big: int = 0) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "bert"}\n')
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    write_safetensors(root / "model.safetensors", 1_500_000, seed=3)
    for i in range(big):
        write_safetensors(root / f"shard-{i}.safetensors", 8 << 20, seed=10 + i)
    return root


@pytest.fixture(scope="module")
def node(podman, tmp_path_factory):
    yield Node(tmp_path_factory.mktemp("node-a"))
    # the modelcars the pods pulled from the test registries (vfs: each a full copy)
    pulled = podman("images", "--format", "{{.ID}} {{.Repository}}").stdout.splitlines()
    ids = [line.split()[0] for line in pulled if line.split()[1].startswith("127.0.0.1:")]
    if ids:
        podman("rmi", "-f", *ids, check=False)


def run_pod(podman, node, pod, work, container, **kw) -> tuple[int, str]:
    """Play the pod, wait for ``container`` to exit; its exit code and logs."""
    played, _ = podman.play([as_kubelet_would(pod, node, podman, **kw)], work)
    try:
        name = f"{pod['metadata']['name']}-{container}"
        code = podman.wait(name)
        return code, podman.logs(name)
    finally:
        podman.down(played)


def server_pod(name: str, command: list[str], sums_text: str, **container) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "kserve-container",
                    "image": SERVER_IMAGE,
                    "command": command,
                    "env": [{"name": "SUMS", "value": sums_text}],
                    **container,
                }
            ],
        },
    }


# --- a. KServe's modelcar pod ----------------------------------------------------------


@pytest.fixture(scope="module")
def kserve_model(registry, multiarch_base, tmp_path_factory) -> str:
    """A multi-platform modelcar (amd64 + arm64): podman runs its amd64 variant."""
    model = model_dir(tmp_path_factory.mktemp("kserve") / "m")
    return build(model, f"{registry.host}/kserve/m", "--plain-http", "--base", multiarch_base)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_kserves_modelcar_pod_gives_the_runtime_every_file(
    images, podman, node, api, kserve_model, tmp_path
):
    # the API's KServe answer, as `modelcar resolve --kserve` prints it
    repository, digest = kserve_model.split("@")
    admin = api.client(api.admin)
    admin.post("/v1/models/m/versions", json={"digest": digest, "repository": repository})
    isvc = admin.get("/v1/resolve/m:1", params={"format": "kserve"}).json()
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == f"oci://{kserve_model}"
    assert model["securityContext"] == {"runAsUser": UID_MODELCAR}  # the uid rule

    # the predictor pod KServe makes of it: its runtime container, then the webhook
    sums_text, count = sums(kserve_model)
    runtime = server_pod(
        "isvc-predictor",
        check_files(MOUNT_PATH),
        sums_text,
        securityContext=model["securityContext"],
    )
    pod = configure_modelcar(runtime, model["storageUri"], "kserve-container")
    code, logs = run_pod(podman, node, pod, tmp_path, "kserve-container")
    assert code == 0, logs
    assert logs.count(": OK") == count == 3, logs


def test_kserves_init_check_refuses_an_image_with_an_empty_models_dir(
    images, podman, node, registry, tmp_path
):
    base = run_cli("base", "create", f"{registry.host}/kserve/base", "--plain-http").last_line
    (tmp_path / "ctx" / "empty").mkdir(parents=True)
    (tmp_path / "ctx" / "Containerfile").write_text(f"FROM {base}\nCOPY empty /models\n")
    tag = f"{registry.host}/kserve/empty:1"
    podman(
        "build",
        "-q",
        "--tls-verify=false",
        "--isolation",
        "chroot",
        "-t",
        tag,
        str(tmp_path / "ctx"),
    )
    podman("push", "-q", "--tls-verify=false", "--digestfile", str(tmp_path / "digest"), tag)
    podman("rmi", "-f", tag, check=False)
    image = f"{registry.host}/kserve/empty@{(tmp_path / 'digest').read_text().strip()}"
    runtime = server_pod("empty-predictor", ["/bin/sh", "-c", "echo runtime started"], "")
    pod = as_kubelet_would(
        configure_modelcar(runtime, f"oci://{image}", "kserve-container"), node, podman
    )
    played, proc = podman.play([pod], tmp_path, check=False)
    try:
        assert proc.returncode != 0 and "init container" in proc.stderr, proc.stderr
        init = podman.logs("empty-predictor-modelcar-init")
        assert "NOK ... Prefetched but modelcar is invalid" in init, init
        assert podman.wait("empty-predictor-modelcar-init") == 1
        state = podman(
            "inspect", "--format", "{{.State.Status}}", "empty-predictor-kserve-container"
        ).stdout.strip()
        assert state == "created"  # the runtime never started
    finally:
        podman.down(played)


def test_a_runtime_under_another_uid_than_the_sidecar_is_denied(
    images, podman, node, kserve_model, tmp_path
):
    # uidModelcar unset: the sidecar runs as the image's user (root), the runtime as its
    # own (1000). /proc/<pid>/root of another uid's process is closed to it.
    runtime = server_pod(
        "uid-predictor",
        check_files(MOUNT_PATH),
        sums(kserve_model)[0],
        securityContext={"runAsUser": 1000},
    )
    pod = configure_modelcar(runtime, f"oci://{kserve_model}", "kserve-container", uid=None)
    code, logs = run_pod(podman, node, pod, tmp_path, "kserve-container")
    assert code != 0
    assert "Permission denied" in logs, logs
    readme = (ROOT / "README.md").read_text()
    assert "uidModelcar" in readme and "Permission denied" in readme


# --- b, c, d. The chart's pods ---------------------------------------------------------


class Cluster:
    """The chart's API pod running (c), what the other pods need from it."""

    def __init__(self, podman, node, work: Path, images: dict[str, str]):
        self.podman, self.node, self.work = podman, node, work
        self.api_port, self.metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.values = {
            "image": {"repository": images["modelcar"].rsplit(":", 1)[0], "tag": VERSION},
            "api": {"port": self.api_port, "image": {"repository": "localhost/modelcar-api"}},
            "cache": {
                "metricsPort": self.metrics_port,
                "plainHttp": True,
                "interval": 2,
                "image": {"repository": "localhost/modelcar-cache"},
            },
        }
        self.played: list[Path] = []

    def pod(self, kind: str, name: str, values: dict | None = None) -> dict:
        """The pod template of the chart's ``kind`` (rendered with the Helm SDK) as a Pod."""
        merged = {**self.values, **(values or {})}
        objects = by_kind(render(merged))[kind]
        template = objects[0] if kind == "Pod" else objects[0]["spec"]["template"]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": template["spec"],
        }

    def play(self, pod: dict, **kw) -> Path:
        kw.setdefault("replace", {SERVICE_URL: self.url})
        path, _ = self.podman.play([as_kubelet_would(pod, self.node, self.podman, **kw)], self.work)
        self.played.append(path)
        return path

    def down(self, path: Path) -> None:
        """Stop and remove a pod this test played (its node's files stay)."""
        self.podman.down(path)
        self.played.remove(path)

    def exec(self, container: str, *args: str) -> str:
        return self.podman("exec", container, *args).stdout.strip()

    def close(self) -> None:
        for path in reversed(self.played):
            self.podman.down(path)


def wait_http(url: str, timeout: float = 120, status: int = 200) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:  # bounded
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == status:
                return r
            last = r.status_code
        except httpx.TransportError as e:
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{url}: no {status} within {timeout}s (last: {last})")


@pytest.fixture(scope="module")
def cluster(images, podman, node, tmp_path_factory):
    c = Cluster(podman, node, tmp_path_factory.mktemp("cluster"), images)
    try:
        # c. the API Deployment's pod: `db upgrade` in its init container, then `serve`
        c.play(c.pod("Deployment", "mc-api"))
        wait_http(f"{c.url}/readyz")
        # as NOTES.txt says: kubectl exec deploy/… -- modelcar-api token create
        c.admin = c.exec(
            "mc-api-api", "modelcar-api", "token", "create", "--role", "admin", "--name", "test"
        )
        c.node_token = c.exec(
            "mc-api-api",
            "modelcar-api",
            "token",
            "create",
            "--role",
            "node",
            "--name",
            "daemons",
            "--node",
            "*",
        )
        c.client = httpx.Client(
            base_url=c.url, timeout=30, headers={"Authorization": f"Bearer {c.admin}"}
        )
        yield c
    finally:
        c.close()


def test_the_charts_api_pod_migrates_serves_and_passes_helm_test(cluster, tmp_path):
    ready = httpx.get(f"{cluster.url}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert cluster.client.get("/v1/models").status_code == 200  # the admin token works
    test_pod = cluster.pod("Pod", "mc-helm-test")
    code, logs = run_pod(
        cluster.podman,
        cluster.node,
        test_pod,
        tmp_path,
        "healthz",
        replace={SERVICE_URL: cluster.url},
    )
    assert code == 0, logs
    # the same pod against no API fails: it checks something
    closed = f"http://127.0.0.1:{free_port()}"
    code, logs = run_pod(
        cluster.podman, cluster.node, test_pod, tmp_path, "healthz", replace={SERVICE_URL: closed}
    )
    assert code != 0 and "Connection refused" in logs, logs


def daemon_log_events(logs: str) -> list[dict]:
    out = []
    for line in logs.splitlines():
        start = line.find('{"')
        if start >= 0 and '"event"' in line:
            out.append(json.loads(line[start:]))
    return out


def assign(cluster, name: str, pinned: str, policy: str) -> None:
    repository, digest = pinned.split("@")
    r = cluster.client.post(
        f"/v1/models/{name}/versions", json={"digest": digest, "repository": repository}
    )
    assert r.status_code in (200, 201), r.text
    r = cluster.client.put(
        f"/v1/policies/{policy}", json={"models": [f"{name}:1"], "node_selector": {}}
    )
    assert r.status_code in (200, 201), r.text


def test_the_charts_cache_pod_publishes_a_model_a_server_pod_mounts(cluster, registry, tmp_path):
    pinned = build(model_dir(tmp_path / "m"), f"{registry.host}/node/m", "--plain-http")
    assign(cluster, "m", pinned, "all-nodes")
    digest = pinned.split("@")[1]
    secret = {"mc-modelcar-node-token": {"token": cluster.node_token}}
    daemon = cluster.play(cluster.pod("DaemonSet", "mc-cache"), secrets=secret)
    try:
        # b. the daemon pulls, verifies, publishes and says it is ready
        wait_http(f"http://127.0.0.1:{cluster.metrics_port}/readyz", timeout=120)
        published = cluster.node.path(f"/var/lib/modelcar/models/sha256-{digest[7:]}")
        assert (published / "config.json").is_file()
        logs = cluster.podman.logs("mc-cache-cache")
        assert "node labels: skipped (no Kubernetes API here" in logs, logs
        # as NOTES.txt says: exec into the daemon's container and ask it (its own uid)
        status = json.loads(cluster.exec("mc-cache-cache", "modelcar-cache", "status", "--json"))
        assert status["node"] == cluster.node.name and digest in status["assigned"]
        listed = cluster.exec("mc-cache-cache", "modelcar-cache", "ls")
        assert digest in listed and "ready" in listed and "assigned" in listed
        assert [e["digest"] for e in daemon_log_events(logs) if e["event"] == "ready"] == [digest]
        owner = published.stat()
        assert (owner.st_uid, owner.st_gid) == (65532, 65532)  # the init container's chown
    finally:
        cluster.down(daemon)

    # the API knows the node holds it; a server pod mounts what mode=hostpath answers
    answer = cluster.client.get("/v1/resolve/m:1", params={"mode": "hostpath"}).json()
    assert answer["nodes_ready"] == [cluster.node.name], answer
    spec = answer["pod_spec"]
    assert spec["volumes"][0]["hostPath"]["path"] == f"/var/lib/modelcar/models/sha256-{digest[7:]}"
    sums_text, count = sums(pinned)
    script = check_files(MOUNT_PATH)
    script[-1] += f" && ! touch {MOUNT_PATH}/x 2>/dev/null && echo read-only"
    server = server_pod(
        "model-server",
        script,
        sums_text,
        volumeMounts=spec["volumeMounts"],
        securityContext={"runAsUser": 1000, "runAsNonRoot": True},
    )
    server["spec"]["volumes"] = spec["volumes"]  # its node affinity: this node, checked above
    code, logs = run_pod(cluster.podman, cluster.node, server, tmp_path, "kserve-container")
    assert code == 0, logs
    assert logs.count(": OK") == count and "read-only" in logs, logs


def test_sigterm_mid_pull_stops_the_daemon_in_its_grace_period_and_it_resumes(
    cluster, registry, tmp_path
):
    pinned = build(model_dir(tmp_path / "big", big=3), f"{registry.host}/node/big", "--plain-http")
    digest = pinned.split("@")[1]
    ref = parse_ref(pinned)
    index = load_model_image(open_store(ref, StoreOptions(plain_http=True)), ref).index
    sizes = {f.path: f.size for f in index.files}
    assign(cluster, "big", pinned, "big-everywhere")
    # slow enough to be stopped mid-pull: 2 MiB/s, one layer at a time
    pod = cluster.pod(
        "DaemonSet", "mc-slow", {"cache": {**cluster.values["cache"], "maxRate": "2MiB", "jobs": 1}}
    )
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    models = cluster.node.path("/var/lib/modelcar/models")
    target = models / f"sha256-{digest[7:]}"
    partial: list[str] = []
    watching = threading.Event()

    def watch() -> None:  # every 20 ms: the model dir is whole whenever it is there
        while not watching.wait(0.02):
            if target.exists():
                for path, size in sizes.items():
                    p = target / path
                    if not p.is_file() or p.stat().st_size != size:
                        partial.append(path)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    secret = {"mc-modelcar-node-token": {"token": cluster.node_token}}
    played = cluster.play(pod, secrets=secret)
    container = "mc-slow-cache"
    try:
        deadline = time.monotonic() + 120
        while not any(
            int(n) >= 8 << 20
            for n in re.findall(r"verified \((\d+) bytes", cluster.podman.logs(container))
        ):
            assert time.monotonic() < deadline, cluster.podman.logs(container)  # a shard done
            time.sleep(0.2)
        assert not target.exists()
        started = time.monotonic()
        cluster.podman("stop", "-t", str(grace), container)
        stopped_in = time.monotonic() - started
        state = json.loads(cluster.podman("inspect", container).stdout)[0]["State"]
        logs = cluster.podman.logs(container)
        assert stopped_in < grace and state["ExitCode"] == 0, (stopped_in, state, logs)
        assert [e["event"] for e in daemon_log_events(logs) if e.get("digest") == digest][
            -1
        ] == "stopped"
        assert not target.exists()

        # started again (kubelet restarts the container): it resumes, then publishes
        cluster.podman("start", container)
        wait_http(f"http://127.0.0.1:{cluster.metrics_port}/readyz", timeout=120)
        logs = cluster.podman.logs(container)
        ready = [
            e for e in daemon_log_events(logs) if e["event"] == "ready" and e["digest"] == digest
        ]
        assert ready and ready[-1]["fetched"] <= sum(sizes.values()) - (8 << 20), ready
    finally:
        watching.set()
        watcher.join(timeout=5)
        cluster.down(played)  # one daemon per node (and per status port)
    assert not partial, partial
    for path, size in sizes.items():
        assert (target / path).stat().st_size == size


def test_the_cache_pod_pulls_from_a_private_registry_with_its_mounted_secret_and_ca(
    cluster, auth_registry, tmp_path
):
    """The chart's registryAuth Secret (dockerconfigjson) and registryCA ConfigMap: a TLS
    registry with its own CA and htpasswd, reached by the daemon as uid 65532."""
    config = auth_registry.docker_config(tmp_path / "docker")
    pinned = run_cli(
        "build",
        str(model_dir(tmp_path / "m")),
        f"{auth_registry.host}/private/m",
        "-q",
        "--ca-file",
        str(auth_registry.ca_file),
        env={"DOCKER_CONFIG": str(config)},
    ).last_line
    assign(cluster, "private", pinned, "private-everywhere")
    values = {
        "cache": {
            **cluster.values["cache"],
            "plainHttp": False,
            "registryAuth": {"existingSecrets": ["regcred"]},
            "registryCA": {"configMap": "registry-ca", "key": "ca.crt"},
        }
    }
    pod = cluster.pod("DaemonSet", "mc-private", values)
    secrets = {
        "mc-modelcar-node-token": {"token": cluster.node_token},
        "regcred": {".dockerconfigjson": (config / "config.json").read_text()},
    }
    cas = {"registry-ca": {"ca.crt": auth_registry.ca_file.read_text()}}
    played = cluster.play(pod, secrets=secrets, config_maps=cas)
    try:
        wait_http(f"http://127.0.0.1:{cluster.metrics_port}/readyz", timeout=120)
    finally:
        logs = cluster.podman.logs("mc-private-cache")
        cluster.down(played)
    digest = pinned.split("@")[1]
    assert [e["digest"] for e in daemon_log_events(logs) if e["event"] == "ready"] == [digest]
    published = cluster.node.path(f"/var/lib/modelcar/models/sha256-{digest[7:]}")
    assert (published / "tokenizer" / "vocab.txt").read_text() == "[PAD]\n[UNK]\nhello\n"
