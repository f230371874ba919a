"""Benchmark `modelcar-cache pull` against the two-pass path and the disk floor.

Model: 8 x 256 MiB shards of random bytes plus small files (override with
--shards/--shard-mib), built into a local Distribution registry started here,
one layer per shard. Every figure is a ratio to baselines measured in the same run:

  tar xf floor         `tar xf` of the same model layers from local disk
  skopeo + umoci       `skopeo copy --preserve-digests` into an oci: layout, then
                       `umoci unpack` (write the blobs, then unpack them: the
                       two-pass path containerd also takes)
  modelcar-cache pull  registry -> sha256 -> safe tar -> file sha256 -> staged file,
                       4 layers at once, then verify and publish

and two other formats of the same model:

  ModelPack raw        `build --format modelpack` (one raw layer per file: the layer is
                       the file, so each byte is hashed once), pulled by the daemon;
                       goal <= 1.6 x the tar xf floor
  hand-built, gzip     a container image with the shards under /models in gzip layers
                       (GNU tar + gzip -1, pushed by skopeo), pulled by the daemon and by
                       skopeo + umoci

and the peak RSS of `modelcar-cache pull` for a 1 GiB and a 4 GiB model: the command's
own, through GNU time (bench/measure.py), never the benchmark's size at the fork.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from measure import checked  # noqa: E402

from build import MiB, clear_skopeo_cache, make_model, model_args  # noqa: E402
from harness.localregistry import LocalRegistry  # noqa: E402


def build(model: Path, target: str, *extra: str) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelcar.builder.cli",
            "build",
            str(model),
            target,
            "--plain-http",
            "-q",
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode:
        raise SystemExit(f"build failed: {proc.stderr}")
    return proc.stdout.strip().splitlines()[-1]


def drop_caches() -> None:
    """Start each contender with a cold page cache where we may (root), else as is."""
    subprocess.run(["sync"], check=False)
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(cmd: list[str], **kw) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of one command, its own (bench/measure.py: not the
    benchmark's size at fork, which wait4's ru_maxrss would report)."""
    m = checked(cmd, **kw)
    return m.seconds, m.peak_kib


def modelcar_pull(ref: str, cache: Path) -> tuple[float, int]:
    shutil.rmtree(cache, ignore_errors=True)
    drop_caches()
    return timed(
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
            "--jobs",
            "4",
        ],
        cwd=ROOT,
    )


def skopeo_umoci(ref: str, work: Path) -> tuple[float, float]:
    layout, bundle = work / "skopeo-layout", work / "bundle"
    shutil.rmtree(layout, ignore_errors=True)
    shutil.rmtree(bundle, ignore_errors=True)
    clear_skopeo_cache()
    drop_caches()
    copy, _ = timed(
        [
            "skopeo",
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            f"docker://{ref}",
            f"oci:{layout}:v1",
        ],
    )
    drop_caches()
    unpack, _ = timed(["umoci", "unpack", "--image", f"{layout}:v1", str(bundle)])
    return copy, unpack


def tar_floor(layout: Path, layers: list[str], work: Path) -> float:
    out = work / "tar-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    drop_caches()
    t = time.perf_counter()
    for digest in layers:
        blob = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
        subprocess.run(["tar", "xf", str(blob), "-C", str(out)], check=True)
    subprocess.run(["sync", "-f", str(out)], check=True)
    return time.perf_counter() - t


def model_layers(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest).read_text())
    return [
        d["digest"]
        for d in manifest["layers"]
        if (d.get("annotations") or {}).get("dev.modelcar.layer.role") == "model"
    ]


def hand_built_gzip(model: Path, work: Path, dest: str) -> str:
    """A KServe-style hand-built image: each file under models/ in its own gzip layer."""
    import hashlib

    layout = work / "hand-layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    layers, diff_ids = [], []
    for f in sorted(model.iterdir()):
        tar = subprocess.run(
            [
                "tar",
                "-C",
                str(model),
                "--transform",
                "s,^,models/,",
                "--owner=0",
                "--group=0",
                "-cf",
                "-",
                f.name,
            ],
            capture_output=True,
            check=True,
        ).stdout
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        gz = subprocess.run(["gzip", "-1", "-c"], input=tar, capture_output=True, check=True).stdout
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(gz)})
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(config)},
            "layers": layers,
        }
    ).encode()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    described = put(manifest)
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        **described,
                        "annotations": {"org.opencontainers.image.ref.name": "v1"},
                    }
                ],
            }
        )
    )
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--preserve-digests",
            "--dest-tls-verify=false",
            f"oci:{layout}:v1",
            f"docker://{dest}:v1",
        ],
        check=True,
    )
    shutil.rmtree(layout)
    return f"{dest}@{described['digest']}"


