"""Benchmark resolve: `modelcar-api` on SQLite and PostgreSQL against MLflow's alias lookup.

Each server runs as its own process with one worker on 127.0.0.1; wrk (one
thread, keep-alive connections) sends requests for a fixed time at 1 and at 50
concurrent clients and reports throughput and latency percentiles. Both sides answer the same
question — "which version is NAME@prod?" — MLflow via
``GET /api/2.0/mlflow/registered-models/alias`` (what
``MlflowClient.get_model_version_by_alias`` calls), modelcar via
``GET /v1/resolve/NAME@prod`` (which also finds ready nodes and builds the pod spec).

The catalog holds 50 models x 10 versions, an alias each, and 20 nodes reporting.

Admission rows: the mutating webhook (``modelcar-api serve --webhook-port``, TLS) pinning
an InferenceService's ``model://model-N@prod`` (and recording who runs it), at 1 and 20
concurrent; goal p99 <= 20 ms at 20 (the apiserver waits at most the webhook's 5 s).
Then the same small reviews at 1 client while another client sends large ones without
pause (a Pod with 256 ``model://`` volumes, the cap: the p99 of the small ones beside
the large), and ``mutate()`` in process on 250 to 4,000 references (the cap lifted): time
per reference stays flat (linear), where copying the affinity per reference was quadratic.

Web UI rows: each page of ``/ui`` (models, a model, the fleet grid, rollouts) with the
same catalog and 200 nodes reporting (a tenth of them with a model pulling and one
failed), one client; goal p99 <= 100 ms.
Needs the `bench` extra (mlflow); PostgreSQL rows need Debian's postgresql.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.localapi import LocalApi  # noqa: E402
from harness.localregistry import free_port  # noqa: E402
from harness.postgres import PostgresServer, find_pg_bin  # noqa: E402

MODELS, VERSIONS, NODES = 50, 10, 20


UI_NODES = 200
#: (label, path prefix; the request number modulo MODELS is appended)
UI_PAGES = (
    ("models", "/ui?n="),
    ("a model", "/ui/models/model-"),
    ("fleet (200 nodes)", "/ui/fleet?n="),
    ("rollouts", "/ui/rollouts?n="),
)


def digest(seed: object) -> str:
    return "sha256:" + hashlib.sha256(str(seed).encode()).hexdigest()


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.args}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server did not start: {url}")


def start_modelcar(db: str, nodes: int = NODES) -> LocalApi:
    api = LocalApi(db).start()
    url, token = api.url, api.token
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        for m in range(MODELS):
            for v in range(VERSIONS):
                c.post(
                    f"/v1/models/model-{m}/versions",
                    json={"digest": digest((m, v)), "repository": f"registry.local/m{m}"},
                ).raise_for_status()
            c.put(f"/v1/models/model-{m}/aliases/prod", json={"version": VERSIONS})
        for n in range(nodes):
            models = [
                {"digest": digest((m, VERSIONS - 1)), "state": "ready"} for m in range(0, MODELS, 3)
            ]
            if n % 10 == 9:  # some pulling, some failed: every kind of cell in the UI's grid
                models[0] = {**models[0], "state": "pulling", "bytes_done": 5, "bytes_total": 9}
                models[1] = {**models[1], "state": "failed", "error": "no space left on device"}
            c.put(
                f"/v1/nodes/gpu-{n}/status",
                json={"models": models, "disk": {"used_bytes": n << 30, "capacity_bytes": 1 << 40}},
            ).raise_for_status()
        c.put(
            "/v1/policies/waves",
            json={
                "models": [f"model-{m}@prod" for m in range(10)],
                "rollout": {"origin_concurrency": 2, "wave_timeout": "10m"},
            },
        ).raise_for_status()
    return api


def start_mlflow(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            f"sqlite:///{work}/mlflow.db",
            "--default-artifact-root",
            str(work / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", proc)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    for m in range(MODELS):
        name = f"model-{m}"
        client.create_registered_model(name)
        for v in range(VERSIONS):
            client.create_model_version(name, source=f"s3://bucket/{name}/{v}")
        client.set_registered_model_alias(name, "prod", str(VERSIONS))
    return proc, url


WRK_SCRIPT = """
local n = 0
local prefix, suffix = os.getenv("WRK_PREFIX"), os.getenv("WRK_SUFFIX") or ""
local auth = os.getenv("WRK_AUTH") or ""
request = function()
  n = n + 1
  local headers = {}
  if auth ~= "" then headers["Authorization"] = auth end
  return wrk.format("GET", prefix .. (n % %d) .. suffix, headers)
