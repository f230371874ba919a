"""Signatures in cosign's layout, written by `modelcar sign` / `build --sign-key` and
checked by openssl (not our code) and by `modelcar verify --key`; bad input refused
in one line."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path

import httpx
import pytest

from harness.models import write_safetensors
from harness.proxy import QuirkProxy
from tests.helpers import assert_one_line_error, build, run_cli

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("signing") / "m"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "bert"}\n')
    write_safetensors(d / "model.safetensors", 1_200_000, seed=5)
    return d


def _get(registry, repo: str, reference: str) -> httpx.Response:
    return httpx.get(
        f"http://{registry.host}/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST}
    )


def _blob(registry, repo: str, digest: str) -> bytes:
    return httpx.get(f"http://{registry.host}/v2/{repo}/blobs/{digest}").content


def test_a_signature_openssl_verifies_and_verify_key_accepts(
    registry, model, signing_key, tmp_path
):
    private, public = signing_key
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    pinned = build(model, f"{registry.host}/signed/m", "--plain-http")
    digest = pinned.split("@")[1]
    signed = run_cli("sign", pinned, "--key", str(private), "--plain-http")
    assert signed.last_line == pinned and "signed with sha256:" in signed.stderr

    sig = _get(registry, "signed/m", f"sha256-{digest[7:]}.sig").json()
    (layer,) = sig["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    payload = _blob(registry, "signed/m", layer["digest"])
    claims = json.loads(payload)["critical"]
    assert claims == {
        "identity": {"docker-reference": f"{registry.host}/signed/m"},
        "image": {"docker-manifest-digest": digest},
        "type": "cosign container image signature",
    }
    (tmp_path / "payload").write_bytes(payload)
    der = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
    (tmp_path / "sig.der").write_bytes(der)
    r = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-verify",
            str(public),
            "-signature",
            str(tmp_path / "sig.der"),
            str(tmp_path / "payload"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "Verified OK" in r.stdout, r.stderr

    ok = run_cli("verify", pinned, "--key", str(public), "--plain-http", "--json")
    checked = json.loads(ok.stdout)
    assert checked["signature"]["identity"] == f"{registry.host}/signed/m"
    pub_der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(public), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    assert checked["signature"]["key_id"] == "sha256:" + hashlib.sha256(pub_der).hexdigest()
    assert checked["files"] == 2

    # a second key appends a second signature; either key verifies
    run_cli("keygen", str(tmp_path / "second"))
    run_cli("sign", pinned, "--key", str(tmp_path / "second.key"), "--plain-http")
    sig = _get(registry, "signed/m", f"sha256-{digest[7:]}.sig").json()
    assert len(sig["layers"]) == 2
    for pub in (public, tmp_path / "second.pub"):
        assert "signed by" in run_cli("verify", pinned, "--key", str(pub), "--plain-http").stdout


def test_build_sign_key_signs_and_a_bad_key_builds_nothing(registry, model, signing_key, tmp_path):
    private, public = signing_key
    pinned = build(
        model, f"{registry.host}/signed/built", "--plain-http", "--sign-key", str(private)
    )
    assert "signed by" in run_cli("verify", pinned, "--key", str(public), "--plain-http").stdout
    (tmp_path / "bad.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n")
    r = run_cli(
        "build",
        str(model),
        f"{registry.host}/signed/never",
        "--plain-http",
        "--sign-key",
        str(tmp_path / "bad.pem"),
        check=False,
    )
    assert_one_line_error(r, "not a PEM private key")
    assert _get(registry, "signed/never", "latest").status_code == 404


def test_encrypted_keys_need_their_password(registry, model, tmp_path):
    run_cli("keygen", str(tmp_path / "enc"), env={"MODELCAR_KEY_PASSWORD": "s3cret"})
    assert b"ENCRYPTED" in (tmp_path / "enc.key").read_bytes()
    pinned = build(model, f"{registry.host}/signed/enc", "--plain-http")
    r = run_cli("sign", pinned, "--key", str(tmp_path / "enc.key"), "--plain-http", check=False)
    assert_one_line_error(r, "encrypted and no password", "MODELCAR_KEY_PASSWORD")
    r = run_cli(
        "sign",
        pinned,
        "--key",
        "env://RELEASE_KEY",
        "--plain-http",
        env={"MODELCAR_KEY_PASSWORD": "s3cret", "RELEASE_KEY": (tmp_path / "enc.key").read_text()},
    )
    assert r.last_line == pinned
    ok = run_cli("verify", pinned, "--key", str(tmp_path / "enc.pub"), "--plain-http")
    assert "signed by" in ok.stdout


def test_bad_signatures_are_refused_in_one_line(registry, model, signing_key, tmp_path):
    private, public = signing_key
    a = build(model, f"{registry.host}/signed/a", "--plain-http")
    b = build(model, f"{registry.host}/signed/a", "--plain-http", "--base", "scratch")
    da, db = a.split("@")[1], b.split("@")[1]
    assert da != db

    def verify(ref: str, key: Path = public):
        return run_cli("verify", ref, "--key", str(key), "--plain-http", check=False)

    assert_one_line_error(verify(a), "the image is not signed")
    run_cli("sign", a, "--key", str(private), "--plain-http")
    run_cli("keygen", str(tmp_path / "other"))
    assert_one_line_error(verify(a, tmp_path / "other.pub"), "no valid signature by the given key")
    (tmp_path / "junk.pub").write_text(
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    )
    assert_one_line_error(verify(a, tmp_path / "junk.pub"), "not a PEM public key")

    # replay: a's signature manifest put under b's signature tag
    sig = _get(registry, "signed/a", f"sha256-{da[7:]}.sig")
    put = httpx.put(
        f"http://{registry.host}/v2/signed/a/manifests/sha256-{db[7:]}.sig",
        content=sig.content,
        headers={"Content-Type": MANIFEST},
    )
    assert put.status_code == 201
    assert_one_line_error(verify(b), "a payload for another image")

    # tampered payload: other bytes under the same signature
    manifest = json.loads(sig.content)
    payload = _blob(registry, "signed/a", manifest["layers"][0]["digest"])
    forged = payload.replace(b'"optional":null', b'"optional":{"x":"y"}')
    digest = "sha256:" + hashlib.sha256(forged).hexdigest()
    upload = httpx.post(f"http://{registry.host}/v2/signed/a/blobs/uploads/")
    location = upload.headers["Location"]
    if location.startswith("/"):
        location = f"http://{registry.host}{location}"
    sep = "&" if "?" in location else "?"
    httpx.put(f"{location}{sep}digest={digest}", content=forged).raise_for_status()
    manifest["layers"][0].update(digest=digest, size=len(forged))
    tag_url = f"http://{registry.host}/v2/signed/a/manifests/sha256-{da[7:]}.sig"
    put = httpx.put(tag_url, content=json.dumps(manifest), headers={"Content-Type": MANIFEST})
    assert put.status_code == 201
    assert_one_line_error(verify(a), "no valid signature", "over other bytes")

    # a 10 MB signature manifest (the registry here would refuse to store one, so a
    # proxy sends it): refused at the manifest limit, not read whole
    huge = json.dumps({**manifest, "annotations": {"pad": "x" * (10 << 20)}}).encode()

    def swap(method: str, path: str, data: bytes) -> bytes:
        return huge if method == "GET" and path.endswith(".sig") else data

    with QuirkProxy(f"http://{registry.host}", body_filter=swap) as proxy:
        assert_one_line_error(verify(a.replace(registry.host, proxy.host)), "4 MiB")
