"""The daemon: budget and eviction, ENOSPC, scrub, and the loop with the API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from harness.localregistry import free_port
from harness.models import write_safetensors
from modelcar.oci.digest import hex_of
from tests.helpers import (
    ROOT,
    assert_one_line_error,
    build,
    cache_cli,
    daemon_once,
    published,
    pull,
    stop_process,
    tree,
)

MiB = 1 << 20


def _model(root, seed, size=3 * MiB):
    root.mkdir(parents=True)
    write_safetensors(root / "model.safetensors", size, seed=seed)
    return root


def _images(registry, tmp_path, names, size=3 * MiB):
    refs = {}
    for i, name in enumerate(names):
        model = _model(tmp_path / "src" / name, seed=100 + i, size=size)
        refs[name] = build(model, f"{registry.host}/daemon/{name}", "--plain-http")
    return refs


def _run_once(cache, config, refs, names, *extra):
    config.write_text(json.dumps({"models": [refs[n] for n in names]}))
    return daemon_once(cache, config, *extra)


def _states(cache) -> dict[str, str]:
    out = {}
    for line in cache_cli("ls", "--cache-dir", str(cache), "--json").stdout.splitlines():
        r = json.loads(line)
        out[r["digest"]] = r["state"]
    return out


def _dig(ref):
    return ref.split("@")[1]


def test_budget_evicts_lru_unassigned_and_never_assigned(registry, tmp_path):
    refs = _images(registry, tmp_path, ["a", "b", "c"])
    cache, config = tmp_path / "cache", tmp_path / "models.yaml"
    # two 3 MiB models and the 2 MB base they share (kept blobs count against it)
    budget = ["--max-bytes", "9MiB", "--high-watermark", "1", "--low-watermark", "1"]
    assert _run_once(cache, config, refs, ["a", "b"], *budget).code == 0
    assert len(published(cache)) == 2

    # a third assigned model does not fit: it fails, the assigned ones stay
    r = _run_once(cache, config, refs, ["a", "b", "c"], *budget)
    assert "insufficient space" in r.stderr
    states = _states(cache)
    assert states[_dig(refs["a"])] == states[_dig(refs["b"])] == "ready"
    assert states[_dig(refs["c"])] == "failed"

    # now only b, then only a: both stay while they fit, a used last
    _run_once(cache, config, refs, ["b"], *budget)
    time.sleep(0.05)
    _run_once(cache, config, refs, ["a"], *budget)
    # c needs room: the least recently used unassigned model (b) goes, a stays
    assert _run_once(cache, config, refs, ["c"], *budget).code == 0
    states = _states(cache)
    assert states[_dig(refs["b"])] == "evicted"
    assert states[_dig(refs["a"])] == states[_dig(refs["c"])] == "ready"
    assert len(published(cache)) == 2


def test_enospc_mid_pull_fails_cleanly_and_keeps_ready_models(registry, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], check=True)
    try:
        refs = _images(registry, tmp_path, ["tiny"], size=MiB // 2)
        refs |= _images(registry, tmp_path / "more", ["big"], size=5 * MiB)
        cache = small / "cache"
        _, ready = pull(cache, refs["tiny"], "--plain-http")
        filler = small / "filler"

        def fill_when_staging_starts():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if any((cache / "staging").glob("sha256-*/*")):
                    with open(filler, "wb") as f:
                        try:
                            while True:
                                f.write(b"\0" * 65536)
                        except OSError:
                            return
                time.sleep(0.005)

        t = threading.Thread(target=fill_when_staging_starts)
        t.start()
        r, _ = pull(cache, refs["big"], "--plain-http", "--max-rate", "4MiB", check=False)
        t.join(timeout=60)
        assert_one_line_error(r, "no space left")
        filler.unlink()
        assert published(cache) == [f"sha256-{hex_of(ready['digest'])}"]
        assert cache_cli("verify", "--cache-dir", str(cache)).code == 0
        assert [p for p in (cache / "staging").iterdir()] == []
        # "failed" when the state database could still be written; when the filler had
        # taken the space the staging files freed, the row stays "pulling" (a daemon's
        # next start resets it): never "ready"
        assert _states(cache)[_dig(refs["big"])] in ("failed", "pending", "pulling")
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_scrub_quarantines_a_corrupted_model_and_pulls_it_again(registry, tmp_path):
    refs = _images(registry, tmp_path, ["s"])
    cache, config = tmp_path / "cache", tmp_path / "models.yaml"
    assert _run_once(cache, config, refs, ["s"], "--scrub-every", "0").code == 0
    model_dir = cache / "models" / f"sha256-{hex_of(_dig(refs['s']))}"
    good = tree(model_dir)
    victim = model_dir / "model.safetensors"
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x10
    victim.write_bytes(bytes(data))

    r = _run_once(cache, config, refs, ["s"], "--scrub-every", "0")
    assert r.code == 0
    assert '"event": "quarantined"' in r.stderr
    assert len(list((cache / "quarantine").iterdir())) == 1
    assert tree(model_dir) == good  # pulled again
    assert _states(cache)[_dig(refs["s"])] == "ready"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_daemon_follows_policies_and_aliases_through_the_api(registry, api, tmp_path):
    refs = _images(registry, tmp_path, ["v1", "v2"])
    admin = api.client(api.admin)
    for name in ("v1", "v2"):
        repo, digest = refs[name].split("@")
        admin.post(
            "/v1/models/m/versions", json={"digest": digest, "repository": repo, "size": 3 * MiB}
        ).raise_for_status()
    admin.put("/v1/models/m/aliases/prod", json={"version": 1}).raise_for_status()
    admin.put(
        "/v1/policies/gpus", json={"models": ["m@prod"], "node_selector": {"gpu": "a100"}}
    ).raise_for_status()
    cache = tmp_path / "cache"
    port = free_port()
    env = {**os.environ, "MODELCAR_API_TOKEN": api.token("node", "gpu-1")}
    args = [
        sys.executable,
        "-m",
        "modelcar.cache_daemon.cli",
        "run",
        "--node",
        "gpu-1",
        "--label",
        "gpu=a100",
        "--api",
        api.url,
        "--cache-dir",
        str(cache),
        "--plain-http",
        "--interval",
        "0.3",
        "--listen",
        f"127.0.0.1:{port}",
    ]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:

        def wait_for(check, what):
            deadline = time.monotonic() + 60
            while not check():
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                assert time.monotonic() < deadline, what
                time.sleep(0.1)

        def ready_on(ref):
            return admin.get(f"/v1/resolve/{ref}").json()["nodes_ready"] == ["gpu-1"]

        wait_for(lambda: ready_on("m@prod"), "v1 ready on gpu-1")
        status = httpx.get(f"http://127.0.0.1:{port}/readyz")
        assert status.status_code == 200
        node = admin.get("/v1/nodes/gpu-1").json()
        assert node["labels"] == {"gpu": "a100"} and node["disk"]["used_bytes"] >= 3 * MiB

        # moving prod re-targets the node; the old version stays while there is room
        admin.put("/v1/models/m/aliases/prod", json={"version": 2}).raise_for_status()
        wait_for(lambda: ready_on("m@prod"), "v2 ready on gpu-1")
        assert ready_on("m:1")
        assert len(published(cache)) == 2
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "modelcar_cache_pulled_bytes_total" in metrics
        assert 'modelcar_cache_models{state="ready"} 2.0' in metrics
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        err = stop_process(proc, 30)
    assert proc.returncode == 0, err[-2000:]
    assert '"event": "ready"' in err


def test_one_daemon_per_cache_dir(tmp_path):
    cache = tmp_path / "cache"
    config = tmp_path / "models.yaml"
    config.write_text("models: []\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelcar.cache_daemon.cli",
            "run",
            "--node",
            "n",
            "--cache-dir",
            str(cache),
            "--config",
            str(config),
            "--listen",
            "",
            "--interval",
            "30",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (cache / ".lock").exists() or not (cache / ".lock").read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = cache_cli(
            "run",
            "--node",
            "n",
            "--cache-dir",
            str(cache),
            "--config",
            str(config),
            "--once",
            "--listen",
            "",
            check=False,
        )
        assert_one_line_error(second, "in use", str(holder.pid))
        # a second writer is refused; reading beside the daemon is fine
        assert cache_cli("ls", "--cache-dir", str(cache)).code == 0
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.communicate(timeout=30)


def test_run_input_errors_are_one_line(tmp_path):
    both = cache_cli("run", "--node", "n", "--cache-dir", str(tmp_path / "c"), check=False)
    assert_one_line_error(both, "exactly one of --api")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [not-pinned:latest]\n")
    r = cache_cli(
        "run",
        "--node",
        "n",
        "--cache-dir",
        str(tmp_path / "c"),
        "--config",
        str(bad),
        "--once",
        "--listen",
        "",
        check=False,
    )
    assert "pinned images only" in r.stderr


def test_node_labels_follow_ready_models(registry, tmp_path):
    from harness.kubestub import KubeStub
    from modelcar.contract.nodecache import node_label_key

    refs = _images(registry, tmp_path, ["la", "lb"])
    cache, config = tmp_path / "cache", tmp_path / "models.yaml"
    budget = ["--max-bytes", "6MiB", "--high-watermark", "1", "--low-watermark", "1"]
    with KubeStub(
        {"gpu-1": {"kubernetes.io/hostname": "gpu-1", "modelcar.dev/sha256-stale": "ready"}}
    ) as kube:
        kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
        extra = ["--kubeconfig", str(kubeconfig), *budget]
        config.write_text(json.dumps({"models": [refs["la"]]}))
        r = daemon_once(cache, config, *extra, node="gpu-1")
        assert r.code == 0, r.stderr
        key_a, key_b = node_label_key(_dig(refs["la"])), node_label_key(_dig(refs["lb"]))
        assert kube.labels["gpu-1"] == {"kubernetes.io/hostname": "gpu-1", key_a: "ready"}

        # b replaces a (the budget holds one): the labels follow
        config.write_text(json.dumps({"models": [refs["lb"]]}))
        r = daemon_once(cache, config, *extra, node="gpu-1")
        assert r.code == 0, r.stderr
        assert kube.labels["gpu-1"] == {"kubernetes.io/hostname": "gpu-1", key_b: "ready"}
        patches = [q for q in kube.requests if q[0] == "PATCH"]
        assert patches and all(auth == "Bearer node-sa-token" for _, _, auth, _ in patches)
        assert all("patch" in ctype for *_, ctype in patches)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_in_a_cluster_policies_match_the_node_objects_labels(registry, api, tmp_path):
    from harness.kubestub import KubeStub

    refs = _images(registry, tmp_path, ["k1"])
    admin = api.client(api.admin)
    repo, digest = refs["k1"].split("@")
    admin.post("/v1/models/k/versions", json={"digest": digest, "repository": repo})
    admin.put("/v1/policies/h100", json={"models": ["k:1"], "node_selector": {"gpu": "h100"}})
    with KubeStub({"gpu-7": {"gpu": "h100"}}) as kube:
        r = cache_cli(
            "run",
            "--node",
            "gpu-7",
            "--api",
            api.url,
            "--cache-dir",
            str(tmp_path / "cache"),
            "--kubeconfig",
            str(kube.kubeconfig(tmp_path / "kubeconfig")),
            "--once",
            "--listen",
            "",
            "--plain-http",
            env={"MODELCAR_API_TOKEN": api.token("node", "gpu-7")},
        )
        assert r.code == 0, r.stderr
        assert admin.get("/v1/resolve/k:1").json()["nodes_ready"] == ["gpu-7"]
        assert kube.labels["gpu-7"]["gpu"] == "h100" and len(kube.labels["gpu-7"]) == 2
        assert admin.get("/v1/nodes/gpu-7").json()["labels"] == {"gpu": "h100"}


def test_warm_cri_pulls_through_containerd_and_pins(registry, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("containerd needs root")
    from harness.containerd import Containerd
    from modelcar.cache_daemon.cri import PINNED_LABEL, RuntimeWarmer

    refs = _images(registry, tmp_path, ["warm"])
    runtime = Containerd(tmp_path / "containerd").start()
    try:
        runtime.trust_http(registry.host)
        cache, config = tmp_path / "cache", tmp_path / "models.yaml"
        r = _run_once(
            cache, config, refs, ["warm"], "--warm-cri", "--cri-socket", str(runtime.socket)
        )
        assert r.code == 0, r.stderr
        assert '"event": "warmed"' in r.stderr
        warmer = RuntimeWarmer(str(runtime.socket))
        try:
            assert warmer.labels(refs["warm"])[PINNED_LABEL] == "pinned"
        finally:
            warmer.close()
        # the daemon's own copy is there too
        assert len(published(cache)) == 1
        # a socket with no runtime behind it is a warning, not a failed model
        r = _run_once(
            cache, config, refs, ["warm"], "--warm-cri", "--cri-socket", str(tmp_path / "none.sock")
        )
        assert r.code == 0 and '"event": "warm-failed"' in r.stderr
    finally:
        runtime.stop()