end
"""


ADMISSION_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  local m = n %% %d
  local body = string.format('{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",'
    .. '"request":{"uid":"u%%d","kind":{"group":"serving.kserve.io","version":"v1beta1",'
    .. '"kind":"InferenceService"},"namespace":"team","name":"isvc-%%d","operation":"CREATE",'
    .. '"object":{"metadata":{"name":"isvc-%%d"},"spec":{"predictor":{"model":{'
    .. '"modelFormat":{"name":"huggingface"},"storageUri":"model://model-%%d@prod"}}}}}}',
    n, m, m, m)
  return wrk.format("POST", "/mutate", {["Content-Type"] = "application/json"}, body)
end
"""


def start_webhook(db: str, work: Path) -> tuple[subprocess.Popen, str]:
    from harness.tls import make_cert

    cert, key = make_cert(work)
    port, hook = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelcar.api.cli",
            "serve",
            "--db",
            db,
            "--port",
            str(port),
            "--webhook-port",
            str(hook),
            "--webhook-cert",
            str(cert),
            "--webhook-key",
            str(key),
            "--no-access-log",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}/readyz", proc)
    return proc, f"https://127.0.0.1:{hook}"


def measure_admission(url: str, clients: int, seconds: float, work: Path):
    script = work / "admission.lua"
    script.write_text(ADMISSION_SCRIPT % MODELS)
    cmd = ["wrk", "-t1", f"-c{clients}", "--latency", "-s", str(script)]
    subprocess.run([*cmd, "-d1s", url], capture_output=True, check=True)  # warm-up
    out = subprocess.run(
        [*cmd, f"-d{seconds:g}s", url], capture_output=True, text=True, check=True
    ).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"errors from {url}/mutate:\n{out}")
    return _parse_wrk(out)


def _large_review(refs: int) -> bytes:
    import json

    volumes = [
        {"name": f"m{i}", "image": {"reference": f"model://model-{i % 2}@prod"}}
        for i in range(refs)
    ]
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "big",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "namespace": "team",
                "name": "big",
                "operation": "CREATE",
                "object": {
                    "metadata": {"name": "big"},
                    "spec": {"containers": [], "volumes": volumes},
                },
            },
        },
    ).encode()


def measure_admission_beside_large(url: str, seconds: float, work: Path):
    """Small reviews at one client while a thread sends 256-reference reviews."""
    import threading

    import httpx

    stop, sent = threading.Event(), [0]
    body = _large_review(256)

    def large() -> None:
        with httpx.Client(verify=False, timeout=60) as c:
            while not stop.is_set():
                r = c.post(
                    f"{url}/mutate", content=body, headers={"Content-Type": "application/json"}
                )
                assert r.status_code == 200 and r.json()["response"]["allowed"], r.text[:300]
                sent[0] += 1

    t = threading.Thread(target=large, daemon=True)
    t.start()
    try:
        result = measure_admission(url, 1, seconds, work)
    finally:
        stop.set()
        t.join(timeout=120)
    return (*result, sent[0] / seconds)


