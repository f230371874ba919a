"""One hostile tag never takes a node down: through a real registry and `modelcar-cache
run`, a corrupt gzip layer, a config nested 200,000 levels deep, a duplicate-platform index
and a decompression bomb each fail their own model, in one line, and the daemon pulls the
good model after them."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

from modelcar.oci import mediatypes as mt
from modelcar.oci.digest import sha256_bytes as sha
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import (
    assert_one_line_error,
    build,
    cache_cli,
    daemon_once,
    make_tar,
    pull,
    run_cli,
    unpack_with_umoci,
)

MiB = 1 << 20


def _tar_of(files: dict[str, bytes]) -> bytes:
    return make_tar(list(files.items()))


def _push(registry, repo: str, config: bytes, layer: bytes, media: str) -> str:
    store = open_store(parse_ref(f"{registry.host}/{repo}:t"), StoreOptions(plain_http=True))
    for blob in (config, layer):
        store.put_blob(sha(blob), len(blob), lambda b=blob: [b])
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": media, "digest": sha(layer), "size": len(layer)}],
        }
    ).encode()
    return f"{registry.host}/{repo}@{store.put_manifest(manifest, mt.OCI_MANIFEST, 't')}"


CONFIG = b'{"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}'


def _bad_gzip(registry) -> str:
    good = bytearray(gzip.compress(_tar_of({"models/a.txt": b"x" * 100_000})))
    good[40:60] = b"\xff" * 20
    return _push(registry, "hostile2/gzip", CONFIG, bytes(good), mt.OCI_LAYER_GZIP)


def _deep_config(registry) -> str:
    deep = b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    return _push(registry, "hostile2/deep", deep, _tar_of({"models/a": b"a"}), mt.OCI_LAYER_TAR)


def _bomb(registry) -> str:
    bomb = gzip.compress(_tar_of({"models/zero.bin": bytes(300 * MiB)}), compresslevel=9)
    return _push(registry, "hostile2/bomb", CONFIG, bomb, mt.OCI_LAYER_GZIP)


def _two_amd64(registry, tmp_path: Path) -> str:
    refs = []
    for i in range(2):
        src = tmp_path / f"twin{i}"
        src.mkdir()
        (src / "w.bin").write_bytes(bytes([i]) * 4096)
        refs.append(build(src, f"{registry.host}/hostile2/twins:v{i}", "--plain-http"))
    store = open_store(
        parse_ref(f"{registry.host}/hostile2/twins:i"), StoreOptions(plain_http=True)
    )
    children = []
    for ref in refs:
        fetched = store.get_manifest(ref.split("@")[1])
        children.append(
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": fetched.digest,
                "size": len(fetched.data),
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        )
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": children}
    ).encode()
    return f"{registry.host}/hostile2/twins@{store.put_manifest(index, mt.OCI_INDEX, 'i')}"


def test_hostile_tags_fail_their_own_model_and_the_daemon_goes_on(registry, tmp_path):
    good_src = tmp_path / "good"
    good_src.mkdir()
    (good_src / "weights.bin").write_bytes(b"good" * 50_000)
    good = build(good_src, f"{registry.host}/hostile2/good", "--plain-http")
    bad = {
        "gzip": _bad_gzip(registry),
        "deep": _deep_config(registry),
        "bomb": _bomb(registry),
        "twins": _two_amd64(registry, tmp_path),
    }
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"models": [*bad.values(), good]}))
    cache = tmp_path / "cache"
    r = daemon_once(cache, config, timeout=600)
    assert r.code == 0, r.stderr
    assert "Traceback" not in r.stderr
    rows = {
        row["digest"]: row
        for row in map(
            json.loads, cache_cli("ls", "--cache-dir", str(cache), "--json").stdout.splitlines()
        )
    }
    assert rows[good.split("@")[1]]["state"] == "ready"
    expected = {
        "gzip": "corrupt gzip",
        "deep": "not valid JSON",
        "bomb": "expands past",
        "twins": "linux/amd64 twice",
    }
    for name, ref in bad.items():
        row = rows[ref.split("@")[1]]
        assert row["state"] == "failed", name
        assert expected[name] in row["error"] and "\n" not in row["error"], (name, row["error"])
    assert not list((cache / "staging").glob("sha256-*"))  # nothing half-done left behind

    # the same refs by hand: one line each, non-zero; `modelcar verify` refuses the twins
    r, _ = pull(tmp_path / "one", bad["gzip"], "--plain-http", check=False)
    assert_one_line_error(r, "corrupt gzip")
    r = run_cli("verify", bad["twins"], "--plain-http", check=False)
    assert_one_line_error(r, "linux/amd64 twice")


def _push_layers(registry, repo: str, layers: list[bytes]) -> str:
    store = open_store(parse_ref(f"{registry.host}/{repo}:t"), StoreOptions(plain_http=True))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha(layer) for layer in layers]},
        }
    ).encode()
    for blob in (config, *layers):
        store.put_blob(sha(blob), len(blob), lambda b=blob: [b])
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": sha(config), "size": len(config)},
            "layers": [
                {"mediaType": mt.OCI_LAYER_TAR, "digest": sha(layer), "size": len(layer)}
                for layer in layers
            ],
        }
    ).encode()
    return f"{registry.host}/{repo}@{store.put_manifest(manifest, mt.OCI_MANIFEST, 't')}"


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_whiteouts_of_models_and_leading_slashes_apply_as_umoci_applies_them(registry, tmp_path):
    """A hand-built image whose upper layers delete /models itself (``.wh.models``) and
    name files with a leading slash: the node's tree is umoci's, byte for byte."""
    layers = [
        _tar_of({"models/a.txt": b"lower a", "models/sub/b.txt": b"lower b"}),
        _tar_of({".wh.models": b"", "models/c.txt": b"upper c"}),
        _tar_of({"/models/d.txt": b"slash d", "./models/sub/e.txt": b"dot e"}),
    ]
    ref = _push_layers(registry, "hostile2/whiteouts", layers)
    _, result = pull(tmp_path / "cache", ref, "--plain-http")
    assert result is not None
    ours = _files(Path(result["path"]))
    theirs = _files(unpack_with_umoci(ref, tmp_path / "umoci") / "models")
    assert ours == theirs == {"c.txt": b"upper c", "d.txt": b"slash d", "sub/e.txt": b"dot e"}


def test_modelpack_raw_layers_d_and_d_slash_e_are_refused(registry, tmp_path):
    mp = "application/vnd.cncf.model."
    store = open_store(parse_ref(f"{registry.host}/hostile2/mp:t"), StoreOptions(plain_http=True))
    config = b'{"descriptor": {}, "config": {}, "modelfs": {"type": "layers", "diffIds": []}}'
    files = {"d": b"file d", "d/e": b"file e"}
    for blob in (config, *files.values()):
        store.put_blob(sha(blob), len(blob), lambda b=blob: [b])
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": mp + "manifest.v1+json",
            "config": {
                "mediaType": mp + "config.v1+json",
                "digest": sha(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": mp + "weight.v1.raw",
                    "digest": sha(data),
                    "size": len(data),
                    "annotations": {"org.cncf.model.filepath": path},
                }
                for path, data in files.items()
            ],
        }
    ).encode()
    digest = store.put_manifest(manifest, mt.OCI_MANIFEST, "t")
    r, _ = pull(
        tmp_path / "cache", f"{registry.host}/hostile2/mp@{digest}", "--plain-http", check=False
    )
    assert_one_line_error(r, "where another's directory is", "d/e")


def test_a_pull_does_not_wait_for_an_api_that_hangs(registry, tmp_path):
    """The API accepts connections and never answers: the daemon's reports wait on their
    own thread, the pull goes on and publishes (before any report has been answered)."""
    import socket
    import threading

    from modelcar.cache_daemon.cachedir import CacheDir
    from modelcar.cache_daemon.daemon import Daemon, DaemonOptions
    from modelcar.cache_daemon.desired import DesiredFromFile
    from modelcar.cache_daemon.pull import PullOptions
    from modelcar.contract.client import ApiClient

    src = tmp_path / "m"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"w" * 3_000_000)
    ref = build(src, f"{registry.host}/hostile2/hang", "--plain-http")
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)  # accepted by the kernel, never read or answered
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({"models": [ref]}))
    cache = CacheDir(tmp_path / "cache").open()
    api = ApiClient(f"http://127.0.0.1:{hang.getsockname()[1]}", "t", timeout=120, attempts=1)
    options = DaemonOptions(node="n1", pull=PullOptions(store=StoreOptions(plain_http=True)))
    daemon = Daemon(cache, options, DesiredFromFile(config), api=api)
    runner = threading.Thread(target=daemon.run, kwargs={"once": True}, daemon=True)
    runner.start()
    try:
        digest = ref.split("@")[1]
        deadline = time.monotonic() + 110  # well inside the API client's 120 s timeout
        while not cache.is_published(digest):
            assert time.monotonic() < deadline, "the pull waited for the API"
            time.sleep(0.1)
    finally:
        daemon.stop()
        hang.close()  # the reports in flight fail now, and the daemon ends
        runner.join(timeout=150)
        cache.close()
