"""`modelcar-cache serve` over a cache dir, on a free port of 127.0.0.1, stopped by PID:
the node's read-only registry as tests and benchmarks start it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from harness.localregistry import free_port


class Endpoint:
    def __init__(self, cache: Path, token: str, token_file: Path, *extra: str):
        self.token = token
        token_file.write_text(token + "\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelcar.cache_daemon.cli",
                "serve",
                "--cache-dir",
                str(cache),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--fleet-token-file",
                str(token_file),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(self.url + "/v2/", timeout=5)
                return
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    raise RuntimeError(f"serve did not start: {self.proc.stderr.read()}") from None
                time.sleep(0.1)

    def get(self, path: str, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        return httpx.get(self.url + path, headers=headers, timeout=60, **kw)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> str:
        """SIGTERM (SIGKILL past ``timeout``); what it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err or ""


class ServingDaemon:
    """`modelcar-cache run --serve` over a models file (one pass, then it idles), on a
    free port of 127.0.0.1: a node that pulls and serves, stopped by PID."""

    def __init__(self, work: Path, images: list[str], token: str, *extra: str):
        work.mkdir(parents=True, exist_ok=True)
        self.cache = work / "cache"
        config = work / "models.yaml"
        config.write_text(json.dumps({"models": images}))
        (work / "token").write_text(token)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelcar.cache_daemon.cli",
                "run",
                "--node",
                "n1",
                "--cache-dir",
                str(self.cache),
                "--config",
                str(config),
                "--listen",
                "",
                "--plain-http",
                "--serve",
                f"127.0.0.1:{self.port}",
                "--serve-url",
                self.url,
                "--fleet-token-file",
                str(work / "token"),
                "--interval",
                "3600",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while True:  # listening: the loader may start
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    err = self.proc.stderr.read()  # type: ignore[union-attr]
                    raise RuntimeError(f"run --serve did not start: {err}") from None
                time.sleep(0.05)

    def published(self, digest: str) -> bool:
        return (self.cache / "models" / ("sha256-" + digest.split(":")[-1])).is_dir()

    def stop(self, timeout: float = 60) -> str:
        """SIGTERM (SIGKILL past ``timeout``); what it wrote to stderr."""
        self.proc.terminate()
        try:
            return self.proc.communicate(timeout=timeout)[1] or ""
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate()[1] or ""
