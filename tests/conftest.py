"""Real servers for the tests: Distribution registries on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

import pytest

from api.settings import Settings
from modelcar.localregistry import LocalRegistry
from tests.fixtures.apiserver import ApiServer
from tests.fixtures.models import make_sharded_model, minilm_dir
from tests.fixtures.postgres import PostgresServer
from tests.fixtures.tls import make_cert, make_htpasswd

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own stat cache and no ambient registry credentials."""
    monkeypatch.setenv("MODELCAR_CACHE_DIR", str(tmp_path_factory.mktemp("statcache")))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("dockercfg")))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture
def fresh_registry(tmp_path_factory):
    reg = LocalRegistry(tmp_path_factory.mktemp("fresh-registry")).start()
    yield reg
    reg.stop()


@dataclass
class AuthRegistry:
    registry: LocalRegistry
    ca_file: Path
    user: str
    password: str

    @property
    def host(self) -> str:
        return self.registry.host

    def docker_config(self, directory: Path, password: str | None = None) -> Path:
        auth = b64encode(f"{self.user}:{password or self.password}".encode()).decode()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps({"auths": {self.host: {"auth": auth}}}))
        return directory


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls-registry")
    cert, key = make_cert(d)
    htpasswd = make_htpasswd(d / "htpasswd", "builder", "s3cret-pass")
    with LocalRegistry(d / "reg", tls=(cert, key), htpasswd=htpasswd) as reg:
        yield AuthRegistry(reg, cert, "builder", "s3cret-pass")


@pytest.fixture(scope="session")
def postgres():
    # Not under pytest's 0700 temp root: the cluster runs as an unprivileged user.
    root = Path(tempfile.mkdtemp(prefix="modelcar-pg-"))
    root.chmod(0o755)
    try:
        with PostgresServer(root / "pg") as pg:
            yield pg
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A fresh, empty database: a SQLite file or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/catalog.db"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
def make_api(db_url):
    """Start an API server on the test's database with the given settings."""
    servers: list[ApiServer] = []

    def start(**settings) -> ApiServer:
        server = ApiServer(Settings(db=db_url, **settings)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def api(make_api) -> ApiServer:
    return make_api()


@pytest.fixture(scope="session")
def minilm():
    return minilm_dir()


@pytest.fixture
def sharded_model(tmp_path):
    return make_sharded_model(tmp_path / "model")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = self.stdout.strip().splitlines()
        return lines[-1] if lines else ""


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    honour_permissions: bool = False,
    timeout: float = 300,
    module: str = "builder.cli",
) -> Result:
    """Run ``modelcar`` as a user would: a subprocess, its exit code, stdout and stderr.

    ``honour_permissions``: as root, drop the capabilities that let root read any file,
    so a mode-000 file is unreadable as it would be for a normal user.
    """
    full_env = {**os.environ, **(env or {})}
    prefix: list[str] = []
    if honour_permissions and os.geteuid() == 0:
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
        )
    return result


def run_api_cli(*args: str, **kwargs) -> Result:
    """Run ``modelcar-api``."""
    return run_cli(*args, module="api.cli", **kwargs)


def assert_one_line_error(result: Result, *needles: str) -> None:
    assert result.code != 0, result
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
