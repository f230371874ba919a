"""Benchmark `modelcar build` against baselines measured in the same run.

Model: 8 x 256 MiB safetensors-like shards of random bytes plus small files
(override with --shards/--shard-mib). Everything runs against a local
Distribution registry started here; each timed push goes to a fresh repository,
and skopeo's blob-info cache is cleared before each skopeo run so it cannot
skip or mount blobs.

Rows:
  hashlib          sha256 of every byte (the CPU floor of any correct tool)
  skopeo floor     skopeo copy --preserve-digests of an already-built oci: layout
  naive            write the layout with Python's tarfile, then that skopeo copy
  modelcar full    modelcar build, cold stat cache, fresh repository
  rebuild 1 shard  one shard changed, pushed as a new tag
  rebuild no-op    nothing changed
  signed, full     modelcar build --sign-key (signature, SLSA provenance, model-signing
                   bundle), cold stat cache, fresh repository
  signed, no-op    nothing changed, --sign-key: the no-op row plus signing and attesting
and peak RSS of `modelcar build` for a 1 GiB and a 4 GiB (sparse) model: the command's own,
through GNU time (bench/measure.py), never the benchmark's size at the fork.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.localregistry import LocalRegistry  # noqa: E402

MiB = 1 << 20


def make_model(root: Path, shards: int, shard_mib: int, sparse: bool = False) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (root / "tokenizer.json").write_text(json.dumps({"vocab": list(range(5000))}))
    for i in range(shards):
        path = root / f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        with open(path, "wb") as f:
            if sparse:
                f.truncate(shard_mib * MiB)
            else:
                for _ in range(shard_mib // 16):
                    f.write(os.urandom(16 * MiB))
    return root


def modelcar(*args: str) -> tuple[float, dict]:
    """Run `modelcar build`; return (seconds, build record)."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "modelcar.builder.cli", "build", *args, "--json", "-q"],
        capture_output=True,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"modelcar build failed: {proc.stderr.decode()}")
    return seconds, json.loads(proc.stdout.decode().strip().splitlines()[-2])


def peak_rss(*args: str) -> int:
    """Peak RSS (KiB) of one `modelcar build` run, the command's own (bench/measure.py)."""
    from measure import checked  # type: ignore[import-not-found]

    cmd = [sys.executable, "-m", "modelcar.builder.cli", "build", *args, "-q"]
    return checked(cmd, cwd=ROOT).peak_kib


def clear_skopeo_cache() -> None:
    for pattern in (
        "/var/lib/containers/cache/blob-info-cache-v1*",
        os.path.expanduser("~/.local/share/containers/cache/blob-info-cache-v1*"),
    ):
        for p in glob.glob(pattern):
            os.unlink(p)


def skopeo_copy(layout: Path, dest: str) -> float:
    clear_skopeo_cache()
    t = time.perf_counter()
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            f"oci:{layout}:v1",
            f"docker://{dest}",
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t


