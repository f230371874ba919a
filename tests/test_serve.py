"""The node serves what it holds: a read-only registry over the cache dir.

A real Distribution registry is the origin (its access log counts blob bytes); the
daemon's pull fills a cache dir; `modelcar-cache serve` (and `run --serve`) answers
from it. Independent clients read it: skopeo copies the image off it (checking every
digest itself), containerd pulls through it by a hosts.toml, umoci unpacks the copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from harness.endpoint import Endpoint
from harness.localregistry import LocalRegistry
from harness.models import make_sharded_model
from modelcar.contract.nodecache import model_dir_name
from modelcar.format.image import load_model_image
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import assert_one_line_error, build, cache_cli, pull, tree

MiB = 1 << 20
TOKEN = "fleet-token-0123456789abcdef"


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-origin")
    with LocalRegistry(root / "reg", access_log=True) as reg:
        model = make_sharded_model(root / "model", shards=3, shard_size=3 * MiB)
        (model / "config.json").write_text('{"small": true}')
        ref = build(model, f"{reg.host}/serve/model:v1", "--plain-http")
        yield reg, ref, model


@pytest.fixture
def token_file(tmp_path) -> Path:
    p = tmp_path / "fleet-token"
    p.write_text(TOKEN + "\n")
    return p


def Served(cache: Path, token_file: Path, *extra: str) -> Endpoint:
    return Endpoint(cache, TOKEN, token_file, *extra)


def _image(reg: LocalRegistry, ref: str):
    parsed = parse_ref(ref)
    return load_model_image(open_store(parsed, StoreOptions(plain_http=True)), parsed)


def _blob(reg: LocalRegistry, digest: str) -> bytes:
    r = httpx.get(f"{reg.url}/v2/serve/model/blobs/{digest}", timeout=60, follow_redirects=True)
    r.raise_for_status()
    return r.content


def test_the_endpoint_serves_the_image_byte_for_byte_and_only_by_digest(
    origin, tmp_path, token_file
):
    reg, ref, _model = origin
    cache = tmp_path / "cache"
    pull(cache, ref, "--plain-http")
    image = _image(reg, ref)
    server = Served(cache, token_file)
    try:
        repo = "/v2/serve/model"
        # every layer, the base and the model's, is the origin's blob byte for byte
        for desc in image.manifest.layers:
            got = server.get(f"{repo}/blobs/{desc.digest}")
            assert got.status_code == 200, (desc, got.text)
            assert got.headers["Docker-Content-Digest"] == desc.digest
            assert "sha256:" + hashlib.sha256(got.content).hexdigest() == desc.digest
            assert got.content == _blob(reg, desc.digest)
        # manifests by digest, with their media type; the config as a blob
        top = server.get(f"{repo}/manifests/{image.digest}")
        assert top.status_code == 200
        assert "sha256:" + hashlib.sha256(top.content).hexdigest() == image.digest
        assert top.headers["Content-Type"].startswith("application/vnd.oci.image.")
        config = server.get(f"{repo}/blobs/{image.manifest.config.digest}")
        assert json.loads(config.content)["dev.modelcar.index"]["files"]
        # a range of a regenerated layer, across a tar header into a file
        big = max(image.model_layers, key=lambda d: d.size)
        whole = _blob(reg, big.digest)
        part = server.get(f"{repo}/blobs/{big.digest}", headers={"Range": "bytes=300-1000000"})
        assert part.status_code == 206 and part.content == whole[300:1000001]
        assert part.headers["Content-Range"] == f"bytes 300-1000000/{big.size}"
        tail = server.get(f"{repo}/blobs/{big.digest}", headers={"Range": f"bytes={big.size - 7}-"})
        assert tail.content == whole[-7:]
        bad = server.get(f"{repo}/blobs/{big.digest}", headers={"Range": f"bytes={big.size}-"})
        assert bad.status_code == 416
        # a tag is never served, nor an unknown digest, nor anything to anyone anonymous
        assert server.get(f"{repo}/manifests/v1").status_code == 404
        assert server.get(f"{repo}/blobs/sha256:{'0' * 64}").status_code == 404
        anon = httpx.get(f"{server.url}{repo}/blobs/{big.digest}", timeout=30)
        assert anon.status_code == 401 and anon.json()["errors"][0]["code"] == "UNAUTHORIZED"
        assert httpx.get(f"{server.url}/v2/", timeout=30).status_code == 401
        wrong = server.get(f"{repo}/blobs/{big.digest}", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        basic = httpx.get(f"{server.url}{repo}/blobs/{big.digest}", auth=("x", TOKEN), timeout=60)
        assert basic.status_code == 200 and basic.content == whole
        # HEAD answers the size without a body
        head = httpx.head(
            f"{server.url}{repo}/blobs/{big.digest}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert head.status_code == 200 and int(head.headers["Content-Length"]) == big.size
    finally:
        server.stop()


@pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo not installed")
def test_skopeo_copies_the_image_off_the_node_and_umoci_unpacks_the_same_tree(
    origin, tmp_path, token_file
):
    """An independent client checks every digest the node serves."""
    reg, ref, _model = origin
    cache = tmp_path / "cache"
    pull(cache, ref, "--plain-http")
    image = _image(reg, ref)
    server = Served(cache, token_file)
    before = reg.blob_bytes_served()
    try:
        layout = tmp_path / "copy"
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--src-tls-verify=false",
                "--src-creds",
                f"fleet:{TOKEN}",
                f"docker://127.0.0.1:{server.port}/serve/model@{image.digest}",
                f"oci:{layout}:copy",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    finally:
        server.stop()
    assert reg.blob_bytes_served() == before  # nothing came from the origin
    bundle = tmp_path / "bundle"
    args = ["umoci", "unpack", "--image", f"{layout}:copy", str(bundle)]
    if os.geteuid() != 0:
        args.insert(2, "--rootless")
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    held = cache / "models" / model_dir_name(image.digest)
    assert tree(bundle / "rootfs" / "models") == tree(held)


def test_a_layer_written_by_another_tool_is_not_served(origin, tmp_path, token_file):
    """A modelcar whose layer tar is not the builder's (another mtime): its files check
    out, but the node cannot regenerate the layer byte for byte, so it never serves it."""
    from tests.helpers import make_tar, tar_member
    from tests.test_cache_hostile import push_image  # a hand-made modelcar

    reg, _ref, _model = origin
    data = os.urandom(4096)
    layer = make_tar([tar_member("models/w.bin", data)])  # no models/ dir entry
    ref = push_image(reg, "foreign", layer, {"w.bin": data})
    cache = tmp_path / "cache"
    pull(cache, ref, "--plain-http")
    image = _image(reg, ref)
    server = Served(cache, token_file)
    try:
        layer_desc = image.model_layers[0]
        assert server.get(f"/v2/x/blobs/{layer_desc.digest}").status_code == 404
        # what it kept as received is served: the manifest and the config
        assert server.get(f"/v2/x/manifests/{image.digest}").status_code == 200
    finally:
        server.stop()


def test_serve_refuses_bad_input_in_one_line(tmp_path, token_file):
    r = cache_cli("serve", "--cache-dir", str(tmp_path / "nothing"), check=False)
    assert_one_line_error(r, "serve needs the fleet credential")
    short = tmp_path / "short"
    short.write_text("abc")
    r = cache_cli(
        "serve", "--cache-dir", str(tmp_path), "--fleet-token-file", str(short), check=False
    )
    assert_one_line_error(r, "at least 16 printable characters")
    r = cache_cli(
        "serve",
        "--cache-dir",
        str(tmp_path / "nothing"),
        "--fleet-token-file",
        str(token_file),
        check=False,
    )
    assert_one_line_error(r, "not a cache dir")
    r = cache_cli(
        "run",
        "--node",
        "n1",
        "--cache-dir",
        str(tmp_path / "c"),
        "--config",
        str(token_file),
        "--serve",
        "127.0.0.1:1",
        check=False,
    )
    assert_one_line_error(r, "--serve needs the fleet credential")
    r = cache_cli(
        "pull",
        "localhost:1/x@sha256:" + "0" * 64,
        "--cache-dir",
        str(tmp_path / "c"),
        "--source",
        "nodes",
        check=False,
    )
    assert_one_line_error(r, "nodes source needs the fleet credential")


def _snapshot_with(root: Path, files: dict[str, bytes]) -> bool:
    """True if a snapshot of containerd's native snapshotter holds ``files`` under models/."""
    snapshots = root / "root" / "io.containerd.snapshotter.v1.native" / "snapshots"
    return any((d / "models").is_dir() and tree(d / "models") == files for d in snapshots.iterdir())


