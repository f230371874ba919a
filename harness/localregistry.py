"""Run a throwaway Distribution registry (``docker-registry``) on 127.0.0.1.

Used by ``make demo``, the benchmarks and the test fixtures: a free port, a
storage dir of the caller's, optional TLS and htpasswd, stopped by PID.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from modelcar.errors import ModelcarError

DEFAULT_BINARY = "/usr/bin/docker-registry"
#: the access log's combined format: "METHOD PATH PROTO" STATUS BYTES
_ACCESS = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" ([0-9]{3}) ([0-9]+|-)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binary() -> str | None:
    env = os.environ.get("MODELCAR_REGISTRY_BINARY")
    if env:
        return env
    if os.path.exists(DEFAULT_BINARY):
        return DEFAULT_BINARY
    return shutil.which("docker-registry") or shutil.which("registry")


class LocalRegistry:
    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        tls: tuple[Path, Path] | None = None,
        htpasswd: Path | None = None,
        token_auth: dict[str, str] | None = None,
        access_log: bool = False,
    ):
        self.root = Path(root)
        self.port = port or free_port()
        self.tls = tls
        self.token_auth = token_auth  # realm, service, issuer, rootcertbundle
        self.htpasswd = htpasswd
        self.token_auth = token_auth  # realm, service, issuer, rootcertbundle
        self.access_log = access_log  # one line per request in registry.log
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: error",
            "  accesslog:",
            f"    disabled: {'false' if self.access_log else 'true'}",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.root / 'storage'}",
            "  delete:",
            "    enabled: true",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
        ]
        if self.tls:
            lines += ["  tls:", f"    certificate: {self.tls[0]}", f"    key: {self.tls[1]}"]
        if self.htpasswd:
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: modelcar-test",
                f"    path: {self.htpasswd}",
            ]
        elif self.token_auth:
            lines += ["auth:", "  token:"] + [f"    {k}: {v}" for k, v in self.token_auth.items()]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 120.0) -> LocalRegistry:
        binary = find_binary()
        if not binary:
            raise ModelcarError(
                "docker-registry is not installed",
                hint="apt-get install docker-registry (make test/demo do this as root)",
            )
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(self._config())
        log = open(self.root / "registry.log", "ab")
        self.proc = subprocess.Popen(
            [binary, "serve", str(config)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ModelcarError(
                    "docker-registry exited at start",
                    subject=(self.root / "registry.log").read_text()[-300:],
                )
            try:
                r = httpx.get(self.url + "/v2/", verify=False, timeout=10.0)
                if r.status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise ModelcarError("docker-registry did not answer in time", subject=self.url)

    def blob_bytes_served(self, digests: set[str] | None = None) -> int:
        """Bytes of blob bodies this registry sent (GET .../blobs/..., of ``digests``
        only if given), from the access log, which needs ``access_log=True``."""
        total = 0
        for line in (self.root / "registry.log").read_text(errors="replace").splitlines():
            m = _ACCESS.search(line)
            if (
                m
                and m.group(1) == "GET"
                and "/blobs/sha256:" in m.group(2)
                and m.group(3) in ("200", "206")
                and (digests is None or m.group(2).rsplit("/", 1)[-1] in digests)
            ):
                total += int(m.group(4)) if m.group(4).isdigit() else 0
        return total

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
