"""Prometheus metrics and the daemon's small HTTP endpoint (/metrics, /healthz, /readyz)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from modelcar import errors


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.bytes_pulled = Counter("modelcar_cache_pulled_bytes", "Bytes fetched", registry=r)
        self.served_bytes = Counter(
            "modelcar_cache_served_bytes",
            "Blob bytes served to this node's containerd and its peers (--serve)",
            registry=r,
        )
        self.pull_seconds = Histogram(
            "modelcar_cache_pull_seconds",
            "Seconds per completed pull",
            registry=r,
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
        )
        self.verify_failures = Counter(
            "modelcar_cache_verify_failures",
            "Layers or models that failed verification",
            registry=r,
        )
        self.signature_refusals = Counter(
            "modelcar_cache_signature_refusals",
            "Models not published: their signature or provenance failed a policy's check",
            registry=r,
        )
        self.source_bytes = Counter(
            "modelcar_cache_source_bytes",
            "Layer bytes fetched, by source of the chain",
            ["source"],
            registry=r,
        )
        self.source_fallbacks = Counter(
            "modelcar_cache_source_fallbacks",
            "Times a source missed or failed and the next one of the chain was asked",
            ["source"],
            registry=r,
        )
        self.source_bad_bytes = Counter(
            "modelcar_cache_source_bad_bytes",
            "Layers whose bytes from this source failed their digest (source dropped)",
            ["source"],
            registry=r,
        )
        self.pull_failures = Counter(
            "modelcar_cache_pull_failures", "Pulls that failed, by reason", ["reason"], registry=r
        )
        self.scrubs = Counter(
            "modelcar_cache_scrubs",
            "Ready models re-hashed, by result (ok, quarantined)",
            ["result"],
            registry=r,
        )
        self.evictions = Counter("modelcar_cache_evictions", "Models evicted", registry=r)
        self.cache_bytes = Gauge("modelcar_cache_bytes", "Bytes held by the cache", registry=r)
        self.budget_bytes = Gauge(
            "modelcar_cache_budget_bytes", "The cache's disk budget in bytes", registry=r
        )
        self.models = Gauge("modelcar_cache_models", "Models by state", ["state"], registry=r)

    def pulled(self, fetched: int, seconds: float) -> None:
        self.bytes_pulled.inc(fetched)
        self.pull_seconds.observe(seconds)

    def from_sources(self, by_source: dict[str, int], fallbacks: dict[str, int]) -> None:
        for name, n in by_source.items():
            self.source_bytes.labels(name).inc(n)
        for name, n in fallbacks.items():
            self.source_fallbacks.labels(name).inc(n)

    def bad_bytes(self, source: str) -> None:
        self.source_bad_bytes.labels(source).inc()

    def failed(self, error: BaseException) -> None:
        self.pull_failures.labels(failure_reason(error)).inc()

    def verify_failed(self) -> None:
        self.verify_failures.inc()

    def refused(self) -> None:
        self.signature_refusals.inc()


class StatusServer:
    """``/metrics``, ``/healthz`` (the loop is alive) and ``/readyz`` (all assigned ready)."""

    def __init__(self, host: str, port: int, metrics: Metrics, ready: Callable[[], bool]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, kind, code = generate_latest(metrics.registry), CONTENT_TYPE_LATEST, 200
                elif self.path == "/healthz":
                    body, kind, code = b"ok\n", "text/plain", 200
                elif self.path == "/readyz":
                    ok = ready()
                    body = b"ready\n" if ok else b"not ready: assigned models are missing\n"
                    kind, code = "text/plain", 200 if ok else 503
                else:
                    body, kind, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> StatusServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


#: Error classes by the reason label they are counted under (the first match wins).
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (errors.SignatureError, "signature"),
    (errors.DigestMismatch, "digest"),
    (errors.DiskFull, "disk_full"),
    (errors.UnsafeArchive, "image"),
    (errors.ImageFormatError, "image"),
    (errors.AuthenticationFailed, "auth"),
    (errors.AccessDenied, "auth"),
    (errors.NotFound, "not_found"),
    (errors.RegistryUnreachable, "network"),
    (errors.TransientError, "network"),
    (errors.TransportError, "network"),
)


def failure_reason(error: BaseException) -> str:
    """A small, fixed set of labels for a failed pull (never the message: unbounded)."""
    return next((label for kind, label in _REASONS if isinstance(error, kind)), "other")