def test_containerd_pulls_a_held_model_from_the_node_with_no_blob_from_the_registry(
    origin, tmp_path, token_file
):
    """The node's containerd, its hosts.toml putting the daemon first, pulls the image
    (CRI, as KServe's modelcar and --warm-cri do) and gets every blob from local disk."""
    if os.geteuid() != 0:
        pytest.skip("containerd needs root")
    from harness.containerd import Containerd
    from modelcar.cache_daemon.cri import RuntimeWarmer

    reg, ref, _model = origin
    cache = tmp_path / "cache"
    pull(cache, ref, "--plain-http")
    image = _image(reg, ref)
    expected = tree(cache / "models" / model_dir_name(image.digest))
    server = Served(cache, token_file)
    runtime = Containerd(tmp_path / "containerd").start()
    try:
        # the file the chart's init container writes on every node
        written = cache_cli(
            "hosts-toml",
            "--registry",
            reg.host,
            "--endpoint",
            server.url,
            "--certs-dir",
            str(runtime.root / "certs.d"),
            "--fleet-token-file",
            str(token_file),
            "--plain-http",
        )
        hosts = runtime.root / "certs.d" / reg.host / "hosts.toml"
        assert written.stdout.strip() == str(hosts) and hosts.stat().st_mode & 0o077 == 0
        before = reg.blob_bytes_served()
        warmer = RuntimeWarmer(str(runtime.socket))
        try:
            warmer.pull(ref)
        finally:
            warmer.close()
        assert reg.blob_bytes_served() == before  # not one blob byte from the registry
        assert _snapshot_with(runtime.root, expected)
    finally:
        runtime.stop()
        log = server.stop()
    assert "Traceback" not in log
