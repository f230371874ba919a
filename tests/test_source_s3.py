"""Building from S3 (moto's server) through boto3."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from harness.s3server import S3Server
from modelcar.format import keys as mk
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import assert_one_line_error, run_cli, tree, unpack_with_umoci

FILES = {
    "config.json": b'{"model_type": "bert"}',
    "tokenizer/vocab.txt": b"[PAD]\n[UNK]\nhello\n" * 50,
    "weights/model.safetensors": os.urandom(20 << 20),
}


@pytest.fixture(scope="module")
def s3():
    server = S3Server().start()
    c = server.client()
    c.create_bucket(Bucket="models")
    for path, data in FILES.items():
        c.put_object(Bucket="models", Key=f"bert/{path}", Body=data, ChecksumAlgorithm="SHA256")
    c.put_object(Bucket="models", Key="bert-large/other.bin", Body=b"not this one")
    c.put_object(Bucket="models", Key="bert/", Body=b"")  # a "directory" marker
    yield server
    server.stop()


def _build(s3, source, target, *extra, check=True, env=None):
    r = run_cli(
        "build",
        source,
        target,
        "--plain-http",
        "--json",
        *extra,
        env={**s3.env(), **(env or {})},
        check=check,
    )
    return r, (json.loads(r.stdout.strip().splitlines()[-2]) if r.code == 0 else None)


def test_a_prefix_builds_byte_exact_with_its_etags_recorded(s3, registry, tmp_path):
    r, record = _build(s3, "s3://models/bert", f"{registry.host}/s3/bert:1")
    assert record["source"] == "s3://models/bert" and record["files"] == 3
    rootfs = unpack_with_umoci(r.last_line, tmp_path)  # skopeo + umoci, as a runtime would
    assert tree(rootfs / "models") == FILES

    ref = parse_ref(r.last_line)
    store = open_store(ref, StoreOptions(plain_http=True))
    manifest = json.loads(store.get_manifest(ref.reference).data)
    config = json.loads(store.read_blob(manifest["config"]["digest"]))
    objects = config[mk.SOURCE_OBJECTS]
    assert set(objects) == set(FILES)
    etag = hashlib.md5(FILES["config.json"]).hexdigest()  # a single-part upload's ETag
    assert objects["config.json"]["etag"] == etag

    # the same objects again: the same digest; the weights come from the stat cache
    _, again = _build(s3, "s3://models/bert/", f"{registry.host}/s3/bert:2")
    assert again["digest"] == record["digest"]


def test_s3_errors_are_one_line(s3, registry):
    target = f"{registry.host}/s3/err:1"
    assert_one_line_error(_build(s3, "s3://nope/x", target, check=False)[0], "does not exist")
    assert_one_line_error(
        _build(s3, "s3://models/empty-prefix", target, check=False)[0], "no files"
    )
    assert_one_line_error(_build(s3, "s3:///x", target, check=False)[0], "s3://BUCKET/PREFIX")


def test_access_denied_is_one_line(registry):
    locked = S3Server(enforce_auth=True).start()
    try:
        r, _ = _build(locked, "s3://models/bert", f"{registry.host}/s3/denied:1", check=False)
        assert_one_line_error(r, "refused access")
    finally:
        locked.stop()
