"""Multi-platform modelcars (amd64 and arm64 nodes) against a real registry, read by
skopeo and umoci, the arm64 variant run under qemu-user-static, pulled by the daemon."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
from pathlib import Path

import httpx
import pytest

from harness.models import write_safetensors
from tests.helpers import (
    assert_one_line_error,
    cache_cli,
    pull,
    run_cli,
    tree,
    unpack_with_umoci,
)

# KServe's modelcar init check (pkg/utils/storage.go), as the shell gets it from kubelet
INDEX = {"Accept": "application/vnd.oci.image.index.v1+json"}
INIT_CHECK = (
    "[ -d /models ] && [ \"$(ls -A /models)\" ] && echo 'OK ... Prefetched and valid' || "
    "(echo 'NOK' && exit 1)"
)
ELF_MACHINES = {0x3E: "amd64", 0xB7: "arm64"}


def elf_machine(path: Path) -> str:
    data = path.read_bytes()[:20]
    assert data[:4] == b"\x7fELF"
    return ELF_MACHINES[struct.unpack_from("<H", data, 18)[0]]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("multiarch") / "model"
    (d / "tokenizer").mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "llama"}\n')
    (d / "tokenizer" / "tokenizer.json").write_text('{"v": 1}\n')
    write_safetensors(d / "model-00001.safetensors", 2_500_000, seed=41)
    write_safetensors(d / "model-00002.safetensors", 1_500_000, seed=42)
    return d


@pytest.fixture(scope="module")
def built(registry, multiarch_base, model) -> dict:
    r = run_cli(
        "build",
        str(model),
        f"{registry.host}/multi/m",
        "--plain-http",
        "--json",
        "--base",
        multiarch_base,
        "--large-file-threshold",
        "1MiB",
    )
    record = json.loads(r.stdout.splitlines()[-2])
    assert r.last_line == record["reference"]
    return record


def test_the_base_has_each_platforms_busybox(registry, multiarch_base, tmp_path):
    for arch in ("amd64", "arm64"):
        rootfs = unpack_with_umoci(multiarch_base, tmp_path / arch, arch)
        assert elf_machine(rootfs / "bin" / "busybox") == arch
    # reproducible: the same binaries give the same index
    again = run_cli(
        "base",
        "create",
        f"{registry.host}/base/busybox:again",
        "--plain-http",
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        "--busybox",
        f"linux/arm64={tmp_path / 'arm64' / 'bundle' / 'rootfs' / 'bin' / 'busybox'}",
    ).last_line
    assert again.split("@")[1] == multiarch_base.split("@")[1]


def test_one_index_every_platform_byte_exact_and_the_model_stored_once(
    registry, built, model, tmp_path
):
    assert built["platforms"] == ["linux/amd64", "linux/arm64"]
    index = httpx.get(
        f"http://{registry.host}/v2/multi/m/manifests/{built['digest']}",
        headers=INDEX,
    ).json()
    archs = [m["platform"]["architecture"] for m in index["manifests"]]
    assert archs == ["amd64", "arm64"]
    layers = []
    for m in index["manifests"]:
        manifest = httpx.get(
            f"http://{registry.host}/v2/multi/m/manifests/{m['digest']}",
            headers={"Accept": m["mediaType"]},
        ).json()
        layers.append([d["digest"] for d in manifest["layers"][1:]])  # after the busybox
    assert layers[0] == layers[1] and len(layers[0]) == 4
    expected = tree(model)
    for arch in ("amd64", "arm64"):
        rootfs = unpack_with_umoci(built["reference"], tmp_path / arch, arch)
        assert tree(rootfs / "models") == expected
        assert elf_machine(rootfs / "bin" / "busybox") == arch
    # each model layer's blob is in the registry's storage once
    blobs = registry.root / "storage" / "docker" / "registry" / "v2" / "blobs" / "sha256"
    for digest in layers[0]:
        hex_ = digest.split(":")[1]
        assert len(list(blobs.glob(f"*/{hex_}/data"))) == 1
    shown = run_cli("inspect", built["reference"], "--plain-http").stdout
    assert "platforms  linux/amd64, linux/arm64" in shown and "model-00002.safetensors" in shown
    verified = run_cli("verify", built["reference"], "--plain-http").last_line
    assert verified == "ok: 6 layers and 4 files verified for linux/amd64, linux/arm64"


def test_kserves_commands_run_in_the_arm64_variant_under_qemu(built, tmp_path):
    qemu = shutil.which("qemu-aarch64-static")
    assert qemu, "make test installs qemu-user-static"
    rootfs = unpack_with_umoci(built["reference"], tmp_path, "arm64")
    shutil.copy(qemu, rootfs / "qemu-aarch64-static")

    def arm64(*argv: str) -> subprocess.CompletedProcess[str]:
        # no binfmt_misc here: each arm64 program is started under qemu by hand (the
        # shell's own exec of a non-builtin would fail), as the node's kernel would run it
        return subprocess.run(
            ["chroot", str(rootfs), "/qemu-aarch64-static", *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = arm64("/bin/sh", "-c", INIT_CHECK)
    assert r.returncode == 0 and "OK ... Prefetched and valid" in r.stdout, r
    r = arm64("/bin/ln", "-sf", "/models", "/tmp/models")
    assert r.returncode == 0, r
    assert (rootfs / "tmp" / "models").readlink() == Path("/models")
    r = arm64("/bin/ls", "/tmp/models/")
    assert r.returncode == 0 and "config.json" in r.stdout, r
    assert arm64("/bin/sleep", "0").returncode == 0
    # the image's busybox really is arm64: the host cannot run it without qemu
    direct = subprocess.run(["chroot", str(rootfs), "/bin/sleep", "0"], capture_output=True)
    assert direct.returncode != 0


def test_the_daemon_pulls_the_index_once_byte_exact(built, model, tmp_path):
    _, record = pull(tmp_path / "cache", built["reference"], "--plain-http")
    assert record and record["files"] == 4
    published = tmp_path / "cache" / "models" / f"sha256-{built['digest'][7:]}"
    assert tree(published) == tree(model)
    assert record["bytes_fetched"] < 2 * sum(p.stat().st_size for p in model.rglob("*.safetensors"))


def test_an_index_whose_arm64_variant_has_other_weights_is_refused(
    registry, multiarch_base, model, built, tmp_path
):
    other = tmp_path / "other"
    shutil.copytree(model, other)
    write_safetensors(other / "model-00002.safetensors", 1_500_000, seed=99)
    r = run_cli(
        "build",
        str(other),
        f"{registry.host}/multi/other",
        "--plain-http",
        "--json",
        "--base",
        multiarch_base,
        "--large-file-threshold",
        "1MiB",
    )
    second = json.loads(r.stdout.splitlines()[-2])

    def index_of(repo: str, digest: str) -> dict:
        url = f"http://{registry.host}/v2/{repo}/manifests/{digest}"
        return httpx.get(url, headers=INDEX).json()

    first_index = index_of("multi/m", built["digest"])
    second_index = index_of("multi/other", second["digest"])
    # by hand: m's amd64 manifest with other's arm64 one, in m's repository
    mixed = {
        **first_index,
        "manifests": [first_index["manifests"][0], second_index["manifests"][1]],
    }
    arm = second_index["manifests"][1]
    manifest = httpx.get(
        f"http://{registry.host}/v2/multi/other/manifests/{arm['digest']}",
        headers={"Accept": arm["mediaType"]},
    ).content
    for d in json.loads(manifest)["layers"] + [json.loads(manifest)["config"]]:
        mount = httpx.post(
            f"http://{registry.host}/v2/multi/m/blobs/uploads/",
            params={"mount": d["digest"], "from": "multi/other"},
        )
        assert mount.status_code == 201, mount.text
    put = httpx.put(
        f"http://{registry.host}/v2/multi/m/manifests/{arm['digest']}",
        content=manifest,
        headers={"Content-Type": arm["mediaType"]},
    )
    assert put.status_code == 201, put.text
    data = json.dumps(mixed).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    put = httpx.put(
        f"http://{registry.host}/v2/multi/m/manifests/{digest}",
        content=data,
        headers={"Content-Type": INDEX["Accept"]},
    )
    assert put.status_code == 201, put.text

    cache = tmp_path / "cache"
    result, _ = pull(cache, f"{registry.host}/multi/m@{digest}", "--plain-http", check=False)
    assert_one_line_error(result, "platform variants differ in model content", "linux/arm64")
    assert not (cache / "models").exists() or not list((cache / "models").iterdir())


def test_platform_mistakes_are_one_line(registry, multiarch_base, model, arm64_busybox):
    r = run_cli(
        "build",
        str(model),
        f"{registry.host}/multi/x",
        "--plain-http",
        "--base",
        multiarch_base,
        "--platform",
        "linux/s390x",
        check=False,
    )
    assert_one_line_error(r, "no linux/s390x manifest", "linux/amd64, linux/arm64")
    r = run_cli(
        "build",
        str(model),
        f"{registry.host}/multi/x",
        "--plain-http",
        "--platform",
        "linux/arm64",
        check=False,
    )
    assert_one_line_error(r, "the default base is this machine's busybox", "base create")
    r = run_cli(
        "base",
        "create",
        f"{registry.host}/base/x",
        "--plain-http",
        "--platform",
        "linux/arm64",
        check=False,
    )
    assert_one_line_error(r, "no busybox for linux/arm64", "--busybox linux/arm64=PATH")
    r = run_cli(
        "base",
        "create",
        f"{registry.host}/base/x",
        "--plain-http",
        "--platform",
        "linux/amd64",
        "--busybox",
        f"linux/amd64={arm64_busybox}",
        check=False,
    )
    assert_one_line_error(r, "busybox is built for arm64, not for linux/amd64")
    r = run_cli(
        "build",
        str(model),
        f"{registry.host}/multi/x",
        "--plain-http",
        "--platform",
        "arm64",
        check=False,
    )
    assert_one_line_error(r, "not a platform", "OS/ARCH")


def test_warm_cri_pulls_the_nodes_platform_of_the_index_and_pins_it(registry, built, tmp_path):
    from harness.containerd import Containerd
    from modelcar.cache_daemon.cri import PINNED_LABEL, RuntimeWarmer

    runtime = Containerd(tmp_path / "containerd").start()
    try:
        runtime.trust_http(registry.host)
        config = tmp_path / "models.yaml"
        config.write_text(json.dumps({"models": [built["reference"]]}))
        r = cache_cli(
            "run",
            "--node",
            "n1",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--config",
            str(config),
            "--once",
            "--listen",
            "",
            "--plain-http",
            "--warm-cri",
            "--cri-socket",
            str(runtime.socket),
            check=False,
        )
        assert r.code == 0 and '"event": "warmed"' in r.stderr, r.stderr
        warmer = RuntimeWarmer(str(runtime.socket))
        try:
            assert warmer.labels(built["reference"])[PINNED_LABEL] == "pinned"
        finally:
            warmer.close()
    finally:
        runtime.stop()


def test_an_oci_layout_target_holds_the_index_and_rebuilds_send_nothing_new(
    multiarch_base, model, tmp_path
):
    layout = tmp_path / "layout"
    first = json.loads(
        run_cli(
            "build",
            str(model),
            f"oci:{layout}:v1",
            "--plain-http",
            "--json",
            "--base",
            multiarch_base,
            "--large-file-threshold",
            "1MiB",
        ).stdout.splitlines()[-2]
    )
    again = json.loads(
        run_cli(
            "build",
            str(model),
            f"oci:{layout}:v1",
            "--plain-http",
            "--json",
            "--base",
            multiarch_base,
            "--large-file-threshold",
            "1MiB",
        ).stdout.splitlines()[-2]
    )
    assert again["digest"] == first["digest"] and again["bytes_uploaded"] < 10_000
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{layout}:v1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert [m["platform"]["architecture"] for m in json.loads(raw)["manifests"]] == [
        "amd64",
        "arm64",
    ]
    copied = tmp_path / "arm64"
    subprocess.run(
        ["skopeo", "--override-arch", "arm64", "copy", f"oci:{layout}:v1", f"oci:{copied}:img"],
        capture_output=True,
        check=True,
    )
    subprocess.run(
        ["umoci", "unpack", "--image", f"{copied}:img", str(tmp_path / "bundle")],
        capture_output=True,
        check=True,
    )
    rootfs = tmp_path / "bundle" / "rootfs"
    assert tree(rootfs / "models") == tree(model)
    assert elf_machine(rootfs / "bin" / "busybox") == "arm64"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_api_registers_and_resolves_the_index_digest(api, registry, multiarch_base, model):
    env = {"MODELCAR_API_TOKEN": api.token("publish", "ci")}
    r = run_cli(
        "build",
        str(model),
        f"{registry.host}/multi/registered",
        "--plain-http",
        "--base",
        multiarch_base,
        "--api",
        api.url,
        "--alias",
        "prod",
        env=env,
    )
    assert "registered registered:1" in r.stderr
    answer = api.client(api.admin).get("/v1/resolve/registered@prod").json()
    assert answer["image"] == r.last_line and answer["file_count"] == 4
    fetched = httpx.get(
        f"http://{registry.host}/v2/multi/registered/manifests/{answer['digest']}", headers=INDEX
    )
    assert fetched.headers["content-type"] == INDEX["Accept"]
