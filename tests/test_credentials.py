"""Registry credentials in long-lived processes: tokens that expire, passwords that rotate.

A real Distribution with ``auth: token`` and the suite's token service, whose tokens
the registry accepts for a few seconds only (its 60 s of leeway accounted for).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness import tokenserver
from harness.localregistry import LocalRegistry
from harness.models import write_safetensors
from harness.proxy import QuirkProxy
from harness.tokenserver import TokenServer
from tests.helpers import ROOT, assert_one_line_error, cache_cli, run_cli, tree, write_docker_config

MiB = 1 << 20
LIFETIME = 5  # seconds the registry accepts a token (proxies below add 1 s per request)


@dataclass
class TokenRegistry:
    registry: LocalRegistry
    tokens: TokenServer
    user: str

    @property
    def host(self) -> str:
        return self.registry.host

    def write_config(self, directory: Path, password: str) -> Path:
        return write_docker_config(directory, self.host, self.user, password)


@pytest.fixture(params=["renewed-ahead", "renewed-on-401"])
def token_registry(request, tmp_path):
    """Tokens live LIFETIME s at the registry; the answer states that lifetime
    (renewed ahead) or 300 s (the client meets a 401 and must renew then)."""
    reported = LIFETIME if request.param == "renewed-ahead" else 300
    started = tokenserver.token_registry(
        tmp_path, "ci", "old-pass", lifetime=LIFETIME, reported=reported
    )
    with started as (reg, tokens):
        yield TokenRegistry(reg, tokens, "ci")


def _model(root: Path, layers: int = 4, size: int = 2 * MiB) -> Path:
    root.mkdir(parents=True)
    for i in range(layers):
        write_safetensors(root / f"model-{i}.safetensors", size, seed=40 + i)
    return root


def _env(cfg: Path) -> dict[str, str]:
    return {"DOCKER_CONFIG": str(cfg)}


def _build(src: Path, target: str, cfg: Path, *extra: str) -> str:
    """Build with one layer per file over 1 MiB; return the pinned reference."""
    args = ["build", str(src), target, "--plain-http", "-q", "--large-file-threshold", "1MiB"]
    return run_cli(*args, *extra, env=_env(cfg)).last_line


def test_a_pull_outlasting_its_tokens_completes(token_registry, tmp_path):
    reg = token_registry
    cfg = reg.write_config(tmp_path / "docker", "old-pass")
    src = _model(tmp_path / "m")
    ref = _build(src, f"{reg.host}/cred/pull", cfg)
    issued = reg.tokens.issued
    # one layer at a time, 1 MiB/s: four 2 MiB layers take ~8 s, past two token lifetimes
    r = cache_cli(
        "pull",
        ref,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--plain-http",
        "--json",
        "-q",
        "--jobs",
        "1",
        "--max-rate",
        "1MiB",
        env=_env(cfg),
    )
    result = json.loads(r.stdout.strip().splitlines()[-2])
    assert tree(Path(result["path"])) == tree(src)
    assert reg.tokens.issued - issued >= 2  # it renewed, and did not fail


def test_a_slow_push_outlasting_its_tokens_completes(token_registry, tmp_path):
    reg = token_registry

    def slow_uploads(method, path, n):
        if method in ("PATCH", "PUT") and "/blobs/uploads/" in path:
            time.sleep(1.0)  # each blob takes a second: the push outlasts the tokens
        return None

    src = _model(tmp_path / "m")
    with QuirkProxy(f"http://{reg.host}", slow_uploads) as proxy:
        cfg = reg.write_config(tmp_path / "docker", "old-pass")
        auth = json.loads((cfg / "config.json").read_text())["auths"][reg.host]
        (cfg / "config.json").write_text(json.dumps({"auths": {proxy.host: auth}}))
        ref = run_cli(
            "build",
            str(src),
            f"{proxy.host}/cred/push",
            "--plain-http",
            "-q",
            "--large-file-threshold",
            "1MiB",
            "--jobs",
            "1",
            env=_env(cfg),
        ).last_line
    assert reg.tokens.issued >= 2
    cfg = reg.write_config(tmp_path / "docker2", "old-pass")
    out = cache_cli(
        "pull",
        ref.replace(proxy.host, reg.host),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--plain-http",
        "--json",
        "-q",
        env=_env(cfg),
    )
    assert tree(Path(json.loads(out.stdout.strip().splitlines()[-2])["path"])) == tree(src)


def test_the_daemon_pulls_a_model_assigned_after_its_first_token_expired(token_registry, tmp_path):
    reg = token_registry
    cfg = reg.write_config(tmp_path / "docker", "old-pass")
    a = run_cli(
        "build",
        str(_model(tmp_path / "a", 1)),
        f"{reg.host}/cred/a",
        "--plain-http",
        "-q",
        env=_env(cfg),
    ).last_line
    src_b = _model(tmp_path / "b", 2, size=1 * MiB)
    b = run_cli(
        "build", str(src_b), f"{reg.host}/cred/b", "--plain-http", "-q", env=_env(cfg)
    ).last_line
    config, cache = tmp_path / "models.yaml", tmp_path / "cache"
    config.write_text(json.dumps({"models": [a]}))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelcar.cache_daemon.cli",
            "run",
            "--node",
            "n1",
            "--cache-dir",
            str(cache),
            "--config",
            str(config),
            "--interval",
            "1",
            "--listen",
            "",
            "--plain-http",
        ],
        cwd=ROOT,
        env={**os.environ, **_env(cfg)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(cache, a.split("@")[1], proc)
        time.sleep(LIFETIME + 1)  # every token the daemon holds has expired
        config.write_text(json.dumps({"models": [a, b]}))
        path = _wait_ready(cache, b.split("@")[1], proc)
        assert tree(path) == tree(src_b)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "registry refused" not in err


def _wait_ready(cache: Path, digest: str, proc: subprocess.Popen, seconds: float = 60) -> Path:
    path = cache / "models" / ("sha256-" + digest.split(":")[1])
    deadline = time.monotonic() + seconds
    while not path.is_dir():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, f"{digest} not ready in {seconds}s"
        time.sleep(0.2)
    return path


def test_a_password_rotated_mid_pull_is_picked_up_from_the_rewritten_config(
    token_registry, tmp_path
):
    reg = token_registry
    cfg = reg.write_config(tmp_path / "docker", "old-pass")
    src = _model(tmp_path / "m", 6)
    ref = _build(src, f"{reg.host}/cred/rotate", cfg)
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelcar.cache_daemon.cli",
            "pull",
            ref,
            "--cache-dir",
            str(cache),
            "--plain-http",
            "--json",
            "-q",
            "--jobs",
            "1",
            "--max-rate",
            "1MiB",
        ],
        cwd=ROOT,
        env={**os.environ, **_env(cfg)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not any((cache / "staging").glob("sha256-*/*")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    with reg.tokens.lock:  # no token is issued while the secret and the service change
        reg.write_config(tmp_path / "docker", "new-pass")
        reg.tokens.password = "new-pass"
    issued = reg.tokens.issued
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert tree(Path(json.loads(out.strip().splitlines()[-2])["path"])) == tree(src)
    assert reg.tokens.issued > issued  # tokens came from the new password


def test_wrong_credentials_fail_fast_in_one_line(token_registry, tmp_path):
    reg = token_registry
    good = reg.write_config(tmp_path / "good", "old-pass")
    ref = run_cli(
        "build",
        str(_model(tmp_path / "m", 1)),
        f"{reg.host}/cred/wrong",
        "--plain-http",
        "-q",
        env=_env(good),
    ).last_line
    bad = reg.write_config(tmp_path / "bad", "wrong-pass")
    refused = reg.tokens.refused
    started = time.monotonic()
    r = cache_cli(
        "pull",
        ref,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--plain-http",
        "-q",
        env=_env(bad),
        check=False,
    )
    assert_one_line_error(r, "token service rejected the credentials")
    assert time.monotonic() - started < 15
    assert reg.tokens.refused - refused <= 2  # one re-read of the config, no retry storm


class _Recorder(ThreadingHTTPServer):
    """A 'CDN' that serves blobs from the registry's storage and records every header."""

    def __init__(self, storage: Path):
        self.seen: list[dict[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                recorder.seen.append(dict(self.headers.items()))
                hexd = self.path.rsplit("/", 1)[-1]
                data = (
                    storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
                ).read_bytes()
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

        super().__init__(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server_address[1]}"


@pytest.mark.parametrize("token_registry", ["renewed-ahead"], indirect=True)
def test_credentials_go_to_the_origin_only(token_registry, tmp_path):
    """Not to a mirror (unless configured for it), not across a redirect."""
    reg = token_registry
    cfg = reg.write_config(tmp_path / "docker", "old-pass")
    src = _model(tmp_path / "m", 2, size=1 * MiB)
    ref = run_cli(
        "build", str(src), f"{reg.host}/cred/origin", "--plain-http", "-q", env=_env(cfg)
    ).last_line
    basic = "Basic " + base64.b64encode(b"ci:old-pass").decode()

    # a mirror in front of the same registry: it sees no credentials of the origin's
    with QuirkProxy(f"http://{reg.host}") as mirror:
        r = cache_cli(
            "pull",
            ref,
            "--cache-dir",
            str(tmp_path / "c1"),
            "--plain-http",
            "-q",
            "--mirror",
            f"http://{mirror.host}",
            env=_env(cfg),
        )
        assert r.code == 0
    assert mirror.headers  # the mirror was asked first
    assert all("Authorization" not in h for _, _, h in mirror.headers)

    # the origin redirects blob reads to another host: no Authorization follows
    cdn = _Recorder(reg.registry.root / "storage")
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    try:

        def redirect(method, path, n):
            if method == "GET" and "/blobs/" in path:
                return 307, {"Location": f"http://{cdn.host}/{path.rsplit(':', 1)[-1]}"}
            return None

        with QuirkProxy(f"http://{reg.host}", redirect) as origin:
            cfg2 = tmp_path / "docker2"
            cfg2.mkdir()
            auth = base64.b64encode(b"ci:old-pass").decode()
            (cfg2 / "config.json").write_text(json.dumps({"auths": {origin.host: {"auth": auth}}}))
            r = cache_cli(
                "pull",
                ref.replace(reg.host, origin.host),
                "--cache-dir",
                str(tmp_path / "c2"),
                "--plain-http",
                "--json",
                "-q",
                env=_env(cfg2),
            )
        result = json.loads(r.stdout.strip().splitlines()[-2])
        assert tree(Path(result["path"])) == tree(src)
        assert any(h.get("Authorization", "").startswith("Bearer ") for _, _, h in origin.headers)
    finally:
        cdn.shutdown()
        cdn.server_close()
    assert cdn.seen and all("Authorization" not in h for h in cdn.seen)
    assert basic not in json.dumps(cdn.seen)
