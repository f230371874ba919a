"""Streamed start: a real loader reads the model from the node's S3 endpoint.

The client is runai-model-streamer with its S3 backend (the AWS C++ SDK), as vLLM's
``--load-format runai_streamer`` runs it, in its own process; boto3 is the second,
independent S3 client. The origin is a real Distribution registry. Every tensor the
streamer yields is compared with the bytes written into the source file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore
import pytest
from botocore.config import Config

from harness.endpoint import Endpoint, ServingDaemon
from harness.localregistry import LocalRegistry
from harness.models import write_tensors
from modelcar.api.mounts import StreamEndpoint, stream_spec
from modelcar.format.image import load_model_image
from modelcar.format.keys import CONFIG_CHUNKS_KEY
from modelcar.oci.digest import sha256_bytes
from modelcar.oci.manifest import canonical_json
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import ROOT, build, pull, tree

MiB = 1 << 20
TOKEN = "fleet-token-0123456789abcdef"
CHUNK = 64 * MiB


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A model of two safetensors files: one of three chunks (64 + 64 + 8 MiB), one
    smaller than a chunk, and a config file."""
    root = tmp_path_factory.mktemp("stream-origin")
    model = root / "model"
    model.mkdir()
    tensors = {}
    tensors.update(
        write_tensors(
            model / "model-00001-of-00002.safetensors",
            {f"layers.{i}.weight": 2 * MiB for i in range(17)},  # 8 MiB each: 136 MiB
            seed=1,
        )
    )
    tensors.update(
        write_tensors(
            model / "model-00002-of-00002.safetensors",
            {"embed.weight": 3 * MiB, "norm.weight": 1024, "empty.weight": 0},
            seed=2,
        )
    )
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with LocalRegistry(root / "reg", access_log=True) as reg:
        ref = build(model, f"{reg.host}/stream/model:v1", "--plain-http")
        expected = {name: hashlib.sha256(data).hexdigest() for name, data in tensors.items()}
        yield reg, ref, model, expected


