"""Simulate one model rolled out to a fleet, the path that ships: origin egress and time
to ready, by strategy, and how both move with each assumption.

A fluid, time-stepped simulation (our own loop over numpy arrays) of what the daemons
do (docs/fleet.md): N nodes (default 1,000) each pull one model (default 140 GB in 28
layers), --jobs layers at once, every layer from the chain ``nodes``, then the origin
for a node holding one of the K origin leases (rollout.origin_concurrency):

  nodes   a node serves a layer once it has it whole and verified, and reports so at
          once; peers learn it through the API (answers kept up to 3 s). A node asks up
          to 8 holders, same rack first, in random order; a holder serving --fanout
          transfers answers 429 and the next is asked; when all are busy the layer
          waits for one (the origin is only for what no node holds). Nothing else
          serves: a node holding a layer any other way does not exist.
  origin  the registry: --origin-gbps shared by every origin transfer.
  misses  a layer no holder can serve is asked again every --retry seconds while the
          node's other layers come in; when nothing is in flight the try ends and the
          node asks for a lease (granted while fewer than K hold one), else waits
          --poll seconds (the daemon's wave loop).

Bandwidth, per transfer, the smallest of equal shares of: the node's pull rate
(calibrated; spread by a log-normal factor of sigma --spread per node), its NIC
in, its disk (writes and the reads it serves share --disk-mbps), the parent's NIC out
and serving rate (calibrated from the real endpoint), the parent's disk, and across
racks the rack uplinks (rack NICs / --oversub); from the origin, its egress.

Failures: --fail of the nodes die at a random moment of their pull; their children
go on at the same byte from another holder; a dead node's lease frees after 60 s
(the API's stale rule). Starts: spread uniformly over --stagger seconds.

Strategies: everything from the origin; the chain without waves (every node may use
the origin); waves K=1, 2, 4; and Spegel alone with K=2 (a node serves only once it
holds the whole image, containerd's store filled from the daemon's endpoint). The
sensitivity table reruns the shipped strategy (K=2) with one assumption changed.

Readiness: a node's time is from its start to ready (+ --overhead seconds, measured);
a failed node is never ready and is left out. ``one node`` is a node of median speed
alone. Because a node slower than the median cannot be ready sooner than it would be
alone, the goal is stated per node: every node ready within 1.5x its own time alone
(``worst_vs_alone``), with origin egress <= 3x the model.

Calibration: unless --rate is given, real `modelcar-cache pull` runs (bench/pull.py's
runner and model) give the per-node pull rate and overhead, and the real endpoint
(bench/serve.py: one node serving four clients) the serving rate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
MiB = 1 << 20
ORIGIN = -1
HOLDERS_TRIED = 8  # cache_daemon/peers.py MAX_TRIED
HOLDERS_CACHE_S = 3.0  # cache_daemon/peers.py HOLDERS_SECONDS
STALE_S = 60.0  # the API's stale rule frees a dead node's lease


@dataclass(frozen=True)
class Fleet:
    nodes: int = 1000
    model_gb: float = 140.0
    shards: int = 28
    rate_mbps: float = 500.0  # per-node pull rate, MB/s (calibrated)
    overhead_s: float = 1.0  # per-node fixed time (calibrated)
    serve_mbps: float = 2000.0  # what one node's endpoint sends, MB/s (calibrated)
    nic_gbps: float = 25.0  # per node, each direction
    disk_mbps: float = 3000.0  # per node, reads and writes together
    origin_gbps: float = 10.0  # registry egress
    jobs: int = 4  # layers at once per node (the daemon's --jobs)
    fanout: int = 8  # transfers a node serves at once (--max-uploads)
    poll_s: float = 5.0  # a node without a lease tries again after this
    retry_s: float = 2.0  # a missed layer is asked again (cache_daemon MISS_RETRY_SECONDS)
    spread: float = 0.2  # sigma of the log-normal per-node speed factor
    fail: float = 0.01  # share of nodes that die mid-pull
    stagger_s: float = 0.0  # starts spread over this many seconds
    rack: int = 32  # nodes per rack
    oversub: float = 3.0  # rack uplink = rack NICs / oversub
    dt: float = 0.5  # simulation step, seconds

    @property
    def size(self) -> float:
        return self.model_gb * 1e9

    @property
    def nic(self) -> float:
        return self.nic_gbps * 1e9 / 8

    def alone(self, speed: float = 1.0, origin: bool = True) -> float:
        """One node by itself from the origin: its size over its slowest link."""
        rate = min(self.rate_mbps * MB * speed, self.disk_mbps * MB, self.nic)
        if origin:
            rate = min(rate, self.origin_gbps * 1e9 / 8)
        return self.size / rate + self.overhead_s


@dataclass(frozen=True)
class Strategy:
    name: str
    peers: bool = True  # the nodes source before the origin
    waves: int | None = None  # origin leases; None: the origin is open to all
    whole_image: bool = False  # a node serves only once it holds everything (Spegel)


@dataclass
class Result:
    strategy: str
    ready: np.ndarray  # seconds from each node's start to ready (inf: failed)
    origin_bytes: float
    alone: np.ndarray  # each node's time alone
    failed: np.ndarray
    timeline: list[tuple[float, int]] = field(default_factory=list)

    @property
    def alive(self) -> np.ndarray:
        return self.ready[~self.failed]


def strategies(ks: tuple[int, ...] = (1, 2, 4)) -> list[Strategy]:
    return [
        Strategy("origin only", peers=False),
        Strategy("nodes, no waves"),
        *[Strategy(f"nodes, waves K={k}", waves=k) for k in ks],
        Strategy("Spegel only, waves K=2", waves=2, whole_image=True),
    ]


SHIPPED = Strategy("nodes, waves K=2", waves=2)


def simulate(fleet: Fleet, strategy: Strategy, seed: int = 7) -> Result:
    rng = np.random.default_rng(seed)
    n, layers = fleet.nodes, fleet.shards
    layer = fleet.size / layers
    speed = np.exp(rng.normal(0.0, fleet.spread, n)) if fleet.spread else np.ones(n)
    ingest = np.minimum(fleet.rate_mbps * MB * speed, fleet.nic)
    disk = fleet.disk_mbps * MB
    serve_cap = min(fleet.serve_mbps * MB, fleet.nic)
    origin_cap = fleet.origin_gbps * 1e9 / 8
    start = rng.uniform(0.0, fleet.stagger_s, n) if fleet.stagger_s else np.zeros(n)
    alone = np.array([fleet.alone(float(s)) for s in speed])
    failed = np.zeros(n, dtype=bool)
    if fleet.fail:
        failed[rng.choice(n, size=max(1, round(fleet.fail * n)), replace=False)] = True
    die_at = np.where(failed, start + rng.uniform(0.05, 0.95, n) * alone, np.inf)
    dead = np.zeros(n, dtype=bool)
    rack = np.arange(n) // max(1, fleet.rack)
    racks = int(rack.max()) + 1
    uplink = fleet.rack * fleet.nic / fleet.oversub
    cap = fleet.fanout if not strategy.whole_image else 10**9  # Spegel has no fan-out cap

    have = np.zeros((n, layers))  # bytes of each layer each node holds
    busy = np.zeros((n, layers), dtype=bool)  # a transfer of it is under way
    retry_at = np.zeros((n, layers))  # a missed layer is asked again then
    holders: list[list[tuple[float, int]]] = [[] for _ in range(layers)]  # (visible, node)
    ready_at = np.full(n, np.inf)
    lease: set[int] = set()
    lease_free_at: dict[int, float] = {}
    next_try = start.copy()  # a node whose try ended with misses waits until then
    up = np.zeros(n, dtype=int)
    active = np.zeros(n, dtype=int)
    t_dst: list[int] = []  # transfers, as parallel lists: node, layer, source
    t_lay: list[int] = []
    t_src: list[int] = []
    origin_bytes = 0.0
    now = 0.0
    timeline = [(0.0, 0)]
    horizon = 2e5  # ~2 days: a bound, never reached by the defaults

    def pick(node: int, lay: int) -> int | None:
        """The source of a layer for ``node`` now, as the daemon's chain picks it."""
        if strategy.peers and holders[lay]:
            seen = [h for v, h in holders[lay] if v <= now and not dead[h] and h != node]
            if seen:
                near = [h for h in seen if rack[h] == rack[node]]
                far = [h for h in seen if rack[h] != rack[node]]
                rng.shuffle(near)
                rng.shuffle(far)
                for src in (near + far)[:HOLDERS_TRIED]:
                    if up[src] < cap:
                        return src
                return None  # held, all busy (429): wait for one, never the origin
        if strategy.waves is None or node in lease:
            return ORIGIN
        return None

    def begin(node: int, lay: int, src: int) -> None:
        t_dst.append(node)
        t_lay.append(lay)
        t_src.append(src)
        busy[node, lay] = True
        active[node] += 1
        if src >= 0:
            up[src] += 1

    while now < horizon:
        alive = ~dead & np.isinf(ready_at)
        if not alive.any():
            break
        # deaths: a dead node's transfers end; its children go on at the same byte
        dying = np.flatnonzero(~dead & (die_at <= now))
        for node in dying:
            dead[node] = True
            if node in lease:
                lease_free_at[int(node)] = now + STALE_S
        for node, t in list(lease_free_at.items()):
            if t <= now:
                lease.discard(node)
                del lease_free_at[node]
        if dying.size:
            moved = []
            for i in range(len(t_dst)):
                d, lay, s = t_dst[i], t_lay[i], t_src[i]
                if dead[d]:
                    busy[d, lay] = False
                    if s >= 0:
                        up[s] -= 1
                    continue
                if s >= 0 and dead[s]:
                    up[s] -= 1
                    s = pick(d, lay)
                    if s is None:  # nobody else now: the layer is asked again later
                        busy[d, lay] = False
                        active[d] -= 1
                        retry_at[d, lay] = now + fleet.retry_s
                        continue
                    if s >= 0:
                        up[s] += 1
                moved.append((d, lay, s))
            active[:] = 0
            for d, _, _ in moved:
                active[d] += 1
            t_dst = [m[0] for m in moved]
            t_lay = [m[1] for m in moved]
            t_src = [m[2] for m in moved]
        # each node with a free slot starts what a source serves; a layer nobody
        # serves is asked again after --retry while others come in; with nothing in
        # flight and nothing to start, the try ends: a lease if one is free, else wait
        for node in np.flatnonzero(alive & (active < fleet.jobs) & (next_try <= now)):
            node = int(node)
            missed = False
            for lay in np.flatnonzero((have[node] < layer) & ~busy[node]):
                if active[node] >= fleet.jobs:
                    break
                if retry_at[node, lay] > now:
                    missed = True
                    continue
                src = pick(node, int(lay))
                if src is None:
                    retry_at[node, lay] = now + fleet.retry_s
                    missed = True
                    continue
                begin(node, int(lay), src)
            if missed and active[node] == 0:
                retry_at[node] = 0.0
                if strategy.waves is not None and len(lease) < strategy.waves:
                    lease.add(node)  # the next step starts from the origin
                else:
                    next_try[node] = now + fleet.poll_s
        # rates: the smallest equal share of every link a transfer crosses
        if t_dst:
            dst, lay_, src = np.array(t_dst), np.array(t_lay), np.array(t_src)
            n_in = np.bincount(dst, minlength=n)
            peer = src >= 0
            n_out = np.bincount(src[peer], minlength=n)
            rate = ingest[dst] / n_in[dst]
            io = n_in + n_out  # a node's disk: its writes and the reads it serves
            rate = np.minimum(rate, disk / io[dst])
            if peer.any():
                s = src[peer]
                r = np.minimum(serve_cap / n_out[s], disk / io[s])
                cross = rack[s] != rack[dst[peer]]
                if cross.any():
                    out_r = np.bincount(rack[s][cross], minlength=racks)
                    in_r = np.bincount(rack[dst[peer]][cross], minlength=racks)
                    r[cross] = np.minimum(r[cross], uplink / out_r[rack[s][cross]])
                    r[cross] = np.minimum(r[cross], uplink / in_r[rack[dst[peer]][cross]])
                rate[peer] = np.minimum(rate[peer], r)
            if (~peer).any():
                rate[~peer] = np.minimum(rate[~peer], origin_cap / (~peer).sum())
            left = layer - have[dst, lay_]
            dt = float(np.clip((left / rate).min(), fleet.dt, 10 * fleet.dt))
        else:
            dt = fleet.dt
        events = [next_try[alive & (next_try > now)], die_at[~dead & (die_at > now)]]
        soon = np.concatenate(events)
        if soon.size:
            dt = (
                min(dt, max(float(soon.min()) - now, fleet.dt))
                if t_dst
                else max(float(soon.min()) - now, fleet.dt)
            )
        if not t_dst:
            now += dt
            continue
        got = np.minimum(rate * dt, left)
        have[dst, lay_] += got
        origin_bytes += float(got[~peer].sum())
        now += dt
        done = have[dst, lay_] >= layer - 1e-3
        if done.any():
            for i in np.flatnonzero(done):
                node, lay, s = int(dst[i]), int(lay_[i]), int(src[i])
                busy[node, lay] = False
                active[node] -= 1
                if s >= 0:
                    up[s] -= 1
                # the daemon reports a verified layer at once; peers' answers are <= 3 s old
                seen = now + rng.uniform(0, 0.5) + rng.uniform(0, HOLDERS_CACHE_S)
                if not strategy.whole_image:
                    holders[lay].append((seen, node))
                if np.isinf(ready_at[node]) and (have[node] >= layer - 1e-3).all():
                    ready_at[node] = now + fleet.overhead_s
                    lease.discard(node)
                    if strategy.whole_image:
                        for j in range(layers):
                            holders[j].append((ready_at[node] + seen - now, node))
                    timeline.append((ready_at[node], int(np.isfinite(ready_at).sum())))
            keep = ~done
            t_dst, t_lay, t_src = dst[keep].tolist(), lay_[keep].tolist(), src[keep].tolist()
    ready = np.where(failed, np.inf, ready_at - start)
    return Result(strategy.name, ready, origin_bytes, alone, failed, timeline)


