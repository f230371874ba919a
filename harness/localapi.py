"""A throwaway ``modelcar-api`` process on 127.0.0.1, for the demo and the benchmarks.

``LocalApi(db).start()`` migrates the database, creates an admin token, starts
``modelcar-api serve`` and waits for ``/readyz``; ``stop()`` ends it by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from harness.localregistry import free_port


class LocalApi:
    def __init__(self, db: str, *extra_args: str, log: str | None = None):
        self.db = db
        self.extra_args = extra_args
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self._proc: subprocess.Popen | None = None

    def _cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "modelcar.api.cli", *args, "--db", self.db],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode:
            raise RuntimeError(f"modelcar-api {args[0]} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def start(self, timeout: float = 300) -> LocalApi:
        self._cli("db", "upgrade")
        self.token = self._cli("token", "create", "--role", "admin", "--name", "local-admin")
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "modelcar.api.cli",
                "serve",
                "--db",
                self.db,
                "--port",
                str(self.port),
                "--no-access-log",
                *self.extra_args,
            ],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"modelcar-api exited with {self._proc.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=10).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("modelcar-api did not become ready")
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> LocalApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
