"""Regressions from a hostile-input pass: each test failed before its fix.

Real registry, real proxies in front of it (an endless manifest, a trickling mirror),
real API: the bugs were in how our readers bound what they read and how the cache
trusts what it finds on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from harness.models import write_safetensors
from harness.proxy import QuirkProxy
from modelcar.errors import ResponseTooLarge, UnsafeArchive
from modelcar.format.layer import member_path
from modelcar.format.paths import MAX_PATH_BYTES, path_problem
from modelcar.oci.digest import hex_of
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import (
    ROOT,
    assert_one_line_error,
    build,
    cache_cli,
    daemon_once,
    published,
    pull,
    run_cli,
    tree,
)

MiB = 1 << 20
STALL = ["--stall-timeout", "1.5", "--min-speed", "4KiB"]


def _many_long_paths(root: Path, n: int = 2600) -> Path:
    """A tree whose file index is over 2 MiB (long paths), with little data."""
    deep = "/".join(c * 200 for c in "pqr")
    for i in range(n):
        p = root / deep / f"{i:05d}-{'s' * 180}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"%d" % i)
    return root


@pytest.fixture(scope="module")
def big_index_ref(registry, tmp_path_factory):
    src = _many_long_paths(tmp_path_factory.mktemp("bigindex") / "model")
    return src, build(src, f"{registry.host}/hard/bigindex", "--plain-http")


def _model(root: Path, seed: int, size: int = 3 * MiB) -> Path:
    root.mkdir(parents=True)
    write_safetensors(root / "model.safetensors", size, seed=seed)
    (root / "config.json").write_text(json.dumps({"seed": seed}))
    return root


# --- 1. blobs over 2 MiB -----------------------------------------------------------


def test_a_config_over_two_mib_is_read_whole_from_a_registry(big_index_ref, tmp_path):
    src, ref = big_index_ref
    store = open_store(parse_ref(ref), StoreOptions(plain_http=True))
    manifest = json.loads(store.get_manifest(parse_ref(ref).digest).data)
    assert manifest["config"]["size"] > 2 * MiB  # the size that used to be cut at 2 MiB

    info = json.loads(run_cli("inspect", ref, "--plain-http", "--json").stdout)
    assert len(info["files"]) == 2600
    assert run_cli("verify", ref, "--plain-http").code == 0
    cache = tmp_path / "cache"
    r, result = pull(cache, ref, "--plain-http")
    assert r.code == 0 and result["files"] == 2600
    assert tree(Path(result["path"])) == tree(src)

    # and the bound is declared, not accidental: a smaller limit refuses it in one line
    with pytest.raises(ResponseTooLarge) as err:
        store.read_blob(manifest["config"]["digest"], max_size=1 * MiB)
    assert "1 MiB limit" in err.value.one_line()


# --- 2. manifests are capped as they arrive ------------------------------------------


def _endless(method: str, path: str, body: bytes):
    if method == "GET" and "/manifests/" in path:
        sent = {"n": 0}

        def chunks():
            yield b'{"schemaVersion":2,"padding":"'
            deadline = time.monotonic() + 60
            while sent["n"] < 256 * MiB and time.monotonic() < deadline:  # bounded
                sent["n"] += MiB
                yield b"x" * MiB

        _endless.sent = sent  # type: ignore[attr-defined]
        return chunks()
    return None


def test_an_endless_manifest_fails_at_the_limit(registry, tmp_path):
    ref = build(_model(tmp_path / "m", 1), f"{registry.host}/hard/endless", "--plain-http")
    with QuirkProxy(f"http://{registry.host}", stream=_endless) as proxy:
        via = ref.replace(registry.host, proxy.host)
        r, _ = pull(tmp_path / "cache", via, "--plain-http", check=False)
    assert_one_line_error(r, "4 MiB limit", "hard/endless")
    assert _endless.sent["n"] < 64 * MiB  # type: ignore[attr-defined]  # we hung up early
    assert published(tmp_path / "cache") == []


# --- 3. a stalled source is abandoned -------------------------------------------------


def _trickle(match: str):
    def stream(method: str, path: str, body: bytes):
        if method != "GET" or match not in path or "/blobs/" not in path:
            return None

        def chunks():
            yield body[:100]
            deadline = time.monotonic() + 60
            for i in range(100, len(body)):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.2)
                yield body[i : i + 1]

        return chunks()

    return stream


def test_a_trickling_mirror_falls_back_to_the_origin_at_the_same_offset(registry, tmp_path):
    src = _model(tmp_path / "m", 2)
    ref = build(src, f"{registry.host}/hard/trickle", "--plain-http")
    with QuirkProxy(f"http://{registry.host}", stream=_trickle("hard/trickle")) as mirror:
        started = time.monotonic()
        r, result = pull(
            tmp_path / "cache", ref, "--plain-http", "--mirror", f"http://{mirror.host}", *STALL
        )
        seconds = time.monotonic() - started
    assert r.code == 0
    assert tree(Path(result["path"])) == tree(src)
    assert seconds < 60  # it did not wait for the trickle to finish
    assert any("/blobs/" in p for m, p, _ in mirror.log if m == "GET")  # the mirror was tried


def test_the_daemon_survives_bad_sources_and_serves_its_other_models(
    registry, big_index_ref, tmp_path
):
    """Items 1-3 through `modelcar-cache run`: the big-config model, an endless manifest
    and a stalled only-source each end as they should, and the daemon goes on."""
    good = build(_model(tmp_path / "good", 3), f"{registry.host}/hard/good", "--plain-http")
    slow = build(_model(tmp_path / "slow", 4), f"{registry.host}/hard/slow", "--plain-http")
    endless = build(_model(tmp_path / "end", 5), f"{registry.host}/hard/endless2", "--plain-http")

    def stream(method, path, body):
        return (
            _endless(method, path, body)
            if "endless2" in path
            else _trickle("hard/slow")(method, path, body)
        )

    with QuirkProxy(f"http://{registry.host}", stream=stream) as proxy:
        models = [
            endless.replace(registry.host, proxy.host),
            slow.replace(registry.host, proxy.host),
            big_index_ref[1],
            good,
        ]
        config = tmp_path / "models.yaml"
        config.write_text(json.dumps({"models": models}))
        cache = tmp_path / "cache"
        r = daemon_once(cache, config, *STALL, timeout=240)
    assert r.code == 0, r.stderr
    assert "Traceback" not in r.stderr
    listing = cache_cli("ls", "--cache-dir", str(cache), "--json").stdout.splitlines()
    states = {row["digest"]: row for row in map(json.loads, listing)}
    refs = {"endless": endless, "slow": slow, "big": big_index_ref[1], "good": good}
    dig = {name: ref.split("@")[1] for name, ref in refs.items()}
    assert states[dig["good"]]["state"] == states[dig["big"]]["state"] == "ready"
    assert states[dig["endless"]]["state"] == "failed"
    assert "4 MiB limit" in states[dig["endless"]]["error"]
    assert states[dig["slow"]]["state"] == "failed"
    assert "stalled" in states[dig["slow"]]["error"]


# --- 4. a dir already at models/sha256-<hex> is checked, not trusted --------------------


def test_an_empty_dir_where_a_model_belongs_is_quarantined_and_the_model_pulled(registry, tmp_path):
    src = _model(tmp_path / "m", 6)
    ref = build(src, f"{registry.host}/hard/squat", "--plain-http")
    cache = tmp_path / "cache"
    (cache / "models" / f"sha256-{hex_of(ref.split('@')[1])}").mkdir(parents=True)
    r, result = pull(cache, ref, "--plain-http")
    assert r.code == 0 and result["files"] == 2
    assert tree(Path(result["path"])) == tree(src)
    assert len(list((cache / "quarantine").iterdir())) == 1
    row = json.loads(cache_cli("ls", "--cache-dir", str(cache), "--json").stdout)
    assert row["state"] == "ready" and row["size"] == result["size"] > 0


# --- 5, 7, 14. one rule for model paths --------------------------------------------


@pytest.mark.parametrize(
    "name, needle",
    [
        ("a\\b", "backslash"),
        (os.fsdecode(b"bad\xff.bin"), "not valid UTF-8"),
    ],
    ids=["backslash", "non-utf8"],
)
def test_the_builder_refuses_names_the_puller_would_refuse(tmp_path, name, needle):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.txt").write_text("ok")
    (src / name).write_bytes(b"x")
    r = run_cli("build", str(src), f"oci:{tmp_path / 'out'}", "-q", check=False)
    assert_one_line_error(r, needle, "--exclude")
    assert "\\xff" in r.stderr if needle == "not valid UTF-8" else True
    assert not (tmp_path / "out").exists()  # nothing written
    # the puller applies the same rule to a layer member
    assert path_problem(name) is not None
    with pytest.raises(UnsafeArchive):
        member_path("models/" + name, "sha256:" + "0" * 64)


def test_paths_that_cannot_be_published_under_the_cache_are_refused(tmp_path):
    # the tree under a short temp dir: the deep path must still fit in the OS's PATH_MAX
    src = Path(tempfile.mkdtemp(prefix="deep-"))
    try:
        deep = src
        while len(str(deep.relative_to(src))) < MAX_PATH_BYTES:
            deep = deep / ("d" * 250)
        deep.mkdir(parents=True)
        (deep / "w.bin").write_bytes(b"x")
        r = run_cli("build", str(src), f"oci:{tmp_path / 'out'}", "-q", check=False)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    assert_one_line_error(r, f"{MAX_PATH_BYTES}-byte limit")
    assert len(r.stderr) < 600 + len(str(deep))  # one short line (the path, once)
    # a name no local filesystem holds, but a remote source can list
    assert "over 255 bytes" in (path_problem("x" * 256) or "")


# --- 6. revocation -------------------------------------------------------------------


def test_a_revoked_token_cannot_write_at_once_and_reads_stop_within_the_cache_ttl(api):
    from modelcar.api.tokens import revoke_token

    admin = api.client(api.admin)
    created = admin.post("/v1/tokens", json={"name": "rogue", "role": "admin"}).json()
    rogue = api.client(created["token"])
    assert rogue.get("/v1/tokens").status_code == 200  # now cached on this worker
    assert rogue.post("/v1/tokens", json={"name": "t1", "role": "read"}).status_code == 201
    # revoked straight in the database, as another worker or replica would
    with api.db.writing() as s:
        revoke_token(s, created["id"])
    assert rogue.post("/v1/tokens", json={"name": "t2", "role": "admin"}).status_code == 401
    assert rogue.put("/v1/policies/p", json={"models": ["m:1"]}).status_code == 401
    deadline = time.monotonic() + 10
    while rogue.get("/v1/tokens").status_code == 200:  # reads: within the 5 s ttl
        assert time.monotonic() < deadline, "a revoked token kept reading past the cache ttl"
        time.sleep(0.25)
    names = {t["name"] for t in admin.get("/v1/tokens").json()}
    assert "t2" not in names


# --- 8. sizes are known before the upload ------------------------------------------------


def test_too_many_files_fail_before_any_upload_with_the_counts(registry, tmp_path):
    src = tmp_path / "src"
    for i in range(50_000):
        d = src / f"d{i % 100:03d}"
        if i < 100:
            d.mkdir(parents=True)
        (d / f"f{i:05d}").write_bytes(b"x")
    with QuirkProxy(f"http://{registry.host}") as proxy:
        r = run_cli("build", str(src), f"{proxy.host}/hard/many", "--plain-http", "-q", check=False)
    assert_one_line_error(r, "image config would be", "50000 files", "4 MiB")
    assert not [p for m, p, _ in proxy.log if m in ("POST", "PUT", "PATCH")]


def test_a_refused_manifest_names_its_digest_with_an_at_sign(registry, tmp_path):
    def refuse(method, path, n):
        if method == "PUT" and "/manifests/sha256:" in path:
            return ("rewrite", 400)
        return None

    with QuirkProxy(f"http://{registry.host}", refuse) as proxy:
        r = run_cli(
            "build",
            str(_model(tmp_path / "m", 7)),
            f"{proxy.host}/hard/refused",
            "--plain-http",
            "-q",
            check=False,
        )
    assert_one_line_error(r, "hard/refused@sha256:")
    assert "refused:sha256:" not in r.stderr


# --- 12, 13. publishing problems are found early and named --------------------------------


def test_an_unwritable_models_dir_fails_before_the_download_naming_it(registry, tmp_path):
    ref = build(_model(tmp_path / "m", 8), f"{registry.host}/hard/ro", "--plain-http")
    cache = tmp_path / "cache"
    for sub in ("models", "staging", "index", "quarantine"):
        (cache / sub).mkdir(parents=True)
    (cache / "models").chmod(0o555)
    with QuirkProxy(f"http://{registry.host}") as proxy:
        r = run_cli(
            "pull",
            ref.replace(registry.host, proxy.host),
            "--cache-dir",
            str(cache),
            "--plain-http",
            "-q",
            module="modelcar.cache_daemon.cli",
            check=False,
            honour_permissions=True,
        )
    assert_one_line_error(r, "cannot publish into the cache", str(cache / "models"))
    assert not [p for m, p, _ in proxy.log if "/blobs/" in p]  # no byte was fetched


def test_a_cache_dir_removed_mid_pull_says_so(registry, tmp_path):
    ref = build(
        _model(tmp_path / "m", 9, size=12 * MiB), f"{registry.host}/hard/gone", "--plain-http"
    )
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelcar.cache_daemon.cli",
            "pull",
            ref,
            "--cache-dir",
            str(cache),
            "--plain-http",
            "-q",
            "--max-rate",
            "2MiB",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not any((cache / "staging").glob("sha256-*/*")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    shutil.rmtree(cache)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "the cache dir vanished" in lines[0], err
    assert "corrupt" not in err


# --- 16. inspect shows where the model came from -------------------------------------------


def test_inspect_shows_the_manifest_annotations_and_the_source(tmp_path):
    out = f"oci:{tmp_path / 'out'}"
    ref = run_cli(
        "build",
        str(_model(tmp_path / "m", 10)),
        out,
        "-q",
        "--source-uri",
        "hf://acme/m@" + "a" * 40,
    ).last_line
    info = json.loads(run_cli("inspect", ref, "--json").stdout)
    assert info["annotations"]["dev.modelcar.source"] == "hf://acme/m@" + "a" * 40
    assert info["annotations"]["dev.modelcar.contract"] == "v1.1"
    plain = run_cli("inspect", ref).stdout
    assert f"source     hf://acme/m@{'a' * 40}" in plain
    assert f"commit     {'a' * 40}" in plain and info["commit"] == "a" * 40
    assert "signed     no (no cosign signature)" in plain and info["signatures"] == 0


def test_an_endless_error_body_is_read_only_up_to_a_bound(registry, tmp_path):
    ref = build(_model(tmp_path / "m", 11), f"{registry.host}/hard/errbody", "--plain-http")
    sent = {"n": 0}

    def refuse(method, path, n):
        return ("rewrite", 400) if method == "GET" and "/blobs/" in path else None

    def endless(method, path, body):
        if method != "GET" or "/blobs/" not in path:
            return None

        def chunks():
            for _ in range(512):  # bounded: 512 MiB at most
                sent["n"] += MiB
                yield b"x" * MiB

        return chunks()

    with QuirkProxy(f"http://{registry.host}", refuse, stream=endless) as proxy:
        r, _ = pull(
            tmp_path / "cache", ref.replace(registry.host, proxy.host), "--plain-http", check=False
        )
    assert_one_line_error(r, "HTTP 400")
    assert sent["n"] < 64 * MiB


def test_a_stalled_source_download_in_the_builder_resumes_on_a_new_connection(registry, tmp_path):
    """The builder's remote-file reader (Hub, MLflow) obeys the same progress rule."""
    from modelcar.builder.sources.httpfile import HttpFile
    from modelcar.http.body import StallRule

    src = _model(tmp_path / "m", 12, size=1 * MiB)
    ref = build(src, f"{registry.host}/hard/httpfile", "--plain-http")
    store = open_store(parse_ref(ref), StoreOptions(plain_http=True))
    manifest = json.loads(store.get_manifest(parse_ref(ref).digest).data)
    layer = manifest["layers"][-1]
    gets = {"n": 0}

    def first_trickles(method, path, body):
        if method == "GET" and "/blobs/" in path:
            gets["n"] += 1
            if gets["n"] == 1:
                return _trickle("hard/httpfile")(method, path, body)
        return None

    with (
        QuirkProxy(f"http://{registry.host}", stream=first_trickles) as proxy,
        httpx.Client(timeout=30) as client,
    ):
        url = f"http://{proxy.host}/v2/hard/httpfile/blobs/{layer['digest']}"

        def open_at(offset: int):
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            return client.send(client.build_request("GET", url, headers=headers), stream=True)

        waits: list[float] = []
        f = HttpFile(
            open_at,
            layer["size"],
            url,
            lambda s, n, w: waits.append(s),
            stall=StallRule(window=1.5, min_speed=4096),
        )
        data = b"".join(iter(lambda: f.read(1 << 16), b""))
        f.close()
    assert hashlib.sha256(data).hexdigest() == layer["digest"].split(":")[1]
    assert gets["n"] == 2 and len(waits) == 1  # one stall, one resumed request