def single_node(fleet: Fleet, size_bytes: float) -> float:
    """A node of median speed alone, from the origin."""
    return replace(fleet, model_gb=size_bytes / 1e9).alone()


def row(fleet: Fleet, r: Result) -> dict:
    alive = r.alive
    finite = np.isfinite(alive).all()
    worst = float(np.max(r.ready[~r.failed] / r.alone[~r.failed])) if finite else float("inf")
    return {
        "origin_egress_x": round(r.origin_bytes / fleet.size, 2),
        "ready_p50_s": round(float(np.percentile(alive, 50)), 1),
        "ready_p99_s": round(float(np.percentile(alive, 99)), 1),
        "ready_max_s": round(float(alive.max()), 1),
        "max_vs_one_node": round(float(alive.max()) / fleet.alone(), 2),
        "worst_vs_alone": round(worst, 2),
    }


def summary(fleet: Fleet, results: list[Result]) -> dict:
    one = single_node(fleet, fleet.size)
    return {
        "single_node_s": round(one, 1),
        "nodes": fleet.nodes,
        "model_gb": fleet.model_gb,
        "strategies": {r.strategy: row(fleet, r) for r in results},
    }


#: The sensitivity table: the shipped strategy with one assumption changed at a time.
SENSITIVITY: list[tuple[str, dict]] = [
    ("defaults", {}),
    ("NIC 10 Gbit/s", {"nic_gbps": 10.0}),
    ("NIC 100 Gbit/s", {"nic_gbps": 100.0}),
    ("no speed spread", {"spread": 0.0}),
    ("speed spread sigma 0.5", {"spread": 0.5}),
    ("no failed nodes", {"fail": 0.0}),
    ("5 % failed nodes", {"fail": 0.05}),
    ("starts over 60 s", {"stagger_s": 60.0}),
    ("racks 1:1 (no oversubscription)", {"oversub": 1.0}),
    ("racks 8:1", {"oversub": 8.0}),
    ("fan-out 2", {"fanout": 2}),
    ("15 GB model (3 layers)", {"model_gb": 15.0, "shards": 3}),
    ("70 GB model (14 layers)", {"model_gb": 70.0, "shards": 14}),
    ("140 GB in 112 layers (1.25 GB)", {"shards": 112}),
    ("140 GB in 280 layers (500 MB)", {"shards": 280}),
    ("origin 1 Gbit/s", {"origin_gbps": 1.0}),
]


