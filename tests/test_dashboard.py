"""The Grafana dashboard in the chart cannot drift from the code: every metric its
queries use is exported by a running cache daemon or a running API (scraped here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes_validate import validate
from prometheus_client.parser import text_string_to_metric_families

from harness.localregistry import free_port
from harness.models import make_sharded_model
from tests.helpers import build, stop_process
from tests.test_chart import CHART, by_kind, render

DASHBOARD = CHART / "dashboards" / "modelcar.json"
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _queried() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    return {name for e in exprs for name in re.findall(r"\b(modelcar_[a-z0-9_]+)\b", e)}


def _family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def _exported(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text)}


def test_the_dashboard_ships_in_a_configmap_for_grafanas_sidecar():
    assert not [
        o
        for o in render({})
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")
    ]
    objects = by_kind(
        render(
            {
                "grafana": {
                    "dashboards": {"enabled": True, "annotations": {"grafana_folder": "modelcar"}}
                }
            }
        )
    )
    cm = next(o for o in objects["ConfigMap"] if o["metadata"]["name"].endswith("-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "modelcar"}
    assert json.loads(cm["data"]["modelcar.json"]) == json.loads(DASHBOARD.read_text())
    validate(cm, "1.33", strict=True)
    # the per-node panels rely on the ServiceMonitor's node label
    monitor = by_kind(render({"serviceMonitor": {"enabled": True}}))["ServiceMonitor"][0]
    cache = next(e for e in monitor["spec"]["endpoints"] if e["port"] == "metrics")
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in cache[
        "relabelings"
    ]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_metric_the_dashboard_queries_is_exported(registry, make_api, tmp_path):
    # a running API, asked something
    api = make_api()
    api.client(api.admin).get("/v1/models")
    api_text = httpx.get(f"{api.url}/metrics").text
    # a running daemon that has pulled a model
    model = make_sharded_model(tmp_path / "m", shards=1, shard_size=1 << 20)
    ref = build(model, f"{registry.host}/dash/m:v1", "--plain-http")
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": [ref]}))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelcar.cache_daemon.cli",
            "run",
            "--node",
            "gpu-1",
            "--config",
            str(config),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--plain-http",
            "--listen",
            f"127.0.0.1:{port}",
            "--interval",
            "1",
            "--max-bytes",
            "1GiB",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.3)
        else:
            pytest.fail("the daemon did not become ready")
        time.sleep(1.5)  # one more pass: gauges set
        daemon_text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        stop_process(proc)
    exported = _exported(api_text) | _exported(daemon_text)
    missing = sorted(n for n in _queried() if _family(n) not in exported)
    assert missing == [], f"the dashboard queries metrics nothing exports: {missing}"
    # and the daemon's gauges the disk panel reads carry values
    samples = {
        s.name: s.value for f in text_string_to_metric_families(daemon_text) for s in f.samples
    }
    assert samples["modelcar_cache_budget_bytes"] == 1 << 30
    assert samples["modelcar_cache_bytes"] > 0
    assert samples["modelcar_cache_source_bytes_total"] > 0


def test_the_dashboard_is_valid_grafana_json():
    d = json.loads(Path(DASHBOARD).read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