def naive_layout(model: Path, layout: Path) -> None:
    """What a user would script: tar each file with tarfile, hash it, write an OCI layout."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers, diff_ids = [], []
    for f in sorted(model.iterdir()):
        tmp = layout / "layer.tar"
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            tf.add(f, arcname=f"models/{f.name}")
        h = hashlib.sha256()
        with open(tmp, "rb") as fh:
            while b := fh.read(MiB):
                h.update(b)
        digest = "sha256:" + h.hexdigest()
        os.replace(tmp, blobs / h.hexdigest())
        size = (blobs / h.hexdigest()).stat().st_size
        layers.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size}
        )
        diff_ids.append(digest)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    cd = hashlib.sha256(config).hexdigest()
    (blobs / cd).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + cd,
                "size": len(config),
            },
            "layers": layers,
        }
    ).encode()
    md = hashlib.sha256(manifest).hexdigest()
    (blobs / md).write_bytes(manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + md,
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "v1"},
                    }
                ],
            }
        )
    )


def hash_all(model: Path) -> float:
    t = time.perf_counter()
    for f in sorted(model.iterdir()):
        with open(f, "rb") as fh:
            hashlib.file_digest(fh, "sha256")
    return time.perf_counter() - t


def model_args(description: str | None) -> argparse.Namespace:
    """The options every model benchmark takes: its size, and whether to measure RSS."""
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--shard-mib", type=int, default=256)
    ap.add_argument("--skip-rss", action="store_true")
    return ap.parse_args()


def main() -> None:
    args = model_args(__doc__)

    work = Path(tempfile.mkdtemp(prefix="modelcar-bench-"))
    os.environ["MODELCAR_CACHE_DIR"] = str(work / "statcache")
    rows: list[tuple[str, float, str]] = []
    try:
        model = make_model(work / "model", args.shards, args.shard_mib)
        total = sum(p.stat().st_size for p in model.iterdir())
        print(
            f"model: {args.shards} x {args.shard_mib} MiB + small files = {total / MiB:.0f} MiB",
            file=sys.stderr,
        )
        hash_all(model)  # warm the page cache for every contender alike
        with LocalRegistry(work / "registry") as reg:
            h = hash_all(model)
            full_s, full = modelcar(str(model), f"{reg.host}/bench/full:v1", "--plain-http")
            # the floor: skopeo pushing our already-built layout (same blobs, no build work)
            modelcar(str(model), f"oci:{work / 'layout'}:v1")
            floor = skopeo_copy(work / "layout", f"{reg.host}/bench/skopeo:v1")
            t = time.perf_counter()
            naive_layout(model, work / "naive")
            naive = (
                time.perf_counter() - t + skopeo_copy(work / "naive", f"{reg.host}/bench/naive:v1")
            )

            shard = sorted(model.glob("*.safetensors"))[3]
            with open(shard, "r+b") as f:
                f.write(os.urandom(4096))
            one_s, one = modelcar(str(model), f"{reg.host}/bench/full:v2", "--plain-http")
            noop_s, noop = modelcar(str(model), f"{reg.host}/bench/full:v2", "--plain-http")
            subprocess.run(
                [sys.executable, "-m", "modelcar.builder.cli", "keygen", str(work / "bench")],
                check=True,
                capture_output=True,
            )
            sign = ("--plain-http", "--sign-key", str(work / "bench.key"))
            shutil.rmtree(work / "statcache", ignore_errors=True)
            signed_s, signed_full = modelcar(str(model), f"{reg.host}/bench/signed:v1", *sign)
            sign_step = signed_full["signed"]["seconds"]
            # the cost of signing is small against a CLI's start: median of 5, alternated
            plain, signed = [], []
            for _ in range(5):
                plain.append(modelcar(str(model), f"{reg.host}/bench/full:v2", "--plain-http")[0])
                signed.append(modelcar(str(model), f"{reg.host}/bench/signed:v1", *sign)[0])
            noop_s, signed_noop_s = statistics.median(plain), statistics.median(signed)
            resign_step = modelcar(str(model), f"{reg.host}/bench/signed:v1", *sign)[1]["signed"]

            rows += [
                ("hashlib sha256", h, f"{total / MiB / h:.0f} MiB/s"),
                ("skopeo copy (floor)", floor, ""),
                ("naive: tarfile + skopeo", naive, ""),
                ("modelcar build, full", full_s, f"{full['bytes_uploaded'] / MiB:.0f} MiB sent"),
                ("rebuild, 1 shard changed", one_s, f"{one['bytes_uploaded'] / MiB:.1f} MiB sent"),
                (
                    "rebuild, nothing changed",
                    noop_s,
                    f"{noop['bytes_uploaded'] / 1024:.1f} KiB sent, median of 5",
                ),
                ("signed (--sign-key), full", signed_s, f"of which signing {sign_step:.2f} s"),
                (
                    "signed, nothing changed",
                    signed_noop_s,
                    f"median of 5; finds its signature: {resign_step['seconds']:.2f} s",
                ),
            ]
            rss = {}
            if not args.skip_rss:
                for gib in (1, 4):
                    m = make_model(work / f"sparse{gib}", 4 * gib, 256, sparse=True)
                    rss[gib] = peak_rss(
                        str(m), f"{reg.host}/bench/rss{gib}:v1", "--plain-http", "--no-stat-cache"
                    )
                    shutil.rmtree(m)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'':28}{'seconds':>9}{'x floor':>9}{'x full':>8}  note")
    for name, s, note in rows:
        print(f"{name:28}{s:9.2f}{s / floor:9.2f}{s / full_s:8.3f}  {note}")
    print(f"\nfull build / skopeo floor  = {full_s / floor:.2f}   (goal <= 1.3)")
    print(f"naive / full build         = {naive / full_s:.2f}   (goal >= 1.6)")
    print(f"1-shard rebuild / full     = {one_s / full_s:.3f}  (goal <= 0.2)")
    print(f"no-op rebuild / full       = {noop_s / full_s:.3f}  (goal <= 0.05)")
    print(f"signing + attesting adds   = {sign_step:.2f} s (in the full signed build; goal <= 1)")
    for gib, kib in rss.items():
        print(f"peak RSS, {gib} GiB model     = {kib / 1024:.0f} MB   (goal <= 100, flat)")


if __name__ == "__main__":
    main()
