"""Prometheus metrics and the ASGI middleware that records them and limits bodies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.exceptions import HTTPException

from modelcar.api.db.engine import Database
from modelcar.api.db.tables import Model, Node, NodeModel, Version
from modelcar.api.fleet import fresh_since
from modelcar.api.settings import Settings

Scope = dict[str, Any]


class CatalogCollector(Collector):
    """Counts read from the database at scrape time."""

    def __init__(self, db: Database, settings: Settings):
        self.db, self.settings = db, settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        since = fresh_since(self.settings.stale_after)
        with self.db.reading() as s:
            n_models = s.scalar(select(func.count()).select_from(Model)) or 0
            n_versions = s.scalar(select(func.count()).select_from(Version)) or 0
            n_fresh = s.scalar(select(func.count()).where(Node.last_seen >= since)) or 0
            n_nodes = s.scalar(select(func.count()).select_from(Node)) or 0
            n_ready = (
                s.scalar(
                    select(func.count())
                    .select_from(NodeModel)
                    .join(Node)
                    .where(NodeModel.state == "ready", Node.last_seen >= since)
                )
                or 0
            )
        yield GaugeMetricFamily("modelcar_models", "Models in the catalog", value=n_models)
        yield GaugeMetricFamily("modelcar_versions", "Versions in the catalog", value=n_versions)
        nodes = GaugeMetricFamily("modelcar_nodes", "Nodes by freshness", labels=["state"])
        nodes.add_metric(["fresh"], n_fresh)
        nodes.add_metric(["stale"], n_nodes - n_fresh)
        yield nodes
        yield GaugeMetricFamily(
            "modelcar_models_ready_on_nodes",
            "Model copies ready on fresh nodes",
            value=n_ready,
        )


class Metrics:
    def __init__(self, db: Database, settings: Settings):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelcar_api_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelcar_api_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        self.registry.register(CatalogCollector(db, settings))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)


class _TooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body over {limit} bytes")


class Telemetry:
    """Pure ASGI middleware: request metrics by route template, and a body size cap."""

    def __init__(self, app: Any, *, metrics: Metrics, max_body: int):
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        received = 0

        async def receive_wrapper() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise _TooLarge(self.max_body)
            return dict(message)

        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body:
            await _reject_too_large(send_wrapper, self.max_body)
        else:
            await self.app(scope, receive_wrapper, send_wrapper)
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        self.metrics.observe(scope["method"], path, status, time.perf_counter() - start)


async def _reject_too_large(send: Any, limit: int) -> None:
    body = (
        b'{"error":{"code":"too_large","message":"request body over '
        + str(limit).encode()
        + b' bytes"}}'
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
