"""bench/fleet.py's simulation: its bookkeeping on a small fleet, and its --json shape."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fleet_mod():
    spec = importlib.util.spec_from_file_location("bench_fleet", ROOT / "bench" / "fleet.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_fleet"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench_fleet"]


SMALL = {
    "nodes": 40,
    "model_gb": 4.0,
    "shards": 8,
    "rate_mbps": 400.0,
    "overhead_s": 2.0,
    "rack": 8,
}


def test_one_node_takes_its_size_over_its_slowest_link_plus_the_overhead(fleet_mod):
    fleet = fleet_mod.Fleet(**SMALL)
    assert fleet_mod.single_node(fleet, 4e9) == pytest.approx(2.0 + 4e9 / 400e6, rel=0.01)
    # the origin's egress caps a node that could go faster
    slow_origin = fleet_mod.Fleet(**{**SMALL, "origin_gbps": 1.0})
    assert fleet_mod.single_node(slow_origin, 4e9) == pytest.approx(2.0 + 32.0, rel=0.01)
    # one simulated node alone, from the origin, takes that time
    one = fleet_mod.Fleet(**{**SMALL, "nodes": 1, "spread": 0.0, "fail": 0.0})
    alone = fleet_mod.simulate(one, fleet_mod.Strategy("one", peers=False))
    assert alone.ready[0] == pytest.approx(2.0 + 4e9 / 400e6, rel=0.03)


def test_origin_egress_and_readiness_by_strategy(fleet_mod):
    fleet = fleet_mod.Fleet(**{**SMALL, "fail": 0.0})
    results = {s.name: fleet_mod.simulate(fleet, s) for s in fleet_mod.strategies((1, 2))}
    size = fleet.size
    only = results["origin only"]
    assert only.origin_bytes == pytest.approx(40 * size, rel=1e-3)
    # everyone at once: nobody holds a layer when the others ask, so the origin sends most
    assert results["nodes, no waves"].origin_bytes > 10 * size
    for k in (1, 2):
        waves = results[f"nodes, waves K={k}"]
        # leased nodes take from the origin only what no node holds: at most K copies
        assert size * (1 - 1e-3) <= waves.origin_bytes <= k * size * (1 + 1e-3)
        assert np.isfinite(waves.ready).all()
        assert waves.ready.max() < only.ready.max()
    assert len(only.timeline) == 41  # one point per node ready, and the start


def test_a_dead_parent_is_replaced_and_the_dead_are_never_ready(fleet_mod):
    fleet = fleet_mod.Fleet(**{**SMALL, "fail": 0.1})
    r = fleet_mod.simulate(fleet, fleet_mod.SHIPPED)
    assert r.failed.sum() == 4 and np.isinf(r.ready[r.failed]).all()
    assert np.isfinite(r.alive).all()  # every live node got every layer
    assert r.origin_bytes <= 2 * fleet.size * (1 + 1e-3) + 4 * fleet.size / fleet.shards


def test_spegel_serves_only_whole_images(fleet_mod):
    """With a node serving only once it holds everything, the others wait for the
    leased nodes to finish: nobody is ready before the first leased node."""
    fleet = fleet_mod.Fleet(**{**SMALL, "fail": 0.0, "spread": 0.0})
    spegel = fleet_mod.simulate(fleet, fleet_mod.Strategy("s", waves=2, whole_image=True))
    nodes = fleet_mod.simulate(fleet, fleet_mod.SHIPPED)
    assert np.sort(spegel.ready)[2] > fleet.alone()  # the third ready came after one node
    assert nodes.ready.max() < spegel.ready.max()


def test_json_has_one_object_with_every_strategy_and_a_png(fleet_mod, tmp_path, capsys):
    png = tmp_path / "fleet.png"
    code = fleet_mod.main(
        [
            "--nodes",
            "20",
            "--model-gb",
            "2",
            "--shards",
            "4",
            "--rate",
            "300",
            "--waves",
            "2",
            "--rack",
            "5",
            "--no-sensitivity",
            "--plot",
            str(png),
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["single_node_s"] > 0 and out["plot"] == str(png)
    assert set(out["strategies"]) == {
        "origin only",
        "nodes, no waves",
        "nodes, waves K=2",
        "Spegel only, waves K=2",
    }
    for row in out["strategies"].values():
        assert set(row) == {
            "origin_egress_x",
            "ready_p50_s",
            "ready_p99_s",
            "ready_max_s",
            "max_vs_one_node",
            "worst_vs_alone",
        }
        assert row["ready_p50_s"] <= row["ready_p99_s"] <= row["ready_max_s"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
