"""Hostile signatures and attestations (Hardening II, items 9, 12 and 16): a pushed
`.sig` layer without its blob, a digest's signature slots filled by a publish token,
and a signed ModelPack under a source-prefix policy."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from harness.models import write_safetensors
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.daemon import Daemon, DaemonOptions
from modelcar.cache_daemon.desired import DesiredFromFile
from modelcar.cache_daemon.pull import Puller, PullOptions
from modelcar.errors import SignatureError
from modelcar.oci import mediatypes as mt
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from modelcar.trust import attest, cosign, keys, policy, provenance
from modelcar.trust.policy import Rule
from tests.helpers import build, run_cli


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("trust") / "m"
    (d / "tokenizer").mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "bert"}\n')
    (d / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    write_safetensors(d / "model.safetensors", 300_000, seed=3)
    return d


def _daemon(tmp_path, config) -> Daemon:
    cache = CacheDir(tmp_path / "cache").open()
    options = DaemonOptions(node="n1", pull=PullOptions(store=StoreOptions(plain_http=True)))
    return Daemon(cache, options, DesiredFromFile(config))


def test_a_missing_sig_blob_does_not_hide_a_later_valid_signature(model, signing_key, tmp_path):
    """An oci: layout: a registry refuses a manifest whose blob it lacks at push time,
    but the blob may go later, and not every registry checks."""
    private, public = signing_key
    ref = build(model, f"oci:{tmp_path / 'layout'}:v1", "--sign-key", str(private))
    digest = ref.split("@")[1]
    store = open_store(parse_ref(ref), StoreOptions())
    tag = cosign.signature_tag(digest)
    sig = json.loads(store.get_manifest(tag).data)
    ghost = {
        "mediaType": cosign.PAYLOAD_TYPE,
        "digest": "sha256:" + "e" * 64,
        "size": 200,
        "annotations": {cosign.SIGNATURE_ANNOTATION: "AAAA"},
    }
    big = dict(sig["layers"][0], size=10)  # a blob larger than its descriptor says
    sig["layers"] = [ghost, big, *sig["layers"]]
    store.put_manifest(json.dumps(sig).encode(), mt.OCI_MANIFEST, tag)
    pem = public.read_text()
    rule = Rule("p", (pem,), require=True)
    assert policy.check([rule], store, parse_ref(ref), digest, lambda: None) == []
    # no valid signature at all, and an unlistable fallback index: refused under
    # require: true, only reported under require: false
    sig["layers"] = [ghost]
    store.put_manifest(json.dumps(sig).encode(), mt.OCI_MANIFEST, tag)
    with pytest.raises(SignatureError, match="signature required by policy p"):
        policy.check([rule], store, parse_ref(ref), digest, lambda: None)
    notes = policy.check(
        [Rule("p", (pem,), require=False, source_prefix="hf://")],
        store,
        parse_ref(ref),
        digest,
        lambda: None,
    )
    assert notes and notes[0].startswith("signature required by policy p")


def _sign_modelpack(ref: str, private, tmp_path) -> None:
    """Sign a ModelPack as another tool would: a cosign signature, SLSA provenance and
    a model-signing bundle over its files (their index as the node computes it)."""
    with CacheDir(tmp_path / "index-of") as cache:
        Puller(cache, PullOptions(store=StoreOptions(plain_http=True))).pull(ref)
        index = cache.load_index(ref.split("@")[1])
    key = keys.load_private_key(str(private))
    image = parse_ref(ref)
    store = open_store(image, StoreOptions(plain_http=True))
    digest = ref.split("@")[1]
    cosign.sign_image(store, image, digest, key)
    facts = provenance.BuildFacts(
        source="file:src",
        index=index,
        builder_version="test",
        started="2026-01-01T00:00:00Z",
        finished="2026-01-01T00:00:01Z",
    )
    attest.attach(store, image, attest.subject_of(store, digest), key, index, facts)


def test_a_signed_modelpack_passes_a_source_prefix_policy_on_its_unpacked_files(
    registry, model, signing_key, tmp_path
):
    private, public = signing_key
    r = run_cli(
        "build",
        str(model),
        f"{registry.host}/hostile3/pack:v1",
        "--plain-http",
        "--format",
        "modelpack",
    )
    ref = r.last_line
    _sign_modelpack(ref, private, tmp_path)
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"models": [ref]}))
    daemon = _daemon(tmp_path, config)
    try:
        rule = Rule("p", (public.read_text(),), require=True, source_prefix="file:")
        result = daemon._pull(ref, "pack", (rule,))
        assert result.files == 3
        # a prefix it is not under is refused once the files are known, nothing published
        other = Rule("q", (public.read_text(),), require=True, source_prefix="hf://acme")
        daemon.cache.remove_model(ref.split("@")[1])
        daemon.puller._present.clear()
        with pytest.raises(SignatureError, match="not under hf://acme"):
            daemon._pull(ref, "pack", (other,))
        assert daemon.cache.published() == []
    finally:
        daemon.cache.close()


def test_a_publish_token_cannot_fill_a_digests_signature_slots(api, signing_key):
    private, _ = signing_key
    admin = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {api.admin}"})
    ci = api.token("publish", "ci")
    publisher = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {ci}"})
    digest = "sha256:" + "4" * 64
    ref = parse_ref(f"registry.example/team/m@{digest}")

    def post(key: ec.EllipticCurvePrivateKey, target: str = digest) -> httpx.Response:
        signature = base64.b64encode(keys.sign(key, cosign.payload(ref, target))).decode()
        return publisher.post(
            "/v1/signatures",
            json={
                "digest": target,
                "payload": cosign.payload(ref, target).decode(),
                "signature": signature,
            },
        )

    trusted = keys.load_private_key(str(private))
    admin.post("/v1/keys", json={"name": "release", "pem": keys.public_pem(trusted).decode()})
    unregistered = post(trusted)
    assert unregistered.status_code == 404 and "no registered" in unregistered.text
    version = {"digest": digest, "repository": "registry.example/team/m", "size": 1}
    admin.post("/v1/models/m/versions", json=version).raise_for_status()
    for _ in range(40):  # garbage from keys nobody trusts: every one refused
        stranger = ec.generate_private_key(ec.SECP256R1())
        r = post(stranger)
        assert r.status_code == 409 and "no trusted key" in r.json()["error"]["message"]
    for _ in range(5):  # the trusted key's, again and again: one kept
        assert post(trusted).status_code in (200, 201)
    version = admin.get("/v1/models/m/versions/1").json()
    assert version["signed_by"] == [keys.key_id(trusted)]