def measure_mutate_scaling() -> list[tuple[int, float]]:
    """``admission.mutate`` on a Pod of N references (two digests), the cap lifted."""
    import json

    from modelcar.api import admission
    from modelcar.contract import wire

    def resolve(text: str, mode: str) -> wire.ResolveAnswer:
        n = text.split("@")[0].rsplit("-", 1)[1]
        return wire.ResolveAnswer.model_validate(
            {
                "name": "m",
                "version": 1,
                "alias": "prod",
                "digest": digest(n),
                "repository": "r.example/m",
                "image": f"r.example/m@{digest(n)}",
                "storage_uri": f"oci://r.example/m@{digest(n)}",
                "host_path": "/var/lib/x",
                "node_label": f"modelcar.dev/m{n}",
                "nodes_ready": [],
                "size": 1,
                "file_count": 1,
                "mode": mode,
                "pod_spec": {
                    "volumes": [],
                    "volumeMounts": [],
                    "affinity": {
                        "nodeAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "preference": {
                                        "matchExpressions": [
                                            {
                                                "key": f"modelcar.dev/m{n}",
                                                "operator": "In",
                                                "values": ["ready"],
                                            }
                                        ]
                                    },
                                }
                            ]
                        }
                    },
                },
            }
        )

    out = []
    limit, admission.MAX_REFERENCES = admission.MAX_REFERENCES, 10**6
    try:
        for refs in (250, 1000, 2000, 4000):
            obj = json.loads(_large_review(refs))["request"]["object"]
            started = time.perf_counter()
            admission.mutate(obj, "Pod", resolve)
            out.append((refs, (time.perf_counter() - started) * 1000))
    finally:
        admission.MAX_REFERENCES = limit
    return out


def _ms(text: str) -> float:
    units = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    for unit in ("us", "ms", "s"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    raise ValueError(text)


def measure(
    url: str, auth: str, prefix: str, suffix: str, clients: int, seconds: float, work: Path
) -> tuple[float, float, float]:
    """wrk (one thread) for ``seconds``: requests/s, p50 and p99 in ms."""
    script = work / "paths.lua"
    script.write_text(WRK_SCRIPT.replace("%d", str(MODELS)))
    env = {**os.environ, "WRK_PREFIX": prefix, "WRK_SUFFIX": suffix, "WRK_AUTH": auth}
    cmd = ["wrk", "-t1", f"-c{clients}", "--latency", "-s", str(script), url]
    subprocess.run([*cmd[:-1], "-d1s", url], env=env, capture_output=True, check=True)  # warm-up
    out = subprocess.run(
        [*cmd[:-1], f"-d{seconds:g}s", url], env=env, capture_output=True, text=True, check=True
    ).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"errors from {url}{prefix}:\n{out}")
    return _parse_wrk(out)


