"""`modelcar-cache serve` over a cache dir, on a free port of 127.0.0.1, stopped by PID:
the node's read-only registry as tests and benchmarks start it."""

from __future__ import annotations

import signal
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
