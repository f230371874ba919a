"""Trust end to end: the API's trusted keys and signed versions, `require_signed`, and a
node daemon that checks a policy's verification before it publishes anything."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from harness.localregistry import free_port
from harness.models import write_safetensors
from tests.helpers import ROOT, published, run_cli, stop_process


def _model(root: Path, seed: int) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "bert"}\n')
    write_safetensors(root / "model.safetensors", 300_000, seed=seed)
    return root


def _build(api, registry, tmp_path, name: str, seed: int, *extra: str) -> str:
    r = run_cli(
        "build",
        str(_model(tmp_path / name, seed)),
        f"{registry.host}/trust/{name}",
        "--plain-http",
        "--api",
        api.url,
        "--model",
        name,
        "--alias",
        "prod",
        *extra,
        env={"MODELCAR_API_TOKEN": api.token("publish", f"ci-{name}")},
    )
    return r


def test_signed_versions_resolve_and_nodes_publish_only_what_verifies(
    api, registry, signing_key, tmp_path
):
    private, public = signing_key
    admin = api.client(api.admin)
    bad = admin.post("/v1/keys", json={"name": "release", "pem": "not a key"})
    assert bad.status_code == 422 and "not a PEM public key" in bad.json()["error"]["message"]
    added = admin.post("/v1/keys", json={"name": "release", "pem": public.read_text()})
    assert added.status_code == 201
    key_id = added.json()["key_id"]
    again = admin.post("/v1/keys", json={"name": "again", "pem": public.read_text()})
    assert again.status_code == 200 and again.json()["key_id"] == key_id

    signed = _build(api, registry, tmp_path, "signed", 1, "--sign-key", str(private))
    assert f"signed by {key_id}" in signed.stderr
    _build(api, registry, tmp_path, "unsigned", 2)
    _build(api, registry, tmp_path, "prov", 3, "--sign-key", str(private))
    run_cli("keygen", str(tmp_path / "stranger"))
    _build(api, registry, tmp_path, "stranger", 4, "--sign-key", str(tmp_path / "stranger.key"))
    assert admin.get("/v1/models/signed/versions/1").json()["signed_by"] == [key_id]
    assert admin.get("/v1/models/unsigned/versions/1").json()["signed_by"] == []

    # resolve refuses an unsigned version when asked to
    ok = admin.get("/v1/resolve/signed@prod", params={"require_signed": 1})
    assert ok.status_code == 200 and ok.json()["signed_by"] == [key_id]
    refused = admin.get("/v1/resolve/unsigned@prod", params={"require_signed": 1})
    assert refused.status_code == 409
    assert "not signed by a trusted key" in refused.json()["error"]["message"]
    assert admin.get("/v1/resolve/unsigned@prod").status_code == 200

    # a signature for another digest is refused and leaves nothing behind
    unsigned_digest = admin.get("/v1/models/unsigned/versions/1").json()["digest"]
    sig_tag = f"sha256-{ok.json()['digest'][7:]}.sig"  # its payload names the signed digest
    signed_payload = httpx.get(
        f"http://{registry.host}/v2/trust/signed/manifests/{sig_tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).json()["layers"][0]
    payload = httpx.get(
        f"http://{registry.host}/v2/trust/signed/blobs/{signed_payload['digest']}"
    ).text
    replay = admin.post(
        "/v1/signatures",
        json={
            "digest": unsigned_digest,
            "payload": payload,
            "signature": signed_payload["annotations"]["dev.cosignproject.cosign/signature"],
        },
    )
    assert replay.status_code == 422 and "another image" in replay.json()["error"]["message"]
    assert admin.get("/v1/models/unsigned/versions/1").json()["signed_by"] == []

    unknown = admin.put(
        "/v1/policies/gpus",
        json={
            "models": ["signed@prod"],
            "verification": {"keys": ["sha256:" + "0" * 64]},
        },
    )
    assert unknown.status_code == 409 and "untrusted key" in unknown.json()["error"]["message"]
    admin.put(
        "/v1/policies/gpus",
        json={
            "models": ["signed@prod", "unsigned@prod", "stranger@prod"],
            "verification": {"keys": [key_id]},
        },
    ).raise_for_status()
    admin.put(
        "/v1/policies/from-acme",
        json={
            "models": ["prov@prod"],
            "verification": {"keys": [key_id], "source_prefix": "hf://acme/"},
        },
    ).raise_for_status()
    in_use = admin.delete(f"/v1/keys/{key_id}")
    assert in_use.status_code == 409 and "gpus" in in_use.json()["error"]["message"]

    digests = {
        m: admin.get(f"/v1/models/{m}/versions/1").json()["digest"]
        for m in ("signed", "unsigned", "prov", "stranger")
    }
    cache, port = tmp_path / "cache", free_port()
    env = {**os.environ, "MODELCAR_API_TOKEN": api.token("node", "gpu-1")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelcar.cache_daemon.cli",
            "run",
            "--node",
            "gpu-1",
            "--api",
            api.url,
            "--cache-dir",
            str(cache),
            "--plain-http",
            "--interval",
            "0.3",
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def states() -> dict[str, tuple[str, str | None]]:
            node = admin.get("/v1/nodes/gpu-1")
            if node.status_code != 200:
                return {}
            return {m["digest"]: (m["state"], m["error"]) for m in node.json()["models"]}

        deadline = time.monotonic() + 60
        while len([s for s, _ in states().values() if s in ("ready", "failed")]) < 4:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, states()
            time.sleep(0.1)
        got = states()
        assert got[digests["signed"]] == ("ready", None)
        state, error = got[digests["unsigned"]]
        assert state == "failed" and "signature required by policy gpus" in (error or "")
        assert "not signed" in (error or "")
        state, error = got[digests["stranger"]]
        assert state == "failed" and "signature by another key" in (error or "")
        state, error = got[digests["prov"]]
        assert state == "failed" and "provenance required by policy from-acme" in (error or "")
        assert "hf://acme/" in (error or "")
        assert published(cache) == [f"sha256-{digests['signed'][7:]}"]
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "modelcar_cache_signature_refusals_total" in metrics
        refusals = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("modelcar_cache_signature_refusals_total")
        )
        assert refusals >= 3
        assert admin.get("/v1/resolve/signed@prod").json()["nodes_ready"] == ["gpu-1"]
    finally:
        err = stop_process(proc, 30)
    assert proc.returncode == 0, err[-2000:]