def _one_row(args: tuple[Fleet, Strategy]) -> dict:
    f, strategy = args
    return {**row(f, simulate(f, strategy)), "single_node_s": round(f.alone(), 1)}


def sensitivity(fleet: Fleet, ks: tuple[int, ...] = (1, 4)) -> dict[str, dict]:
    """The shipped strategy with one assumption changed at a time (runs in parallel)."""
    from concurrent.futures import ProcessPoolExecutor

    runs = [(name, (replace(fleet, **change), SHIPPED)) for name, change in SENSITIVITY]
    runs += [(f"K={k}", (fleet, Strategy(f"K={k}", waves=k))) for k in ks]
    with ProcessPoolExecutor() as pool:
        rows = list(pool.map(_one_row, [r for _, r in runs]))
    return {name: r for (name, _), r in zip(runs, rows, strict=True)}


def plot(results: list[Result], path: Path, fleet: Fleet, one: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    for r in results:
        times = np.sort(r.alive)
        ax.step(
            np.concatenate([[0], times]),
            np.arange(len(times) + 1),
            where="post",
            label=f"{r.strategy} (origin {r.origin_bytes / fleet.size:.1f}x)",
        )
    ax.axvline(one, color="grey", linestyle=":", label=f"one node alone ({one:.0f} s)")
    ax.axvline(1.5 * one, color="grey", linestyle="--", label="1.5 x one node")
    ax.set_xscale("log")
    ax.set_xlabel("seconds from each node's start (log)")
    ax.set_ylabel("nodes ready")
    ax.set_title(
        f"{fleet.model_gb:.0f} GB to {fleet.nodes} nodes (NIC {fleet.nic_gbps:g} Gbit/s, "
        f"origin {fleet.origin_gbps:g}, speed sigma {fleet.spread:g}, {fleet.fail:.0%} fail)"
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- calibration: real pulls -----------------------------------------------------------


def calibrate(repeat: int = 3) -> dict:
    """Real `modelcar-cache pull` runs from a local registry (bench/pull.py's runner,
    cold page cache each), medians of ``repeat`` runs: a 16 MiB model for the fixed
    per-node overhead; bench/pull.py's model (8 x 256 MiB) for the rate, and again, in
    runs of its own, as the check; a model of another shape (3 x 512 MiB) is reported
    beside it, to show how far one rate carries."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import serve  # type: ignore[import-not-found]
    from pull import build, modelcar_pull  # type: ignore[import-not-found]

    from build import make_model  # type: ignore[import-not-found]
    from harness.localregistry import LocalRegistry

    served = serve.measure(containerd=False)
    four = next(r for r in served["rows"] if r["clients"] == 4 and r["page_cache"] == "warm")
    print(f"calibration: one endpoint serves {four['serve_mbps']:.0f} MB/s", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="modelcar-bench-fleet-"))
    runs: dict[str, tuple[float, float, int]] = {}
    plan = (("tiny", 1, 16, 1), ("calib", 8, 256, 2), ("shape", 3, 512, 1))
    try:
        with LocalRegistry(work / "registry") as reg:
            for name, shards, mib, sets in plan:
                model = make_model(work / name, shards, mib)
                size = sum(p.stat().st_size for p in model.iterdir())
                ref = build(model, f"{reg.host}/bench/{name}:v1")
                for n in range(sets):
                    times = []
                    for _ in range(repeat):
                        seconds, _ = modelcar_pull(ref, work / "cache")
                        shutil.rmtree(work / "cache", ignore_errors=True)
                        times.append(seconds)
                    key = name if n == 0 else "check"
                    runs[key] = (size, statistics.median(times), shards)
                    print(
                        f"calibration: {key} {size / MiB:.0f} MiB pulled in "
                        f"{', '.join(f'{t:.2f}' for t in times)} s",
                        file=sys.stderr,
                    )
                shutil.rmtree(model, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    overhead = runs["tiny"][1]  # 16 MiB: nearly all of it is start, verify and publish
    size, seconds, _ = runs["calib"]
    rate = size / max(seconds - overhead, 1e-3)
    return {
        "rate_mbps": rate / MB,
        "overhead_s": overhead,
        "serve_mbps": four["serve_mbps"],
        "checks": {k: runs[k] for k in ("check", "shape")},
    }


def _simulated(args: tuple[Fleet, Strategy]) -> Result:
    return simulate(*args)


def _all(fleet: Fleet, todo: list[Strategy]) -> list[Result]:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor() as pool:
        return list(pool.map(_simulated, [(fleet, s) for s in todo]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = Fleet()
    ap.add_argument("--nodes", type=int, default=d.nodes)
    ap.add_argument("--model-gb", type=float, default=d.model_gb)
    ap.add_argument("--shards", type=int, default=d.shards)
    ap.add_argument("--rate", type=float, help="per-node pull rate in MB/s (skip calibration)")
    ap.add_argument("--overhead", type=float, default=1.0, help="per-node seconds, with --rate")
    ap.add_argument("--serve", type=float, default=d.serve_mbps, help="endpoint MB/s, with --rate")
    ap.add_argument("--nic-gbps", type=float, default=d.nic_gbps)
    ap.add_argument("--disk-mbps", type=float, default=d.disk_mbps)
    ap.add_argument("--origin-gbps", type=float, default=d.origin_gbps)
    ap.add_argument("--fanout", type=int, default=d.fanout)
    ap.add_argument("--poll", type=float, default=d.poll_s)
    ap.add_argument("--retry", type=float, default=d.retry_s)
    ap.add_argument("--spread", type=float, default=d.spread)
    ap.add_argument("--fail", type=float, default=d.fail)
    ap.add_argument("--stagger", type=float, default=d.stagger_s)
    ap.add_argument("--rack", type=int, default=d.rack)
    ap.add_argument("--oversub", type=float, default=d.oversub)
    ap.add_argument("--waves", default="1,2,4", help="K values, comma-separated")
    ap.add_argument("--no-sensitivity", action="store_true", help="skip the sensitivity table")
    ap.add_argument("--plot", type=Path, default=Path("fleet.png"), help="PNG to write")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    check = None
    if args.rate is None:
        cal = calibrate()
        args.rate, args.overhead, args.serve = (
            cal["rate_mbps"],
            cal["overhead_s"],
            cal["serve_mbps"],
        )
        check = cal
    fleet = Fleet(
        nodes=args.nodes,
        model_gb=args.model_gb,
        shards=args.shards,
        rate_mbps=args.rate,
        overhead_s=args.overhead,
        serve_mbps=args.serve,
        nic_gbps=args.nic_gbps,
        disk_mbps=args.disk_mbps,
        origin_gbps=args.origin_gbps,
        fanout=args.fanout,
        poll_s=args.poll,
        retry_s=args.retry,
        spread=args.spread,
        fail=args.fail,
        stagger_s=args.stagger,
        rack=args.rack,
        oversub=args.oversub,
    )
    ks = tuple(int(k) for k in args.waves.split(",") if k)
    results = _all(fleet, strategies(ks))
    out = summary(fleet, results)
    out["calibration"] = {
        "rate_mbps": round(fleet.rate_mbps, 1),
        "overhead_s": round(fleet.overhead_s, 2),
        "serve_mbps": round(fleet.serve_mbps, 1),
    }
    if check is not None:
        for key, (size, measured, shards) in check["checks"].items():
            simulated = single_node(replace(fleet, shards=shards), size)
            out["calibration"][key] = {
                "model_mib": round(size / MiB),
                "shards": shards,
                "measured_s": round(measured, 2),
                "simulated_s": round(simulated, 2),
                "error": round(simulated / measured - 1, 3),
            }
    if not args.no_sensitivity:
        out["sensitivity"] = sensitivity(fleet)
    plot(results, args.plot, fleet, out["single_node_s"])
    out["plot"] = str(args.plot)
    shipped = out["strategies"].get(SHIPPED.name)
    out["goal_met"] = bool(
        shipped and shipped["origin_egress_x"] <= 3 and shipped["worst_vs_alone"] <= 1.5
    )
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"\n{fleet.model_gb:g} GB in {fleet.shards} layers to {fleet.nodes} nodes; node pull "
        f"{fleet.rate_mbps:.0f} MB/s (+{fleet.overhead_s:.1f} s, sigma {fleet.spread:g}), "
        f"serving {fleet.serve_mbps:.0f} MB/s, NIC {fleet.nic_gbps:g} Gbit/s, racks of "
        f"{fleet.rack} at {fleet.oversub:g}:1, origin {fleet.origin_gbps:g} Gbit/s, "
        f"{fleet.fail:.0%} of nodes die mid-pull; one node alone: {out['single_node_s']:.0f} s\n"
    )
    print(_table(out["strategies"], "strategy"))
    if "sensitivity" in out:
        print(f"\nThe shipped strategy ({SHIPPED.name}) with one assumption changed:\n")
        print(_table(out["sensitivity"], "change", with_one=True))
    if check is not None:
        for key, label in (
            ("check", "bench/pull.py's model, runs of its own (goal: within 10 %)"),
            ("shape", "another shape"),
        ):
            c = out["calibration"][key]
            print(
                f"\nsingle node, {c['model_mib']} MiB in {c['shards']} layers, {label}: "
                f"measured {c['measured_s']:.2f} s, simulated {c['simulated_s']:.2f} s "
                f"({c['error']:+.1%})",
                end="",
            )
        print()
    print(
        f"\ngoal (origin <= 3 x, every node ready <= 1.5 x its own time alone): "
        f"{'met' if out['goal_met'] else 'NOT met'}; plot: {args.plot}"
    )
    return 0


def _table(rows: dict[str, dict], what: str, with_one: bool = False) -> str:
    head = (
        f"| {what} | origin egress (x model) | ready p50 | p99 | max | max / one node "
        "| worst / own alone |"
    )
    if with_one:
        head += " one node |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in rows.items():
        line = (
            f"| {name} | {r['origin_egress_x']:.2f} | {_t(r['ready_p50_s'])} | "
            f"{_t(r['ready_p99_s'])} | {_t(r['ready_max_s'])} | {r['max_vs_one_node']:.2f} | "
            f"{r['worst_vs_alone']:.2f} |"
        )
        if with_one:
            line += f" {_t(r['single_node_s'])} |"
        lines.append(line)
    return "\n".join(lines)


def _t(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


if __name__ == "__main__":
    sys.exit(main())
