"""What the node's endpoint serves: throughput against `cat`, and containerd through it.

1. Serving: a 1 GiB model (4 x 256 MiB layers) pulled into a cache dir, served by
   `modelcar-cache serve`; `curl` (an independent client) fetches every layer, one
   client and four at once, warm page cache (what a node serving its peers has) and,
   as root, cold; the baseline is `cat` of the same files in the same run. The layers
   are regenerated from the files (headers, padding and the files by sendfile).
2. containerd (root, with containerd installed): the same model pulled by containerd's
   CRI, once through the node (its hosts.toml puts the daemon first) and once from the
   registry alone: blob bytes the registry sent (its access log) and seconds.
3. The endpoint's peak RSS (VmHWM) after serving everything.

Prints a table per part; --json prints one object. bench/fleet.py takes the
four-client warm rate as one node's serving rate.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from measure import peak_of  # noqa: E402
from pull import build, drop_caches, modelcar_pull  # noqa: E402

from build import MiB, make_model  # noqa: E402
from harness.endpoint import Endpoint as NodeEndpoint  # noqa: E402
from harness.localregistry import LocalRegistry  # noqa: E402

TOKEN = "bench-fleet-token-0123456789"


def Endpoint(cache: Path, work: Path) -> NodeEndpoint:
    return NodeEndpoint(cache, TOKEN, work / "fleet-token", "--max-uploads", "16")


def _curl(url: str) -> int:
    out = subprocess.run(
        [
            "curl",
            "-sf",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(float(out.stdout))


def fetch_all(urls: list[str], clients: int) -> tuple[float, int]:
    """Every URL by ``clients`` curl processes at once: seconds and bytes."""
    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        sizes = list(pool.map(_curl, urls * (clients if clients > 1 else 1)))
    return time.perf_counter() - t, sum(sizes)


def cat(paths: list[Path], clients: int) -> tuple[float, int]:
    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(
            pool.map(
                lambda p: subprocess.run(f"cat '{p}' > /dev/null", shell=True, check=True),
                paths * clients,
            )
        )
    return time.perf_counter() - t, sum(p.stat().st_size for p in paths) * clients


def serving(work: Path, reg: LocalRegistry, ref: str, cold: bool) -> dict:
    cache = work / "cache"
    modelcar_pull(ref, cache)
    digest = ref.split("@")[1]
    files = sorted((cache / "models" / f"sha256-{digest[7:]}").glob("*.safetensors"))
    layers = [
        json.loads(p.read_text())["digest"]
        for p in (cache / "served").glob("*.json")
        if '"kind":"tar"' in p.read_text() and json.loads(p.read_text())["size"] > MiB
    ]
    endpoint = Endpoint(cache, work)
    urls = [f"{endpoint.url}/v2/bench/serve/blobs/{d}" for d in layers]
    rows = []
    try:
        for clients in (1, 4):
            for state in ("warm", "cold") if cold else ("warm",):
                if state == "cold":
                    drop_caches()
                else:
                    cat(files, 1)  # read once: in the page cache
                s_serve, n_serve = fetch_all(urls, clients)
                if state == "cold":
                    drop_caches()
                s_cat, n_cat = cat(files, clients)
                rows.append(
                    {
                        "clients": clients,
                        "page_cache": state,
                        "serve_mbps": round(n_serve / s_serve / 1e6, 1),
                        "cat_mbps": round(n_cat / s_cat / 1e6, 1),
                        "ratio": round((n_serve / s_serve) / (n_cat / s_cat), 2),
                    }
                )
        rss = peak_of(endpoint.proc.pid) / 1024
    finally:
        endpoint.stop()
    return {"rows": rows, "endpoint_peak_rss_mb": round(rss, 1), "cache": str(cache)}


def containerd_row(work: Path, reg: LocalRegistry, ref: str, cache: Path) -> dict | None:
    if os.geteuid() != 0 or not shutil.which("containerd"):
        return None
    from harness.containerd import Containerd
    from modelcar.cache_daemon.cri import RuntimeWarmer
    from modelcar.cache_daemon.hosts import write_hosts

    out = {}
    for via in ("registry", "node"):
        runtime = Containerd(work / f"containerd-{via}").start()
        endpoint = Endpoint(cache, work) if via == "node" else None
        try:
            if endpoint:
                write_hosts(
                    runtime.root / "certs.d", [reg.host], endpoint.url, TOKEN, plain_http=True
                )
            else:
                runtime.trust_http(reg.host)
            before = reg.blob_bytes_served()
            drop_caches()
            warmer = RuntimeWarmer(str(runtime.socket))
            t = time.perf_counter()
            try:
                warmer.pull(ref)
            finally:
                warmer.close()
            out[via] = {
                "seconds": round(time.perf_counter() - t, 2),
                "registry_blob_bytes": reg.blob_bytes_served() - before,
            }
        finally:
            if endpoint:
                endpoint.stop()
            runtime.stop()
            shutil.rmtree(work / f"containerd-{via}", ignore_errors=True)
    return out


def measure(containerd: bool = True) -> dict:
    work = Path(tempfile.mkdtemp(prefix="modelcar-bench-serve-"))
    try:
        with LocalRegistry(work / "registry", access_log=True) as reg:
            model = make_model(work / "model", 4, 256)
            ref = build(model, f"{reg.host}/bench/serve:v1")
            result = serving(work, reg, ref, cold=os.geteuid() == 0)
            cache = Path(result.pop("cache"))
            result["containerd"] = containerd_row(work, reg, ref, cache) if containerd else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    out = measure()
    if args.json:
        print(json.dumps(out))
        return 0
    print("\nOne node's endpoint (4 x 256 MiB layers, regenerated from the files) vs cat:\n")
    print("| clients | page cache | endpoint MB/s | cat MB/s | endpoint / cat |")
    print("|---|---|---|---|---|")
    for r in out["rows"]:
        print(
            f"| {r['clients']} | {r['page_cache']} | {r['serve_mbps']:.0f} | "
            f"{r['cat_mbps']:.0f} | {r['ratio']:.2f} |"
        )
    print(f"\nendpoint peak RSS after serving it all: {out['endpoint_peak_rss_mb']:.0f} MB")
    if out["containerd"]:
        print("\ncontainerd (CRI pull of the same image, cold page cache):\n")
        print("| pulled | seconds | blob bytes from the registry |")
        print("|---|---|---|")
        for via, r in out["containerd"].items():
            what = "through the node (hosts.toml)" if via == "node" else "from the registry"
            print(f"| {what} | {r['seconds']:.2f} | {r['registry_blob_bytes']:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
