"""Model images made by other tools, cached by the node with the same guarantees as
ours: a hand-built modelcar (`podman build` of KServe's recipe, gzip and zstd layers,
a whiteout), a ModelPack artifact as model-spec documents it, and a KitOps-shaped
ModelKit (layers made with GNU tar, gzip and zstd, pushed by skopeo). Hostile
variants of each are refused in one line with nothing published."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from harness.models import write_safetensors
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.pull import Puller, PullOptions
from modelcar.errors import ModelcarError
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import (
    ROOT,
    assert_one_line_error,
    make_tar,
    published,
    pull,
    run_cli,
    tar_member,
    tree,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MP = "application/vnd.cncf.model."
KIT = "application/vnd.kitops.modelkit."


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("formats") / "data"
    (d / "tokenizer").mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "bert"}\n')
    (d / "tokenizer" / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    write_safetensors(d / "model.safetensors", 1_500_000, seed=17)
    return d


def _published_tree(cache: Path, ref: str) -> dict[str, bytes]:
    root = cache / "models" / f"sha256-{ref.split('@sha256:')[1]}"
    for p in root.rglob("*"):
        assert (p.stat().st_mode & 0o777) == (0o755 if p.is_dir() else 0o644), p
    return tree(root)


# --- a hand-built modelcar: podman build, as KServe's docs build one ----------------


@pytest.fixture(scope="module")
def hand_built(podman, model, registry, tmp_path_factory) -> dict[str, str]:
    work = tmp_path_factory.mktemp("hand")
    rootfs = work / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy("/usr/bin/busybox", rootfs / "bin" / "busybox")
    for tool in ("sh", "mkdir", "chmod", "rm"):
        (rootfs / "bin" / tool).symlink_to("busybox")
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(work / "rootfs.tar"), "."], check=True)
    podman("import", "-q", str(work / "rootfs.tar"), "localhost/formats-busybox:1")
    ctx = work / "ctx"
    shutil.copytree(model, ctx / "data")
    (ctx / "data" / "stale.bin").write_bytes(b"removed by a later layer")
    (ctx / "Containerfile").write_text(
        "FROM localhost/formats-busybox:1\n"
        "RUN mkdir /models && chmod 775 /models\n"
        "COPY data/ /models/\n"
        "RUN rm /models/stale.bin\n"
    )
    podman(
        "build",
        "-q",
        "--layers=false",
        "--isolation",
        "chroot",
        "-t",
        "localhost/formats-hand:1",
        str(ctx),
        timeout=600,
    )
    digestfile = work / "gzip.digest"
    podman(
        "push",
        "--tls-verify=false",
        "--compression-format",
        "gzip",
        "--digestfile",
        str(digestfile),
        "localhost/formats-hand:1",
        f"docker://{registry.host}/hand/gzip:1",
    )
    refs = {"gzip": f"{registry.host}/hand/gzip@{digestfile.read_text().strip()}"}
    # zstd: recompressed by skopeo into a layout (podman would reuse the gzip blobs)
    podman(
        "save", "--format", "oci-archive", "-o", str(work / "hand.tar"), "localhost/formats-hand:1"
    )
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--dest-compress",
            "--dest-compress-format",
            "zstd",
            f"oci-archive:{work / 'hand.tar'}",
            f"oci:{work / 'zstd'}:1",
        ],
        check=True,
    )
    refs["zstd"] = _skopeo_push(work / "zstd", f"{registry.host}/hand/zstd", tag="1")
    return refs


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_hand_built_modelcar_is_cached_byte_exact(hand_built, model, compression, tmp_path):
    ref = hand_built[compression]
    inspected = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    )
    assert all(compression in layer["mediaType"] for layer in inspected["layers"])
    _, info = pull(tmp_path / "cache", ref, "--plain-http")
    assert info["files"] == 3
    assert _published_tree(tmp_path / "cache", ref) == tree(model)  # stale.bin whited out
    ok = run_cli("verify", ref, "--plain-http")
    assert "3 files verified" in ok.stdout
    shown = run_cli("inspect", ref, "--plain-http").stdout
    assert "hand-built modelcar" in shown
    # the daemon's scrub uses the index it computed
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelcar.cache_daemon.cli",
            "verify",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr


# --- ModelPack and KitOps: OCI layouts written as their docs show, pushed by skopeo ---


def _layout(work: Path, manifest_for) -> Path:
    """An OCI image layout holding the blobs, with the manifest ``manifest_for(blobs)``."""
    blobs = work / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        (blobs / _sha(data)[7:]).write_bytes(data)
        return {"digest": _sha(data), "size": len(data)}

    manifest = json.dumps(manifest_for(put)).encode()
    (work / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (work / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        **put(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "v1"},
                    }
                ],
            }
        )
    )
    return work


def _skopeo_push(layout: Path, dest: str, tag: str = "v1") -> str:
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--preserve-digests",
            "--dest-tls-verify=false",
            f"oci:{layout}:{tag}",
            f"docker://{dest}:{tag}",
        ],
        check=True,
    )
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{dest}:{tag}"],
        capture_output=True,
        check=True,
    ).stdout
    return f"{dest}@{_sha(raw)}"


def _gnu_tar(src: Path, names: list[str], compress: str | None = None) -> bytes:
    data = subprocess.run(
        [
            "tar",
            "-C",
            str(src),
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
            "-",
            *names,
        ],
        capture_output=True,
        check=True,
    ).stdout
    if compress:
        data = subprocess.run(
            [compress, "-c", "-q"], input=data, capture_output=True, check=True
        ).stdout
    return data


def _file_meta(path: Path, name: str) -> str:
    return json.dumps(
        {
            "name": name,
            "mode": 0o644,
            "uid": 0,
            "gid": 0,
            "size": path.stat().st_size,
            "mtime": "1970-01-01T00:00:00Z",
            "typeflag": 48,
        }
    )


@pytest.fixture(scope="module")
def modelpack(model, registry, tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("modelpack")
    (work / "src").mkdir()
    shutil.copytree(model, work / "src", dirs_exist_ok=True)

    def manifest(put):
        weight = (model / "model.safetensors").read_bytes()
        config = (model / "config.json").read_bytes()
        layers = [
            {
                "mediaType": MP + "weight.v1.raw",
                **put(weight),
                "annotations": {
                    "org.cncf.model.filepath": "model.safetensors",
                    "org.cncf.model.file.metadata+json": _file_meta(
                        model / "model.safetensors", "model.safetensors"
                    ),
                    "org.opencontainers.image.title": "model.safetensors",
                },
            },
            {
                "mediaType": MP + "weight.config.v1.raw",
                **put(config),
                "annotations": {
                    "org.cncf.model.filepath": "config.json",
                    "org.opencontainers.image.title": "config.json",
                },
            },
            {
                "mediaType": MP + "weight.config.v1.tar+zstd",
                **put(_gnu_tar(work / "src", ["tokenizer"], "zstd")),
            },
        ]
        cfg = json.dumps(
            {
                "descriptor": {"name": "bert-tiny", "version": "1.0", "family": "bert"},
                "config": {"format": "safetensors", "paramSize": "1M"},
                "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]},
            }
        ).encode()
        return {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": MP + "manifest.v1+json",
            "config": {"mediaType": MP + "config.v1+json", **put(cfg)},
            "layers": layers,
        }

    return _skopeo_push(_layout(work / "layout", manifest), f"{registry.host}/pack/bert")


@pytest.fixture(scope="module")
def modelkit(model, registry, tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("modelkit")
    src = work / "src"
    shutil.copytree(model, src)
    (src / "README.md").write_text("# bert-tiny\n")

    def manifest(put):
        kitfile = json.dumps(
            {
                "manifestVersion": "1.0",
                "package": {"name": "bert-tiny"},
                "model": {
                    "path": "model.safetensors",
                    "parts": [{"path": "config.json"}, {"path": "tokenizer"}],
                },
                "docs": [{"path": "README.md"}],
            }
        ).encode()
        return {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": KIT + "config.v1+json", **put(kitfile)},
            "layers": [
                {
                    "mediaType": KIT + "model.v1.tar+gzip",
                    **put(_gnu_tar(src, ["model.safetensors"], "gzip")),
                },
                {"mediaType": KIT + "modelpart.v1.tar", **put(_gnu_tar(src, ["config.json"]))},
                {
                    "mediaType": KIT + "modelpart.v1.tar+zstd",
                    **put(_gnu_tar(src, ["tokenizer"], "zstd")),
                },
                {
                    "mediaType": KIT + "docs.v1.tar+gzip",
                    **put(_gnu_tar(src, ["README.md"], "gzip")),
                },
            ],
        }

    return _skopeo_push(_layout(work / "layout", manifest), f"{registry.host}/kit/bert")


def test_a_modelpack_artifact_is_cached_byte_exact(modelpack, model, tmp_path):
    _, info = pull(tmp_path / "cache", modelpack, "--plain-http")
    assert info["files"] == 3 and info["layers"] == 3
    assert _published_tree(tmp_path / "cache", modelpack) == tree(model)
    assert "3 files verified" in run_cli("verify", modelpack, "--plain-http").stdout
    assert "CNCF ModelPack" in run_cli("inspect", modelpack, "--plain-http").stdout


def test_a_kitops_modelkit_is_cached_byte_exact(modelkit, model, tmp_path):
    _, info = pull(tmp_path / "cache", modelkit, "--plain-http")
    want = tree(model) | {"README.md": b"# bert-tiny\n"}
    assert _published_tree(tmp_path / "cache", modelkit) == want
    assert info["files"] == 4
    assert "KitOps ModelKit" in run_cli("inspect", modelkit, "--plain-http").stdout


def _kill_9_mid_file(ref: str, cache: Path, path: str, past: int = 1_000_000) -> None:
    """Start a slow pull and SIGKILL it once ``path`` has ``past`` bytes staged."""
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
            "--max-rate",
            "2MiB",
        ],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    partial = cache / "staging" / f"sha256-{ref.split('@sha256:')[1]}" / path
    deadline = time.monotonic() + 30
    while not (partial.exists() and partial.stat().st_size > past):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_a_raw_layer_resumes_after_kill_9(registry, tmp_path):
    big = tmp_path / "big.safetensors"
    write_safetensors(big, 6_000_000, seed=23)

    def manifest(put):
        cfg = json.dumps(
            {"descriptor": {"name": "big"}, "modelfs": {"type": "layers", "diffIds": []}}
        ).encode()
        return {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": MP + "manifest.v1+json",
            "config": {"mediaType": MP + "config.v1+json", **put(cfg)},
            "layers": [
                {
                    "mediaType": MP + "weight.v1.raw",
                    **put(big.read_bytes()),
                    "annotations": {"org.cncf.model.filepath": "big.safetensors"},
                }
            ],
        }

    ref = _skopeo_push(_layout(tmp_path / "layout", manifest), f"{registry.host}/pack/big")
    cache = tmp_path / "cache"
    _kill_9_mid_file(ref, cache, "big.safetensors")
    _, info = pull(cache, ref, "--plain-http")
    assert info["bytes_resumed"] > 1_000_000
    assert info["bytes_fetched"] < 6_000_000
    assert _published_tree(cache, ref) == {"big.safetensors": big.read_bytes()}


# --- refused: what cannot be read, and hostile layers in every format ---------------


def _push(
    registry,
    repo: str,
    config_type: str,
    layers: list[tuple[str, bytes]],
    artifact_type: str | None = None,
) -> str:
    ref = parse_ref(f"{registry.host}/{repo}:t")
    store = open_store(ref, StoreOptions(plain_http=True))
    config = b'{"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}'
    for blob in (config, *(data for _, data in layers)):
        store.put_blob(_sha(blob), len(blob), lambda b=blob: [b])
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": _sha(config), "size": len(config)},
        "layers": [{"mediaType": m, "digest": _sha(d), "size": len(d)} for m, d in layers],
    }
    if artifact_type:
        manifest["artifactType"] = artifact_type
    digest = store.put_manifest(json.dumps(manifest).encode(), OCI_MANIFEST, "t")
    return f"{registry.host}/{repo}@{digest}"


def test_what_cannot_be_read_is_refused_naming_format_and_media_type(registry, tmp_path):
    tar = make_tar([("a", b"x")])
    unknown_layer = _push(
        registry,
        "refuse/pack",
        MP + "config.v1+json",
        [(MP + "weight.v1.tar+lz4", tar)],
        MP + "manifest.v1+json",
    )
    r, _ = pull(tmp_path / "c", unknown_layer, "--plain-http", check=False)
    assert_one_line_error(r, "ModelPack", MP + "weight.v1.tar+lz4")
    unknown_config = _push(
        registry,
        "refuse/other",
        "application/vnd.example.config+json",
        [("application/vnd.example.layer", tar)],
    )
    r, _ = pull(tmp_path / "c", unknown_config, "--plain-http", check=False)
    assert_one_line_error(r, "not a model image", "application/vnd.example.config+json")
    no_path = _push(
        registry,
        "refuse/raw",
        MP + "config.v1+json",
        [(MP + "weight.v1.raw", b"weights")],
        MP + "manifest.v1+json",
    )
    r, _ = pull(tmp_path / "c", no_path, "--plain-http", check=False)
    assert_one_line_error(r, "names no file path", "org.cncf.model.filepath")
    assert published(tmp_path / "c") == []


def _hostile(p: str, outside: Path) -> dict[str, bytes]:
    good = b"weights" * 100
    m = tar_member
    truncated = make_tar([m(f"{p}a", b"y" * 5000)])[:3000]
    bad_checksum = bytearray(make_tar([m(f"{p}a", good)]))
    bad_checksum[0] ^= 0x20
    return {
        "tar slip": make_tar([m(f"{p}../../../{outside.name}/slip.txt", good)]),
        "absolute path": make_tar([m(f"{p}/{outside}/abs.txt", good)]),
        "symlink then write through it": make_tar(
            [m(f"{p}link", kind=tarfile.SYMTYPE, link=str(outside)), m(f"{p}link/evil.txt", good)]
        ),
        "hard link": make_tar([m(f"{p}a", good), m(f"{p}b", kind=tarfile.LNKTYPE, link=f"{p}a")]),
        "char device": make_tar([m(f"{p}dev", kind=tarfile.CHRTYPE)]),
        "fifo": make_tar([m(f"{p}fifo", kind=tarfile.FIFOTYPE)]),
        "setuid": make_tar([m(f"{p}a", good, mode=0o4755)]),
        "duplicate entry": make_tar([m(f"{p}a", good), m(f"{p}a", good)]),
        "huge PAX header": make_tar([m(f"{p}a", good, pax={"comment": "x" * (2 << 20)})]),
        "truncated tar": truncated,
        "bad header checksum": bytes(bad_checksum),
        "GNU long name with ..": make_tar(
            [m(f"{p}" + "d" * 120 + "/../../../escape.txt", good)], tarfile.GNU_FORMAT
        ),
        "directory over a file": make_tar(
            [m(f"{p}a", good), m(f"{p}a", kind=tarfile.DIRTYPE, mode=0o755)]
        ),
        "whiteout escaping the tree": make_tar([m(f"{p}.wh..", b"")]),
    }


FORMATS = {
    "hand-built": (
        "models/",
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        gzip.compress,
        None,
    ),
    "ModelPack": (
        "",
        MP + "config.v1+json",
        MP + "weight.v1.tar",
        lambda b: b,
        MP + "manifest.v1+json",
    ),
    "KitOps": ("", KIT + "config.v1+json", KIT + "model.v1.tar+gzip", gzip.compress, None),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_hostile_layers_in_every_format_are_refused(registry, tmp_path, fmt):
    prefix, config_type, layer_type, compress, artifact = FORMATS[fmt]
    outside = tmp_path / "outside"
    outside.mkdir()
    cache = CacheDir(tmp_path / "cache").open()
    puller = Puller(cache, PullOptions(store=StoreOptions(plain_http=True), attempts=1))
    try:
        for i, (name, layer) in enumerate(_hostile(prefix, outside).items()):
            if fmt == "hand-built" and name == "whiteout escaping the tree":
                layer = make_tar([tar_member("models/.wh..", b"")])
            elif name == "whiteout escaping the tree":
                continue  # a file named .wh.. is refused by the path rule alone
            ref = _push(
                registry,
                f"hostile-{fmt.lower()}/c{i}",
                config_type,
                [(layer_type, compress(layer))],
                artifact,
            )
            with pytest.raises(ModelcarError) as refused:
                puller.pull(ref)
            assert "\n" not in refused.value.one_line(), name
            assert published(tmp_path / "cache") == [], name
            assert list(outside.iterdir()) == [], name
            assert [p.name for p in (tmp_path / "cache" / "staging").iterdir()] == [], name
    finally:
        cache.close()
    # and once through the CLI: one line, non-zero
    escape = compress(make_tar([tar_member(f"{prefix}../x", b"x")]))
    ref = _push(
        registry, f"hostile-{fmt.lower()}/cli", config_type, [(layer_type, escape)], artifact
    )
    r, _ = pull(tmp_path / "cli", ref, "--plain-http", check=False)
    assert_one_line_error(r, "'..'")


# --- ModelPack out: build --format modelpack|both ------------------------------------


def _schema_validator():
    import jsonschema

    schema = json.loads((ROOT / "tests/fixtures/model-spec/config-schema.json").read_text())
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def _get(registry, repo: str, reference: str, accept: str = OCI_MANIFEST):
    import httpx

    return httpx.get(
        f"http://{registry.host}/v2/{repo}/manifests/{reference}", headers={"Accept": accept}
    )


def _blob(registry, repo: str, digest: str) -> bytes:
    import httpx

    return httpx.get(f"http://{registry.host}/v2/{repo}/blobs/{digest}").content


def test_build_format_modelpack_round_trips_and_its_config_is_valid(registry, model, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(model, src)
    (src / "weights.dat").write_bytes(b"\x00\x01" * 500)  # an unknown kind: a guess
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    r = run_cli(
        "build",
        str(src),
        f"{registry.host}/out/pack:v1",
        "--plain-http",
        "--format",
        "modelpack",
        "--json",
        env=env,
    )
    record = json.loads(r.stdout.splitlines()[-2])
    ref = r.last_line
    assert record["format"] == "modelpack" and record["modelpack_digest"] == record["digest"]
    manifest = _get(registry, "out/pack", record["digest"]).json()
    assert manifest["artifactType"] == MP + "manifest.v1+json"
    assert manifest["config"]["mediaType"] == MP + "config.v1+json"
    by_path = {
        layer["annotations"]["org.cncf.model.filepath"]: layer for layer in manifest["layers"]
    }
    assert by_path["model.safetensors"]["mediaType"] == MP + "weight.v1.raw"
    assert by_path["config.json"]["mediaType"] == MP + "weight.config.v1.raw"
    assert by_path["weights.dat"]["annotations"]["org.cncf.model.file.mediatype.untested"] == (
        "true"
    )
    assert "org.cncf.model.file.mediatype.untested" not in by_path["config.json"]["annotations"]
    for path, layer in by_path.items():  # a raw layer is its file: digest = the file's sha256
        assert layer["digest"] == _sha((src / path).read_bytes())
        assert layer["annotations"]["org.opencontainers.image.title"] == path
        meta = json.loads(layer["annotations"]["org.cncf.model.file.metadata+json"])
        assert (meta["mode"], meta["uid"], meta["gid"], meta["mtime"]) == (
            0o644,
            0,
            0,
            "1970-01-01T00:00:00Z",
        )
    config = json.loads(_blob(registry, "out/pack", manifest["config"]["digest"]))
    errors = [e.message for e in _schema_validator().iter_errors(config)]
    assert errors == []
    assert config["descriptor"]["createdAt"] == "2023-11-14T22:13:20Z"
    assert config["modelfs"]["diffIds"] == [layer["digest"] for layer in manifest["layers"]]
    pull(tmp_path / "cache", ref, "--plain-http")
    assert _published_tree(tmp_path / "cache", ref) == tree(src)
    # unchanged files are not read or sent again; the digest is the same
    again = run_cli(
        "build",
        str(src),
        f"{registry.host}/out/pack:v1",
        "--plain-http",
        "--format",
        "modelpack",
        "--json",
        env=env,
    )
    second = json.loads(again.stdout.splitlines()[-2])
    assert second["digest"] == record["digest"] and second["bytes_uploaded"] == 0


def test_build_format_both_links_the_modelpack_to_the_modelcar(api, registry, model, tmp_path):
    r = run_cli(
        "build",
        str(model),
        f"{registry.host}/out/both:v1",
        "--plain-http",
        "--format",
        "both",
        "--json",
        "--api",
        api.url,
        "--model",
        "both",
        env={"MODELCAR_API_TOKEN": api.token("publish", "ci")},
    )
    record = json.loads(r.stdout.splitlines()[-2])
    modelcar_digest, pack_digest = record["digest"], record["modelpack_digest"]
    assert record["format"] == "modelcar" and pack_digest != modelcar_digest
    tagged = _get(registry, "out/both", "v1-modelpack")
    assert _sha(tagged.content) == pack_digest
    pack = tagged.json()
    assert pack["subject"]["digest"] == modelcar_digest
    fallback = _get(
        registry,
        "out/both",
        f"sha256-{modelcar_digest[7:]}",
        "application/vnd.oci.image.index.v1+json",
    ).json()
    assert [(d["digest"], d["artifactType"]) for d in fallback["manifests"]] == [
        (pack_digest, MP + "manifest.v1+json")
    ]
    assert _get(registry, "out/both", modelcar_digest).json().get("artifactType") is None
    config = json.loads(_blob(registry, "out/both", pack["config"]["digest"]))
    assert list(_schema_validator().iter_errors(config)) == []
    # both forms pull to the same tree
    for digest in (modelcar_digest, pack_digest):
        ref = f"{registry.host}/out/both@{digest}"
        pull(tmp_path / "cache", ref, "--plain-http")
        assert _published_tree(tmp_path / "cache", ref) == tree(model)
    # the API records both; resolve answers either
    admin = api.client(api.admin)
    version = admin.get("/v1/models/both/versions/1").json()
    assert (version["digest"], version["modelpack_digest"]) == (modelcar_digest, pack_digest)
    answer = admin.get("/v1/resolve/both:1", params={"format": "modelpack"}).json()
    assert answer["digest"] == pack_digest and answer["image_format"] == "modelpack"
    assert answer["image"] == f"{registry.host}/out/both@{pack_digest}"
    assert admin.get("/v1/resolve/both:1").json()["digest"] == modelcar_digest


def test_a_compressed_image_resumes_after_kill_9_from_the_cut_layer(registry, tmp_path):
    first, second = os.urandom(1_500_000), os.urandom(6_000_000)
    layers = [
        gzip.compress(make_tar([("models/a.bin", first)]), 1),
        gzip.compress(make_tar([("models/b.bin", second)]), 1),
    ]
    gz = "application/vnd.oci.image.layer.v1.tar+gzip"
    ref = _push(
        registry,
        "resume/hand",
        "application/vnd.oci.image.config.v1+json",
        [(gz, data) for data in layers],
    )
    cache = tmp_path / "cache"
    _kill_9_mid_file(ref, cache, "b.bin")
    _, info = pull(cache, ref, "--plain-http")
    # the finished first layer is kept; the cut one is fetched again from its start
    assert info["bytes_fetched"] == len(layers[1])
    assert _published_tree(cache, ref) == {"a.bin": first, "b.bin": second}