def _parse_wrk(out: str) -> tuple[float, float, float]:
    rps = p50 = p99 = 0.0
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rps = float(parts[1])
        elif parts[:1] == ["50%"]:
            p50 = _ms(parts[1])
        elif parts[:1] == ["99%"]:
            p99 = _ms(parts[1])
    return rps, p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--admission-only", action="store_true", help="only the webhook rows")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="modelcar-bench-api-"))
    work.chmod(0o755)
    procs: list[subprocess.Popen] = []
    apis: list[LocalApi] = []
    pg = None
    rows: list[tuple[str, int, float, float, float]] = []
    admission: list[tuple[int, float, float, float]] = []
    beside: tuple[float, float, float, float] | None = None
    ui: list[tuple[str, float, float, float]] = []
    try:
        if not shutil.which("wrk"):
            raise SystemExit("bench/api.py needs wrk (apt install wrk; make bench installs it)")
        # (label, url, Authorization header, path prefix, path suffix)
        targets: list[tuple[str, str, str, str, str]] = []
        resolve = ("/v1/resolve/model-", "@prod")
        apis.append(start_modelcar(f"sqlite:///{work}/catalog.db"))
        if args.admission_only:
            args.no_postgres = args.no_mlflow = True
        targets.append(("modelcar, SQLite", apis[-1].url, f"Bearer {apis[-1].token}", *resolve))
        if not args.no_postgres and find_pg_bin():
            pg = PostgresServer(work / "pg").start()
            apis.append(start_modelcar(pg.create_database()))
            api = apis[-1]
            targets.append(("modelcar, PostgreSQL", api.url, f"Bearer {api.token}", *resolve))
        if not args.no_mlflow:
            proc, url = start_mlflow(work)
            procs.append(proc)
            by_alias = ("/api/2.0/mlflow/registered-models/alias?alias=prod&name=model-", "")
            targets.append(("MLflow, SQLite", url, "", *by_alias))
        for clients in () if args.admission_only else (1, 50):
            for label, url, auth, prefix, suffix in targets:
                rps, p50, p99 = measure(url, auth, prefix, suffix, clients, args.seconds, work)
                rows.append((label, clients, rps, p50, p99))
                print(f"  {label:22} c={clients:<3} {rps:8.0f} req/s", file=sys.stderr)
        ui_api = start_modelcar(f"sqlite:///{work}/ui.db", nodes=UI_NODES)
        apis.append(ui_api)
        for page, prefix in () if args.admission_only else UI_PAGES:
            rps, p50, p99 = measure(
                ui_api.url, f"Bearer {ui_api.token}", prefix, "", 1, args.seconds, work
            )
            ui.append((page, rps, p50, p99))
            print(f"  ui {page:22} {rps:8.0f} req/s  p99 {p99:.1f} ms", file=sys.stderr)
        proc, hook = start_webhook(f"sqlite:///{work}/catalog.db", work)
        procs.append(proc)
        for clients in (1, 20):
            rps, p50, p99 = measure_admission(hook, clients, args.seconds, work)
            admission.append((clients, rps, p50, p99))
        beside = measure_admission_beside_large(hook, args.seconds, work)
    finally:
        for api in apis:
            api.stop()
        for proc in procs:  # mlflow server and its workers: the whole process group
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        if pg:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    base = {c: rps for label, c, rps, _, _ in rows if label.startswith("MLflow")}
    print(
        f"\nresolve: {MODELS} models x {VERSIONS} versions, {NODES} nodes; one worker each; "
        f"{os.cpu_count()} CPUs shared with the load generator\n"
    )
    print(f"| {'server':22} | clients | req/s  | p50 ms | p99 ms | x MLflow |")
    print(f"|{'-' * 24}|---------|--------|--------|--------|----------|")
    for label, clients, rps, p50, p99 in rows:
        ratio = f"{rps / base[clients]:.1f}x" if clients in base else "-"
        print(f"| {label:22} | {clients:7} | {rps:6.0f} | {p50:6.2f} | {p99:6.2f} | {ratio:>8} |")
    print("\nadmission (mutating webhook over TLS, SQLite; pins and records each object)\n")
    print("| clients | req/s  | p50 ms | p99 ms |")
    print("|---------|--------|--------|--------|")
    for clients, rps, p50, p99 in admission:
        print(f"| {clients:7} | {rps:6.0f} | {p50:6.2f} | {p99:6.2f} |")
    worst = max((p99 for c, _, _, p99 in admission if c == 20), default=0.0)
    print(f"\np99 at 20 concurrent = {worst:.1f} ms (goal <= 20)")
    if beside is not None:
        alone = next((p99 for c, _, _, p99 in admission if c == 1), 0.0)
        rps, p50, p99, large = beside
        print(
            f"\nsmall reviews at 1 client beside {large:.1f} reviews/s of 256 references: "
            f"p50 {p50:.2f} ms, p99 {p99:.2f} ms (alone: p99 {alone:.2f} ms, "
            f"{p99 / alone if alone else 0:.1f}x)"
        )
    print("\nmutate() in process, a Pod of N model:// references (two digests)\n")
    print("| references | ms | µs per reference |")
    print("|---|---|---|")
    for refs, ms in measure_mutate_scaling():
        print(f"| {refs} | {ms:.1f} | {ms * 1000 / refs:.0f} |")
    print(
        f"\nweb UI (/ui, server-rendered, SQLite): {MODELS} models x {VERSIONS} versions, "
        f"{UI_NODES} nodes; one client\n"
    )
    print("| page | req/s | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for page, rps, p50, p99 in ui:
        print(f"| {page} | {rps:.0f} | {p50:.2f} | {p99:.2f} |")
    slowest = max((p99 for *_, p99 in ui), default=0.0)
    print(f"\nslowest page p99 = {slowest:.1f} ms (goal <= 100)")


if __name__ == "__main__":
    main()
