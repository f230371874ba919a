"""Benchmark streamed start: a real loader (runai-model-streamer, its S3 backend) reads
every tensor from the node's S3 endpoint, warm and while the node still pulls.

Models (safetensors, random values), built into a local Distribution registry started
here: 2 GiB in 8 shards, and one file of 2 GiB (--mib to change the size). Rows, each
from a cold page cache, one run, side by side:

  pull alone                 `modelcar-cache pull` (the pull floor)
  stream, warm node          the streamer from `modelcar-cache serve` over the pulled
                             cache (the load floor)
  pull, then stream          the two rows above, one after the other (today's best
                             path on a node the model was not assigned to in time)
  stream while pulling       `run --serve` starts cold with the model assigned, the
                             streamer starts at once: goal <= 1.15 x max(pull alone,
                             stream alone)
  streamer from S3 (moto)    the model's files in a moto S3 server, streamed straight
                             (what teams do without modelcar: nothing verified)

and the daemon's peak RSS while it pulled and served the streamed load
(``VmHWM`` before it stops), which must not grow with the model.
"""

from __future__ import annotations

import argparse
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

from measure import peak_of  # noqa: E402
from pull import build, drop_caches, modelcar_pull  # noqa: E402

from harness.endpoint import Endpoint, ServingDaemon  # noqa: E402
from harness.localregistry import LocalRegistry  # noqa: E402
from harness.models import write_tensors  # noqa: E402
from harness.s3server import S3Server  # noqa: E402

MiB = 1 << 20
TOKEN = "bench-fleet-token-0123456789"
GOAL = 1.15


def make_model(root: Path, files: int, mib: int) -> Path:
    """``files`` safetensors of ``mib`` MiB in all, 16 MiB tensors, plus a config."""
    root.mkdir(parents=True)
    per_file = mib // files
    for i in range(files):
        tensors = {f"layers.{i}.{j}.weight": 4 * MiB for j in range(per_file // 16)}
        name = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        write_tensors(root / name, tensors, seed=i + 1)
    (root / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return root


def streamer_env(url: str, secret: str = TOKEN, key: str = "modelcar") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNAI_"))}
    env.update(
        AWS_ENDPOINT_URL=url,
        AWS_ACCESS_KEY_ID=key,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0",
        RUNAI_STREAMER_LOG_LEVEL="ERROR",
        RUNAI_STREAMER_LOG_TO_STDERR="1",
    )
    return env


def stream(prefix: str, env: dict[str, str]) -> float:
    """Seconds for the streamer to yield every tensor under ``prefix``."""
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "harness.streamer", prefix, "--count"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if r.returncode:
        raise SystemExit(f"the streamer failed on {prefix}: {r.stderr[-2000:]}")
    return time.monotonic() - started


def loader_start() -> float:
    """Seconds to start the loader's process and import it (torch included), no model:
    part of every streamed row, paid by vLLM before it reads a byte too."""
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", "import torch, runai_model_streamer"], cwd=ROOT, check=True
    )
    return time.monotonic() - started


def cold_stream(work: Path, ref: str) -> tuple[float, float, int]:
    """`run --serve` from a cold cache, the streamer as soon as it listens: (seconds
    from the daemon's start to the last tensor, to the model published, daemon peak KiB)."""
    shutil.rmtree(work / "cold", ignore_errors=True)
    drop_caches()
    node = ServingDaemon(work / "cold", [ref], TOKEN)
    digest = ref.split("@")[1]
    try:
        stream(f"s3://modelcar/sha256-{digest[7:]}/", streamer_env(node.url))
        loaded = time.monotonic() - node.started
        deadline = time.monotonic() + 3600
        while not node.published(digest) and time.monotonic() < deadline:
            time.sleep(0.05)
        return loaded, time.monotonic() - node.started, peak_of(node.proc.pid)
    finally:
        node.stop()


def from_moto(work: Path, model: Path) -> float | None:
    """The streamer straight from moto; None when moto stalls past the AWS CRT's
    throughput floor (it reads a whole object for every range asked of it)."""
    server = S3Server().start()
    try:
        client = server.client()
        client.create_bucket(Bucket="models")
        for f in sorted(model.iterdir()):
            client.upload_file(str(f), "models", f"m/{f.name}")
        drop_caches()
        env = streamer_env(server.url, "testing", "testing")
        # moto (one Python process) stalls under several concurrent ranges of one large
        # object and the AWS CRT drops connections below its throughput floor; one at a
        # time is what it answers here (so this row is moto's speed, not S3's)
        env["RUNAI_STREAMER_CONCURRENCY"] = "1"
        try:
            return stream("s3://models/m/", env)
        except SystemExit as e:
            print(f"moto row failed: {str(e)[-300:]}", file=sys.stderr)
            return None
    finally:
        server.stop()


def one_model(work: Path, reg: LocalRegistry, name: str, files: int, mib: int) -> dict:
    model = make_model(work / name, files, mib)
    ref = build(model, f"{reg.host}/bench/{name}:v1")
    pull_s, _ = modelcar_pull(ref, work / "warm")
    endpoint = Endpoint(work / "warm", TOKEN, work / "warm-token")
    try:
        drop_caches()
        key = "sha256-" + ref.split("@sha256:")[1]
        warm_s = stream(f"s3://modelcar/{key}/", streamer_env(endpoint.url))
    finally:
        endpoint.stop()
    cold_s, published_s, peak_kib = cold_stream(work, ref)
    moto_s = from_moto(work, model)
    shutil.rmtree(model, ignore_errors=True)
    shutil.rmtree(work / "warm", ignore_errors=True)
    shutil.rmtree(work / "cold", ignore_errors=True)
    floor = max(pull_s, warm_s)
    return {
        "model": f"{mib} MiB in {files} file{'s' if files > 1 else ''}",
        "pull": pull_s,
        "stream_warm": warm_s,
        "pull_then_stream": pull_s + warm_s,
        "stream_cold": cold_s,
        "published_cold": published_s,
        "moto": moto_s,
        "cold_over_floor": cold_s / floor,
        "daemon_peak_mb": peak_kib / 1024,
    }


def measure(mib: int) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="modelcar-bench-stream-"))
    try:
        with LocalRegistry(work / "registry") as reg:
            return [
                one_model(work, reg, "shards", 8, mib),
                one_model(work, reg, "single", 1, mib),
            ]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mib", type=int, default=2048, help="model size in MiB [2048]")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    start = loader_start()
    rows = measure(args.mib)
    if args.json:
        print(json.dumps({"loader_start": start, "rows": rows}))
        return 0
    print("\nStreamed start (runai-model-streamer over S3; cold page cache per row):\n")
    print(
        "| model | pull alone | stream, warm node | pull, then stream | stream while "
        "pulling | / max(pull, stream) | streamer from moto S3 | daemon peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mark = "" if r["cold_over_floor"] <= GOAL else " (goal ≤ 1.15)"
        moto = f"{r['moto']:.2f} s" if r["moto"] is not None else "stalled (moto)"
        print(
            f"| {r['model']} | {r['pull']:.2f} s | {r['stream_warm']:.2f} s | "
            f"{r['pull_then_stream']:.2f} s | {r['stream_cold']:.2f} s "
            f"(published {r['published_cold']:.2f} s) | {r['cold_over_floor']:.2f}{mark} | "
            f"{moto} | {r['daemon_peak_mb']:.0f} MB |"
        )
    print(f"\nevery streamed row includes the loader's start (import torch): {start:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
