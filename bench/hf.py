"""Benchmark building from Hugging Face: streamed vs download-then-build.

A local hub (the test suite's) serves a model of 4 x 256 MiB safetensors shards
plus small files; both contenders push to a fresh repository of a local
Distribution registry:

  snapshot + build   huggingface_hub.snapshot_download into HF_HOME, then
                     `modelcar build` of the snapshot dir (what a user would script)
  modelcar build     `modelcar build hf://org/model` (streams into the registry)

Reported: wall time and the peak disk used outside the registry (HF cache, stat
cache, temp files), sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.hfhub import HubServer  # noqa: E402
from harness.localregistry import LocalRegistry  # noqa: E402

MiB = 1 << 20


def du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                with contextlib.suppress(OSError):
                    total += os.stat(p).st_blocks * 512
    return total


class PeakDisk:
    def __init__(self, path: Path):
        self.path, self.peak = path, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, du(self.path))
            time.sleep(0.05)

    def __enter__(self) -> PeakDisk:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, du(self.path))


def run(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} failed: {proc.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--shard-mib", type=int, default=256)
    args = ap.parse_args()
    files = {
        f"model-{i:05d}.safetensors": os.urandom(args.shard_mib * MiB) for i in range(args.shards)
    }
    files |= {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b"{}" * 1000}
    total = sum(len(v) for v in files.values())
    work = Path(tempfile.mkdtemp(prefix="modelcar-bench-hf-"))
    hub = HubServer().start()
    hub.add_repo("org/model").add_commit(files, refs=("main",))
    rows = []
    try:
        with LocalRegistry(work / "registry") as reg:
            for label in ("snapshot + build", "modelcar build"):
                scratch = work / label.replace(" ", "-").replace("+", "")
                scratch.mkdir()
                env = {
                    **os.environ,
                    "HF_ENDPOINT": hub.url,
                    "HF_HUB_DISABLE_XET": "1",
                    "HF_HOME": str(scratch / "hf-home"),
                    "HF_HUB_DISABLE_TELEMETRY": "1",
                    "MODELCAR_CACHE_DIR": str(scratch / "statcache"),
                    "TMPDIR": str(scratch),
                }
                target = f"{reg.host}/bench/{scratch.name}:v1"
                t = time.perf_counter()
                with PeakDisk(scratch) as disk:
                    if label == "modelcar build":
                        run(
                            [
                                sys.executable,
                                "-m",
                                "modelcar.builder.cli",
                                "build",
                                "hf://org/model",
                                target,
                                "--plain-http",
                                "-q",
                            ],
                            env,
                        )
                    else:
                        code = (
                            "import sys; from huggingface_hub import snapshot_download; "
                            "print(snapshot_download('org/model'))"
                        )
                        snap = subprocess.run(
                            [sys.executable, "-c", code],
                            env=env,
                            cwd=ROOT,
                            capture_output=True,
                            text=True,
                            check=True,
                        )
                        run(
                            [
                                sys.executable,
                                "-m",
                                "modelcar.builder.cli",
                                "build",
                                snap.stdout.strip().splitlines()[-1],
                                target,
                                "--plain-http",
                                "-q",
                            ],
                            env,
                        )
                rows.append((label, time.perf_counter() - t, disk.peak))
                shutil.rmtree(scratch, ignore_errors=True)
    finally:
        hub.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0]
    print(f"\nbuild of {total / MiB:.0f} MiB from a local hub into a local registry\n")
    print("| | seconds | vs snapshot + build | peak disk outside the registry |")
    print("|---|---|---|---|")
    for label, seconds, peak in rows:
        print(f"| {label} | {seconds:.2f} | {seconds / base[1]:.2f} | {peak / MiB:.0f} MiB |")


if __name__ == "__main__":
    main()
