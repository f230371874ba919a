"""Attestations written by `build --sign-key` / `sign`, pushed as OCI 1.1 referrers
(the tag-schema fallback on Distribution 2.8), and checked by tools that are not ours:

- the in-toto Statement and its SLSA Provenance v1 predicate parsed strictly into the
  upstream protobuf schemas of in-toto/attestation (the `in-toto-attestation` package)
  and checked by its validators; the DSSE signature checked by openssl over the PAE;
- the model-signing bundle verified by `model_signing verify key` (PyPI
  `model-signing`) against the directory the node cache publishes.

in-toto/attestation publishes no JSON Schemas (at commit
051624ce466deaed4c5a66e66877f69b471fccbe the Statement and the SLSA v1 predicate are
defined as protobufs, with the Python package generated from them), so the protobufs
stand in for the schemas.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement

from harness.models import write_safetensors
from tests.helpers import assert_one_line_error, build, pull, run_cli

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DSSE = "application/vnd.dsse.envelope.v1+json"
BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("attest") / "m"
    (d / "tokenizer").mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "bert"}\n')
    (d / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (d / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    write_safetensors(d / "model.safetensors", 900_000, seed=9)
    return d


def _manifest(registry, repo: str, reference: str, accept: str = MANIFEST) -> httpx.Response:
    return httpx.get(
        f"http://{registry.host}/v2/{repo}/manifests/{reference}", headers={"Accept": accept}
    )


def _blob(registry, repo: str, digest: str) -> bytes:
    return httpx.get(f"http://{registry.host}/v2/{repo}/blobs/{digest}").content


def _referrers(registry, repo: str, digest: str) -> list[dict]:
    """The tag-schema fallback index, read over plain HTTP (this registry has no API)."""
    api = httpx.get(f"http://{registry.host}/v2/{repo}/referrers/{digest}")
    assert api.status_code == 404  # Distribution 2.8: no referrers API
    r = _manifest(registry, repo, f"sha256-{digest[7:]}", INDEX)
    assert r.status_code == 200, r.text
    return r.json()["manifests"]


def _artifact(registry, repo: str, listed: list[dict], kind: str, digest: str) -> bytes:
    (described,) = [d for d in listed if d["artifactType"] == kind]
    manifest = _manifest(registry, repo, described["digest"]).json()
    assert manifest["subject"]["digest"] == digest
    assert manifest["artifactType"] == kind
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    return _blob(registry, repo, manifest["layers"][0]["digest"])


def _pae(payload_type: str, payload: bytes) -> bytes:
    return b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload)


def _openssl_verifies(public: Path, data: bytes, sig: bytes, work: Path) -> bool:
    (work / "data").write_bytes(data)
    (work / "sig").write_bytes(sig)
    r = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha256",
            "-verify",
            str(public),
            "-signature",
            str(work / "sig"),
            str(work / "data"),
        ],
        capture_output=True,
    )
    return r.returncode == 0


def test_provenance_is_slsa_v1_and_openssl_checks_its_envelope(
    registry, model, signing_key, tmp_path
):
    private, public = signing_key
    repo = "attest/prov"
    pinned = build(
        model,
        f"{registry.host}/{repo}",
        "--plain-http",
        "--sign-key",
        str(private),
        "--exclude",
        "*.md",
    )
    digest = pinned.split("@")[1]
    listed = _referrers(registry, repo, digest)
    assert {d["artifactType"] for d in listed} == {DSSE, BUNDLE}
    envelope = json.loads(_artifact(registry, repo, listed, DSSE, digest))
    payload = base64.b64decode(envelope["payload"])
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    sig = base64.b64decode(envelope["signatures"][0]["sig"])
    assert _openssl_verifies(public, _pae(envelope["payloadType"], payload), sig, tmp_path)

    # strict parse into the upstream protobufs: unknown or mistyped fields fail here
    pb = json_format.Parse(payload, statement_pb2.Statement())
    Statement.copy_from_pb(pb).validate()
    assert pb.subject[0].digest["sha256"] == digest[7:]
    assert pb.predicate_type == "https://slsa.dev/provenance/v1"
    predicate = json_format.ParseDict(
        json_format.MessageToDict(pb.predicate), provenance_pb2.Provenance()
    )
    for rd in predicate.build_definition.resolved_dependencies:
        ResourceDescriptor.copy_from_pb(rd).validate()
    assert predicate.build_definition.build_type == "https://modelcar.dev/slsa/build/v1"
    assert predicate.build_definition.external_parameters["exclude"] == ["*.md"]
    assert predicate.run_details.builder.id == "https://modelcar.dev/builder/modelcar-build"
    run = predicate.run_details.metadata
    assert run.started_on.seconds <= run.finished_on.seconds
    (source, base) = predicate.build_definition.resolved_dependencies
    assert source.uri.startswith("file:") and len(source.digest["sha256"]) == 64
    assert base.digest["sha256"] and base.uri

    ok = run_cli(
        "verify",
        pinned,
        "--key",
        str(public),
        "--plain-http",
        "--require-provenance-source",
        "file:",
        "--json",
    )
    checked = json.loads(ok.stdout)
    assert checked["attestations"]["provenance_source"] == source.uri
    assert checked["attestations"]["model_signature_key"] == checked["signature"]["key_id"]
    r = run_cli(
        "verify",
        pinned,
        "--key",
        str(public),
        "--plain-http",
        "--require-provenance-source",
        "hf://acme/",
        check=False,
    )
    assert_one_line_error(r, "provenance names another source", "hf://acme/")


def test_model_signing_verifies_the_published_directory(registry, model, signing_key, tmp_path):
    private, public = signing_key
    repo = "attest/ms"
    pinned = build(model, f"{registry.host}/{repo}", "--plain-http")
    digest = pinned.split("@")[1]
    run_cli("sign", pinned, "--key", str(private), "--plain-http")
    bundle = _artifact(registry, repo, _referrers(registry, repo, digest), BUNDLE, digest)
    (tmp_path / "model.sig").write_bytes(bundle)
    cache = tmp_path / "cache"
    pull(cache, pinned, "--plain-http")
    published = cache / "models" / f"sha256-{digest[7:]}"
    assert (published / ".gitattributes").exists()
    tool = Path(sys.executable).parent / "model_signing"

    def model_signing(directory: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                str(tool),
                "verify",
                "key",
                "--signature",
                str(tmp_path / "model.sig"),
                "--public_key",
                str(public),
                str(directory),
            ],
            capture_output=True,
            text=True,
        )

    r = model_signing(published)
    assert r.returncode == 0, r.stdout + r.stderr
    # the same tool refuses a changed byte
    copy = tmp_path / "copy"
    shutil.copytree(published, copy)
    (copy / "tokenizer" / "vocab.txt").chmod(0o644)
    (copy / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nhellO\n")
    r = model_signing(copy)
    assert r.returncode != 0 and "tokenizer/vocab.txt" in (r.stdout + r.stderr)


def _put(registry, repo: str, reference: str, body: dict, media_type: str) -> str:
    data = json.dumps(body).encode()
    r = httpx.put(
        f"http://{registry.host}/v2/{repo}/manifests/{reference}",
        content=data,
        headers={"Content-Type": media_type},
    )
    assert r.status_code == 201, r.text
    return r.headers["Docker-Content-Digest"]


def test_bad_attestations_are_refused_in_one_line(registry, model, signing_key, tmp_path):
    private, public = signing_key
    repo = "attest/bad"
    a = build(model, f"{registry.host}/{repo}", "--plain-http", "--sign-key", str(private))
    b = build(
        model,
        f"{registry.host}/{repo}",
        "--plain-http",
        "--base",
        "scratch",
        "--sign-key",
        str(private),
    )
    da, db = a.split("@")[1], b.split("@")[1]
    of_a, of_b = _referrers(registry, repo, da), _referrers(registry, repo, db)
    (prov_a,) = [d for d in of_a if d["artifactType"] == DSSE]
    b_index = _manifest(registry, repo, db).json()
    b_subject = {
        "mediaType": MANIFEST,
        "digest": db,
        "size": len(_manifest(registry, repo, db).content),
    }
    assert b_index["mediaType"] == MANIFEST
    fallback = f"sha256-{db[7:]}"

    def listing(*extra: dict) -> None:
        others = [d for d in of_b if d["artifactType"] != DSSE]
        _put(
            registry,
            repo,
            fallback,
            {"schemaVersion": 2, "mediaType": INDEX, "manifests": [*others, *extra]},
            INDEX,
        )

    def refused(*needles: str) -> None:
        r = run_cli("verify", b, "--key", str(public), "--plain-http", check=False)
        assert_one_line_error(r, *needles)

    # A's provenance, re-pointed at B: the manifest names B, the signed statement names A
    moved = _manifest(registry, repo, prov_a["digest"]).json()
    moved["subject"] = b_subject
    listing(
        {
            **prov_a,
            "digest": _put(registry, repo, "moved", moved, MANIFEST),
            "size": len(json.dumps(moved).encode()),
        }
    )
    refused("attestation whose subject is another image", da)
    # A's provenance listed, unchanged, among B's referrers
    listing(prov_a)
    refused("a referrer whose subject is another image", da)
    # a tampered statement: one byte of the payload changed, the signature kept
    envelope = json.loads(_artifact(registry, repo, of_a, DSSE, da))
    payload = base64.b64decode(envelope["payload"]).replace(b"file:", b"hf://")
    envelope["payload"] = base64.b64encode(payload).decode()
    forged = json.dumps(envelope).encode()
    forged_digest = "sha256:" + hashlib.sha256(forged).hexdigest()
    upload = httpx.post(f"http://{registry.host}/v2/{repo}/blobs/uploads/").headers["Location"]
    at = httpx.URL(upload).copy_merge_params({"digest": forged_digest})
    httpx.put(at, content=forged).raise_for_status()
    manifest = dict(
        moved, layers=[{"mediaType": DSSE, "digest": forged_digest, "size": len(forged)}]
    )
    listing(
        {
            **prov_a,
            "digest": _put(registry, repo, "forged", manifest, MANIFEST),
            "size": len(json.dumps(manifest).encode()),
        }
    )
    r = run_cli(
        "verify",
        b,
        "--key",
        str(public),
        "--plain-http",
        "--require-provenance-source",
        "hf://",
        check=False,
    )
    assert_one_line_error(r, "no provenance signed by the given key")
    # restored, B verifies again
    listing(*[d for d in of_b if d["artifactType"] == DSSE])
    assert "ok:" in run_cli("verify", b, "--key", str(public), "--plain-http").stdout


def test_a_referrer_naming_a_missing_blob_is_refused(model, signing_key, tmp_path):
    private, public = signing_key
    layout = tmp_path / "layout"
    pinned = build(model, f"oci:{layout}:v1", "--sign-key", str(private))
    # inspect says what is attached (and that it checks nothing)
    shown = run_cli("inspect", pinned).stdout
    assert "signed     1 cosign signature (not checked here: modelcar verify --key PUB)" in shown
    assert "attested   model-signing bundle, SLSA provenance" in shown
    digest = pinned.split("@")[1]
    index = json.loads((layout / "index.json").read_text())
    tag = f"sha256-{digest[7:]}"
    (listed,) = [
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == tag
    ]
    blobs = layout / "blobs" / "sha256"
    referrers = json.loads((blobs / listed["digest"][7:]).read_text())["manifests"]
    (bundle,) = [d for d in referrers if d["artifactType"] == BUNDLE]
    layer = json.loads((blobs / bundle["digest"][7:]).read_text())["layers"][0]
    (blobs / layer["digest"][7:]).unlink()
    r = run_cli("verify", pinned, "--key", str(public), check=False)
    assert_one_line_error(r, "a referrer names a missing blob", layer["digest"])


def test_rebuilding_a_signed_image_keeps_one_signature_and_one_of_each(
    registry, model, signing_key, tmp_path
):
    private, _ = signing_key
    repo = "attest/again"
    first = build(model, f"{registry.host}/{repo}", "--plain-http", "--sign-key", str(private))
    r = run_cli(
        "build",
        str(model),
        f"{registry.host}/{repo}",
        "--plain-http",
        "--sign-key",
        str(private),
        "--json",
        "-q",
    )
    record = json.loads(r.stdout.splitlines()[-2])
    assert record["reference"] == first
    assert sorted(record["signed"]["attestations"]) == [
        "https://model_signing/signature/v1.0",
        "https://slsa.dev/provenance/v1",
    ]
    digest = first.split("@")[1]
    sig = _manifest(registry, repo, f"sha256-{digest[7:]}.sig").json()
    assert len(sig["layers"]) == 1
    assert len(_referrers(registry, repo, digest)) == 2
    # another key adds its own signature and attestations beside them
    run_cli("keygen", str(tmp_path / "other"))
    run_cli("sign", first, "--key", str(tmp_path / "other.key"), "--plain-http")
    assert len(_manifest(registry, repo, f"sha256-{digest[7:]}.sig").json()["layers"]) == 2
    assert len(_referrers(registry, repo, digest)) == 3
    checked = json.loads(
        run_cli(
            "verify", first, "--key", str(tmp_path / "other.pub"), "--plain-http", "--json"
        ).stdout
    )
    assert checked["attestations"]["provenance_source"] is None
    assert checked["attestations"]["model_signature_key"] == checked["signature"]["key_id"]