def streamer_env(url: str, secret: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNAI_STREAMER_"))}
    env.update(
        AWS_ENDPOINT_URL=url,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_DEFAULT_REGION="us-east-1",
        RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0",
        RUNAI_STREAMER_LOG_LEVEL=os.environ.get("DBG_LEVEL", "ERROR"),
        RUNAI_STREAMER_LOG_TO_STDERR="1",
    )
    if secret is None:
        env["RUNAI_STREAMER_S3_UNSIGNED"] = "1"
    else:
        env.update(AWS_ACCESS_KEY_ID="modelcar", AWS_SECRET_ACCESS_KEY=secret)
    return env


def kubelet_env(spec: dict, host_ip: str, secrets: dict[str, str]) -> dict[str, str]:
    """The env a kubelet gives the container of ``spec`` (status.hostIP, secretKeyRef,
    $(VAR) expanded), over this process's env without AWS_/RUNAI_ settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNAI_STREAMER_"))}
    for e in spec["env"]:
        source = e.get("valueFrom", {})
        if "fieldRef" in source:
            assert source["fieldRef"]["fieldPath"] == "status.hostIP"
            env[e["name"]] = host_ip
        elif "secretKeyRef" in source:
            env[e["name"]] = secrets[source["secretKeyRef"]["name"]]
        else:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], e["value"])
    return env


def stream(
    url: str,
    prefix: str,
    secret: str | None = TOKEN,
    timeout: float = 300,
    env: dict[str, str] | None = None,
):
    """The streamer over ``prefix``: (exit code, its JSON answer or None, stderr)."""
    r = subprocess.run(
        [sys.executable, "-m", "harness.streamer", prefix],
        cwd=ROOT,
        env=env or streamer_env(url, secret),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    answer = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
    return r.returncode, answer, r.stderr


def s3(url: str, secret: str = TOKEN):
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="modelcar",
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": 1}, read_timeout=120
        ),
    )


def key_of(ref: str) -> str:
    return "sha256-" + ref.split("@sha256:")[1]


def test_the_streamer_loads_every_tensor_from_a_warm_node(origin, tmp_path):
    _reg, ref, model, expected = origin
    cache = tmp_path / "cache"
    pull(cache, ref, "--plain-http")
    (tmp_path / "token").write_text(TOKEN)
    node = Endpoint(cache, TOKEN, tmp_path / "token")
    try:
        # what `resolve --mode stream` answers, run as a kubelet would: the env (the
        # endpoint at the pod's host IP, the fleet token from a Secret) and the model URI
        spec = stream_spec("sha256:" + key_of(ref)[7:], "l", StreamEndpoint(node.port, "fleet"))
        env = kubelet_env(spec, "127.0.0.1", {"fleet": TOKEN})
        code, answer, err = stream(node.url, spec["args"][1], env=env)
        assert code == 0, err
        assert answer["files"] == [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ]
        assert answer["tensors"] == {k: {"sha256": v} for k, v in expected.items()}

        # boto3, an independent client: list, head, ranges, and the refusals
        client = s3(node.url)
        listed = client.list_objects_v2(Bucket="modelcar", Prefix=key_of(ref) + "/")
        keys = {o["Key"]: o["Size"] for o in listed["Contents"]}
        assert keys == {f"{key_of(ref)}/{p.name}": p.stat().st_size for p in model.iterdir()}
        shard = model / "model-00001-of-00002.safetensors"
        key = f"{key_of(ref)}/{shard.name}"
        head = client.head_object(Bucket="modelcar", Key=key)
        assert head["ContentLength"] == shard.stat().st_size
        data = shard.read_bytes()
        for rng, want in (
            ("bytes=0-99", data[:100]),
            (f"bytes={CHUNK - 10}-{CHUNK + 9}", data[CHUNK - 10 : CHUNK + 10]),
            ("bytes=-5", data[-5:]),
        ):
            body = client.get_object(Bucket="modelcar", Key=key, Range=rng)["Body"].read()
            assert body == want, rng
        grouped = client.list_objects_v2(Bucket="modelcar", Delimiter="/")
        assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == [key_of(ref) + "/"]
        with pytest.raises(botocore.exceptions.ClientError) as e:
            client.get_object(Bucket="modelcar", Key=f"{key_of(ref)}/nope.bin")
        assert e.value.response["Error"]["Code"] == "NoSuchKey"
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3(node.url, "wrong-secret-0123456789").head_object(Bucket="modelcar", Key=key)
        assert e.value.response["Error"]["Code"] in ("403", "AccessDenied")
        # unsigned: refused unless the node was started with --s3-anonymous
        unsigned = boto3.client(
            "s3",
            endpoint_url=node.url,
            region_name="us-east-1",
            config=Config(signature_version=botocore.UNSIGNED, s3={"addressing_style": "path"}),
        )
        with pytest.raises(botocore.exceptions.ClientError) as e:
            unsigned.head_object(Bucket="modelcar", Key=key)
        assert e.value.response["Error"]["Code"] in ("403", "AccessDenied")
    finally:
        node.stop()
    anonymous = Endpoint(cache, TOKEN, tmp_path / "token", "--s3-anonymous")
    try:
        spec = stream_spec("sha256:" + key_of(ref)[7:], "l", StreamEndpoint(anonymous.port))
        env = kubelet_env(spec, "127.0.0.1", {})
        code, answer, err = stream(anonymous.url, spec["args"][1], env=env)
        assert code == 0, err
        assert answer["tensors"] == {k: {"sha256": v} for k, v in expected.items()}
    finally:
        anonymous.stop()


class Node(ServingDaemon):
    """A node that pulls ``ref`` (at a capped rate, by ``extra``) and serves it."""

    def __init__(self, tmp: Path, ref: str, *extra: str):
        super().__init__(tmp, [ref], TOKEN, *extra)

    def published(self, ref: str) -> bool:  # type: ignore[override]
        return super().published(ref.split("@")[1])


def test_the_streamer_loads_from_a_cold_node_while_it_pulls(origin, tmp_path):
    _reg, ref, model, expected = origin
    # one layer at a time at 16 MiB/s: the 160 MiB model takes ten seconds to arrive
    node = Node(tmp_path, ref, "--jobs", "1", "--max-rate", "16MiB")
    try:
        shard = model / "model-00001-of-00002.safetensors"
        key = f"{key_of(ref)}/{shard.name}"
        data = shard.read_bytes()
        # the file's last chunk, asked first: fetched ahead of the sequential pull (a
        # range of the layer blob at the file's offset), checked, then answered
        last = s3(node.url).get_object(Bucket="modelcar", Key=key, Range="bytes=-1048576")
        assert last["Body"].read() == data[-(1 << 20) :]
        # a range of the first chunk is answered once that chunk verified, before the
        # model is published (the rest of the pull is still seconds of bytes away)
        first = s3(node.url).get_object(Bucket="modelcar", Key=key, Range="bytes=0-1048575")
        assert first["Body"].read() == data[: 1 << 20]
        assert not node.published(ref), "the first chunk came only after the whole pull"
        code, answer, err = stream(node.url, f"s3://modelcar/{key_of(ref)}/")
        assert code == 0, err
        assert answer["tensors"] == {k: {"sha256": v} for k, v in expected.items()}
        deadline = time.monotonic() + 120
        while not node.published(ref):
            assert time.monotonic() < deadline, "the pull did not publish"
            time.sleep(0.2)
    finally:
        log = node.stop()
    assert "Traceback" not in log, log[-3000:]
    assert "fetched ahead for readers, 0 did not match" in log, log[-3000:]


def test_a_chunk_corrupted_in_the_registry_fails_the_streamer_never_a_tensor(origin, tmp_path):
    _reg, _, model, _ = origin
    # a registry of its own whose copy of the large shard's layer has one byte flipped
    # in its second chunk
    with LocalRegistry(tmp_path / "reg") as bad:
        ref = build(model, f"{bad.host}/stream/bad:v1", "--plain-http")
        parsed = parse_ref(ref)
        image = load_model_image(open_store(parsed, StoreOptions(plain_http=True)), parsed)
        shard = "model-00001-of-00002.safetensors"
        hexd = image.files[shard].layer.split(":")[1]
        storage = tmp_path / "reg" / "storage" / "docker/registry/v2/blobs/sha256"
        blob = storage / hexd[:2] / hexd / "data"
        offset = image.chunks.files[shard].offset
        with open(blob, "r+b") as f:
            f.seek(offset + CHUNK + 12345)
            byte = f.read(1)
            f.seek(offset + CHUNK + 12345)
            f.write(bytes([byte[0] ^ 0xFF]))

        node = Node(tmp_path / "n", ref, "--jobs", "1", "--max-rate", "32MiB")
        try:
            code, answer, _ = stream(node.url, f"s3://modelcar/{key_of(ref)}/")
            assert code != 0 and answer is None, "the streamer yielded tensors"
            client = s3(node.url)
            key = f"{key_of(ref)}/{shard}"
            with pytest.raises(botocore.exceptions.ClientError) as e:
                client.get_object(Bucket="modelcar", Key=key, Range=f"bytes={CHUNK}-{CHUNK + 99}")
            assert e.value.response["Error"]["Code"] == "InvalidObjectState"
            assert not node.published(ref)
        finally:
            log = node.stop()
        assert "chunk 1 differs from the chunk index" in log, log[-3000:]


def v1_copy(ref: str, tag: str) -> str:
    """The image as a v1 build wrote it: the same layers, a config without the chunk
    index (and the contract annotation of then); the new pinned reference."""
    parsed = parse_ref(ref)
    store = open_store(parsed, StoreOptions(plain_http=True))
    manifest = json.loads(store.get_manifest(parsed.digest).data)
    config = json.loads(store.read_blob(manifest["config"]["digest"]))
    del config[CONFIG_CHUNKS_KEY]
    raw = canonical_json(config)
    digest = sha256_bytes(raw)
    store.put_blob(digest, len(raw), lambda: [raw])
    manifest["config"].update(digest=digest, size=len(raw))
    manifest["annotations"]["dev.modelcar.contract"] = "v1"
    data = canonical_json(manifest)
    pinned = store.put_manifest(data, manifest["mediaType"], sha256_bytes(data))
    store.put_manifest(data, manifest["mediaType"], tag)
    return f"{ref.split('@')[0]}@{pinned}"


def test_a_v1_image_still_pulls_and_streams_file_by_file(origin, tmp_path):
    _reg, ref, model, expected = origin
    old = v1_copy(ref, "v1-contract")
    # a warm pull checks it file by file, as before
    r, result = pull(tmp_path / "warm", old, "--plain-http")
    assert r.code == 0 and tree(Path(result["path"])) == tree(model)
    # cold: each file is released whole once its sha256 matched
    node = Node(tmp_path / "n", old, "--jobs", "1", "--max-rate", "32MiB")
    try:
        code, answer, err = stream(node.url, f"s3://modelcar/{key_of(old)}/")
        assert code == 0, err
        assert answer["tensors"] == {k: {"sha256": v} for k, v in expected.items()}
    finally:
        node.stop()