def main() -> None:
    args = model_args(__doc__)

    work = Path(tempfile.mkdtemp(prefix="modelcar-bench-pull-"))
    os.environ["MODELCAR_CACHE_DIR"] = str(work / "statcache")
    try:
        model = make_model(work / "model", args.shards, args.shard_mib)
        total = sum(p.stat().st_size for p in model.iterdir())
        print(f"model: {total / MiB:.0f} MiB", file=sys.stderr)
        with LocalRegistry(work / "registry") as reg:
            ref = build(model, f"{reg.host}/bench/pull:v1")
            copy, unpack = skopeo_umoci(ref, work)
            floor = tar_floor(work / "skopeo-layout", model_layers(work / "skopeo-layout"), work)
            pull_s, pull_rss = modelcar_pull(ref, work / "cache")
            shutil.rmtree(work / "cache", ignore_errors=True)
            pack = build(model, f"{reg.host}/bench/pack:v1", "--format", "modelpack")
            pack_s, _ = modelcar_pull(pack, work / "cache")
            shutil.rmtree(work / "cache", ignore_errors=True)
            hand = hand_built_gzip(model, work, f"{reg.host}/bench/hand")
            hand_s, _ = modelcar_pull(hand, work / "cache")
            shutil.rmtree(work / "cache", ignore_errors=True)
            hand_copy, hand_unpack = skopeo_umoci(hand, work)
            rss = {}
            if not args.skip_rss:
                for gib in (1, 4):
                    m = make_model(work / f"sparse-{gib}", 4, gib * 256, sparse=True)
                    r = build(m, f"{reg.host}/bench/rss{gib}:v1")
                    _, rss[gib] = modelcar_pull(r, work / f"cache-{gib}")
                    shutil.rmtree(work / f"cache-{gib}", ignore_errors=True)
                    shutil.rmtree(m, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    two_pass = copy + unpack
    print(f"\npull of {total / MiB:.0f} MiB from a local registry, cold page cache per row\n")
    print("| | seconds | vs tar xf floor | vs skopeo + umoci |")
    print("|---|---|---|---|")
    print(f"| `tar xf` of the model layers (floor) | {floor:.2f} | 1.00 | {floor / two_pass:.2f} |")
    print(f"| `skopeo copy` | {copy:.2f} | {copy / floor:.2f} | |")
    print(f"| `umoci unpack` | {unpack:.2f} | {unpack / floor:.2f} | |")
    print(f"| skopeo + umoci (two passes) | {two_pass:.2f} | {two_pass / floor:.2f} | 1.00 |")
    print(
        f"| `modelcar-cache pull` | {pull_s:.2f} | {pull_s / floor:.2f} | "
        f"{pull_s / two_pass:.2f} ({two_pass / pull_s:.1f}x faster) |"
    )
    print(
        f"| `modelcar-cache pull` of the ModelPack (raw layers) | {pack_s:.2f} | "
        f"{pack_s / floor:.2f} (goal <= 1.6) | {pack_s / two_pass:.2f} |"
    )
    hand_two = hand_copy + hand_unpack
    print(
        f"| hand-built gzip: skopeo + umoci | {hand_two:.2f} | {hand_two / floor:.2f} | "
        f"{hand_two / two_pass:.2f} |"
    )
    print(
        f"| hand-built gzip: `modelcar-cache pull` | {hand_s:.2f} | {hand_s / floor:.2f} | "
        f"{hand_s / two_pass:.2f} ({hand_two / hand_s:.1f}x faster than 2 passes) |"
    )
    print(
        f"\npeak RSS of modelcar-cache pull: {pull_rss / 1024:.0f} MB for {total / MiB:.0f} MiB",
        end="",
    )
    for gib, kib in rss.items():
        print(f", {kib / 1024:.0f} MB for {gib} GiB", end="")
    print()


if __name__ == "__main__":
    main()
