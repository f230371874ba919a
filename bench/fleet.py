"""Simulate one model rolled out to a fleet: origin egress and time to ready, by strategy.

A fluid discrete-event simulation (our own loop over numpy arrays): N nodes (default
1,000) each pull one model (default 140 GB in 28 shards, a layer each) with the cache
daemon's behaviour, 4 layers at once, the chain of sources tried in order per layer:

  spegel     a node advertises a layer only once it holds the whole image (Spegel
             serves what containerd has, and the daemon warms containerd at ready)
  dragonfly  a node shares a layer's pieces as they arrive: a follower streams a layer
             behind its parent, never ahead of it; a parent serves at most
             --df-children transfers at once
  origin     the registry: --origin-gbps of egress shared by every origin transfer

Bandwidth: a transfer gets the smaller of its node's ingest rate (the pull rate,
disk and NIC together) shared by the node's transfers, its parent's upload (NIC)
shared by the parent's transfers, and, from the origin, the origin's egress shared by
all origin transfers. A node is ready --overhead seconds after its last byte (start,
verify, publish: measured, as the pull rate is).

Strategies compared: everything from the origin; P2P without waves (spegel, then
dragonfly, then the origin, every node at once); P2P with waves: at most K nodes hold an
origin lease (the API's rollout.origin_concurrency), a node without one takes layers
from peers only and asks again every --poll seconds (the daemon's lease retry).

Calibration: unless --rate is given, the per-node pull rate and overhead come from
real `modelcar-cache pull` runs (bench/pull.py's runner and model, 8 x 256 MiB, from a
local registry; a 16 MiB pull for the fixed overhead); the check is the simulation's
single-node time for that model against runs of its own (goal: within 10 %), and a
model of another shape (3 x 512 MiB) is reported beside it. Medians of 3 runs each.

Prints a table (origin egress as x model size; time to ready p50/p99/max) and writes a
PNG of nodes ready over time per strategy (--plot); --json prints one object instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000
MiB = 1 << 20
ORIGIN, SPEGEL, DRAGONFLY = 0, 1, 2


@dataclass(frozen=True)
class Fleet:
    nodes: int = 1000
    model_gb: float = 140.0
    shards: int = 28
    rate_mbps: float = 500.0  # per-node pull rate, MB/s (calibrated)
    overhead_s: float = 1.0  # per-node fixed time (calibrated)
    nic_gbps: float = 25.0  # per node, each direction
    disk_mbps: float = 3000.0  # per node, write
    origin_gbps: float = 10.0  # registry egress
    jobs: int = 4  # layers at once per node (the daemon's --jobs)
    df_children: int = 16  # transfers a Dragonfly parent serves at once
    poll_s: float = 5.0  # a node without a lease asks again after this

    @property
    def size(self) -> float:
        return self.model_gb * 1e9

    @property
    def ingest(self) -> float:  # bytes/s a node can take in
        return min(self.rate_mbps * MB, self.disk_mbps * MB, self.nic_gbps * 1e9 / 8)


@dataclass(frozen=True)
class Strategy:
    name: str
    peers: tuple[int, ...]  # sources tried before the origin
    waves: int | None = None  # origin leases; None: the origin is open to all


@dataclass
class Result:
    strategy: str
    ready: np.ndarray  # seconds, per node
    origin_bytes: float
    timeline: list[tuple[float, int]] = field(default_factory=list)


def strategies(ks: tuple[int, ...] = (1, 2, 4, 8)) -> list[Strategy]:
    return [
        Strategy("origin only", ()),
        Strategy("P2P, no waves", (SPEGEL, DRAGONFLY)),
        *[Strategy(f"P2P, waves K={k}", (SPEGEL, DRAGONFLY), waves=k) for k in ks],
        Strategy("Spegel only, waves K=2", (SPEGEL,), waves=2),
    ]


def simulate(fleet: Fleet, strategy: Strategy, seed: int = 7) -> Result:
    rng = np.random.default_rng(seed)
    n, layers = fleet.nodes, fleet.shards
    layer = fleet.size / layers
    have = np.zeros((n, layers))  # bytes of each layer each node holds
    started = np.zeros((n, layers), dtype=bool)
    done_at = np.full(n, np.inf)
    complete: list[int] = []  # nodes holding the whole image (spegel sources)
    up = np.zeros(n, dtype=int)  # transfers each node serves
    lease: set[int] = set()
    next_try = np.zeros(n)
    order = rng.permutation(n)  # the order nodes come up in
    # transfers: node, layer, kind, parent (-1: origin)
    t_node: list[int] = []
    t_layer: list[int] = []
    t_kind: list[int] = []
    t_src: list[int] = []
    active = np.zeros(n, dtype=int)
    origin_bytes = 0.0
    nic = fleet.nic_gbps * 1e9 / 8
    origin_cap = fleet.origin_gbps * 1e9 / 8
    now = 0.0
    timeline = [(0.0, 0)]
    horizon = 1e7  # ~4 months: a bound, never reached by the defaults

    def source_for(node: int, lay: int) -> tuple[int, int] | None:
        for kind in strategy.peers:
            if kind == SPEGEL and complete:
                cands = np.array(complete)
                best = cands[up[cands] == up[cands].min()]
                return SPEGEL, int(rng.choice(best))
            if kind == DRAGONFLY:
                holders = np.flatnonzero((have[:, lay] > 0) & (up < fleet.df_children))
                holders = holders[holders != node]
                if holders.size:
                    return DRAGONFLY, int(holders[np.argmax(have[holders, lay])])
        if strategy.waves is None or node in lease:
            return ORIGIN, -1
        if len(lease) < strategy.waves:
            lease.add(node)
            return ORIGIN, -1
        return None

    while len(complete) < n and now < horizon:
        # start transfers where a node has a free slot and a layer to fetch
        free = (done_at == np.inf) & (active < fleet.jobs) & (next_try <= now)
        free &= ~started.all(axis=1)
        for node in order[free[order]]:
            missed = False
            for lay in np.flatnonzero(~started[node]):
                if active[node] >= fleet.jobs:
                    break
                got = source_for(int(node), int(lay))
                if got is None:  # peers miss it, no lease: the other layers go on
                    missed = True
                    continue
                kind, src = got
                t_node.append(int(node))
                t_layer.append(int(lay))
                t_kind.append(kind)
                t_src.append(src)
                started[node, lay] = True
                active[node] += 1
                if src >= 0:
                    up[src] += 1
            if missed:  # the daemon asks for a lease again after --poll seconds
                next_try[node] = now + fleet.poll_s
        if not t_node:
            waiting = next_try[next_try > now]
            now = float(waiting.min()) if waiting.size else horizon
            continue
        tn, tl = np.array(t_node), np.array(t_layer)
        tk, ts = np.array(t_kind), np.array(t_src)
        rate = fleet.ingest / active[tn]
        peer = ts >= 0
        rate[peer] = np.minimum(rate[peer], nic / np.maximum(up[ts[peer]], 1))
        from_origin = tk == ORIGIN
        if from_origin.any():
            rate[from_origin] = np.minimum(rate[from_origin], origin_cap / from_origin.sum())
        left = layer - have[tn, tl]
        dt = float((left / rate).min())
        follow = tk == DRAGONFLY
        if follow.any():  # a follower may catch up with its parent: smaller steps
            dt = min(dt, max(layer / fleet.ingest / 8, 0.05))
        waiting = next_try[next_try > now]
        if waiting.size:
            dt = min(dt, float(waiting.min()) - now)
        dt = max(dt, 1e-6)
        new = have[tn, tl] + rate * dt
        if follow.any():  # a follower never passes its parent (chains settle in 3 passes)
            pos = np.full(n * layers, -1)
            pos[tn * layers + tl] = np.arange(tn.size)
            fi = np.flatnonzero(follow)
            parent = pos[ts[fi] * layers + tl[fi]]  # the parent's transfer of that layer
            for _ in range(3):
                ceiling = np.where(parent >= 0, new[np.maximum(parent, 0)], have[ts[fi], tl[fi]])
                new[fi] = np.minimum(new[fi], np.maximum(ceiling, have[tn[fi], tl[fi]]))
        new = np.minimum(new, layer)
        origin_bytes += float((new - have[tn, tl])[from_origin].sum())
        have[tn, tl] = new
        now += dt
        finished = new >= layer - 1e-3
        if finished.any():
            keep = ~finished
            for i in np.flatnonzero(finished):
                node, src = tn[i], ts[i]
                active[node] -= 1
                if src >= 0:
                    up[src] -= 1
                if (have[node] >= layer - 1e-3).all() and done_at[node] == np.inf:
                    done_at[node] = now + fleet.overhead_s
                    complete.append(int(node))
                    lease.discard(int(node))
                    timeline.append((done_at[node], len(complete)))
            t_node = tn[keep].tolist()
            t_layer = tl[keep].tolist()
            t_kind = tk[keep].tolist()
            t_src = ts[keep].tolist()
    return Result(strategy.name, done_at, origin_bytes, timeline)


def single_node(fleet: Fleet, size_bytes: float) -> float:
    one = Fleet(**{**fleet.__dict__, "nodes": 1, "model_gb": size_bytes / 1e9})
    return float(simulate(one, Strategy("one", ())).ready[0])


def summary(fleet: Fleet, results: list[Result]) -> dict:
    one = single_node(fleet, fleet.size)
    out: dict = {
        "single_node_s": round(one, 1),
        "nodes": fleet.nodes,
        "model_gb": fleet.model_gb,
        "strategies": {},
    }
    for r in results:
        out["strategies"][r.strategy] = {
            "origin_egress_x": round(r.origin_bytes / fleet.size, 2),
            "ready_p50_s": round(float(np.percentile(r.ready, 50)), 1),
            "ready_p99_s": round(float(np.percentile(r.ready, 99)), 1),
            "ready_max_s": round(float(r.ready.max()), 1),
        }
    return out


def plot(results: list[Result], path: Path, fleet: Fleet, one: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    for r in results:
        times = np.sort(r.ready)
        ax.step(
            np.concatenate([[0], times]),
            np.arange(len(times) + 1),
            where="post",
            label=f"{r.strategy} (origin {r.origin_bytes / fleet.size:.1f}x)",
        )
    ax.axvline(one, color="grey", linestyle=":", label=f"one node alone ({one:.0f} s)")
    ax.axvline(1.5 * one, color="grey", linestyle="--", label="1.5 x one node")
    ax.set_xscale("log")
    ax.set_xlabel("seconds since the rollout started (log)")
    ax.set_ylabel("nodes ready")
    ax.set_title(
        f"{fleet.model_gb:.0f} GB model to {fleet.nodes} nodes (origin "
        f"{fleet.origin_gbps:g} Gbit/s, node {fleet.rate_mbps:.0f} MB/s)"
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
    from pull import build, modelcar_pull  # type: ignore[import-not-found]

    from build import make_model  # type: ignore[import-not-found]
    from harness.localregistry import LocalRegistry

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
        "checks": {k: runs[k] for k in ("check", "shape")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--model-gb", type=float, default=140.0)
    ap.add_argument("--shards", type=int, default=28)
    ap.add_argument("--rate", type=float, help="per-node pull rate in MB/s (skip calibration)")
    ap.add_argument("--overhead", type=float, default=1.0, help="per-node seconds, with --rate")
    ap.add_argument("--nic-gbps", type=float, default=25.0)
    ap.add_argument("--disk-mbps", type=float, default=3000.0)
    ap.add_argument("--origin-gbps", type=float, default=10.0)
    ap.add_argument("--df-children", type=int, default=16)
    ap.add_argument("--poll", type=float, default=5.0)
    ap.add_argument("--waves", default="1,2,4,8", help="K values, comma-separated")
    ap.add_argument("--plot", type=Path, default=Path("fleet.png"), help="PNG to write")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    check = None
    if args.rate is None:
        cal = calibrate()
        args.rate, args.overhead = cal["rate_mbps"], cal["overhead_s"]
        check = cal
    fleet = Fleet(
        nodes=args.nodes,
        model_gb=args.model_gb,
        shards=args.shards,
        rate_mbps=args.rate,
        overhead_s=args.overhead,
        nic_gbps=args.nic_gbps,
        disk_mbps=args.disk_mbps,
        origin_gbps=args.origin_gbps,
        df_children=args.df_children,
        poll_s=args.poll,
    )
    ks = tuple(int(k) for k in args.waves.split(",") if k)
    results = [simulate(fleet, s) for s in strategies(ks)]
    out = summary(fleet, results)
    out["calibration"] = {
        "rate_mbps": round(fleet.rate_mbps, 1),
        "overhead_s": round(fleet.overhead_s, 2),
    }
    if check is not None:
        for key, (size, measured, shards) in check["checks"].items():
            simulated = single_node(Fleet(**{**fleet.__dict__, "shards": shards}), size)
            out["calibration"][key] = {
                "model_mib": round(size / MiB),
                "shards": shards,
                "measured_s": round(measured, 2),
                "simulated_s": round(simulated, 2),
                "error": round(simulated / measured - 1, 3),
            }
    plot(results, args.plot, fleet, out["single_node_s"])
    out["plot"] = str(args.plot)
    best = min(
        (r for r in out["strategies"].values()),
        key=lambda r: (r["origin_egress_x"] > 3, r["ready_max_s"]),
    )
    out["goal_met"] = (
        best["origin_egress_x"] <= 3 and best["ready_max_s"] <= 1.5 * out["single_node_s"]
    )
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"\n{fleet.model_gb:g} GB in {fleet.shards} shards to {fleet.nodes} nodes; "
        f"node pull rate {fleet.rate_mbps:.0f} MB/s (+{fleet.overhead_s:.1f} s), "
        f"NIC {fleet.nic_gbps:g} Gbit/s, origin egress {fleet.origin_gbps:g} Gbit/s; "
        f"one node alone: {out['single_node_s']:.0f} s\n"
    )
    print("| strategy | origin egress (x model) | ready p50 | p99 | max | max vs one node |")
    print("|---|---|---|---|---|---|")
    for name, r in out["strategies"].items():
        print(
            f"| {name} | {r['origin_egress_x']:.2f} | {_t(r['ready_p50_s'])} | "
            f"{_t(r['ready_p99_s'])} | {_t(r['ready_max_s'])} | "
            f"{r['ready_max_s'] / out['single_node_s']:.2f} |"
        )
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
        f"\ngoal (origin <= 3 x, all ready <= 1.5 x one node): "
        f"{'met' if out['goal_met'] else 'NOT met'}; plot: {args.plot}"
    )
    return 0


def _t(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


if __name__ == "__main__":
    sys.exit(main())
