"""Real servers for the tests: Distribution registries on 127.0.0.1, stopped by PID."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.apiserver import ApiServer
from harness.localregistry import LocalRegistry
from harness.models import make_sharded_model, minilm_dir
from harness.postgres import PostgresServer
from harness.tls import make_cert, make_htpasswd
from modelcar.api.settings import Settings
from tests.helpers import ROOT, VERSION, write_docker_config

#: Tests that build or run images share one podman storage (.image/): under
#: `pytest -n 2 --dist loadgroup` (make test) they all run in the same worker.
PODMAN_FIXTURES = {"images", "podman", "arm64_busybox", "multiarch_base"}
PODMAN_MODULES = {"test_image", "test_pods"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if PODMAN_FIXTURES & set(getattr(item, "fixturenames", ())) or module in PODMAN_MODULES:
            item.add_marker(pytest.mark.xdist_group("podman"))


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
        return write_docker_config(directory, self.host, self.user, password or self.password)


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


@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """The runtime images, built once per session by make image's script (podman)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "image.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        name: f"localhost/{name}:{VERSION}"
        for name in ("modelcar", "modelcar-cache", "modelcar-api")
    }


@pytest.fixture(scope="session")
def podman():
    from harness.pods import Podman

    return Podman()


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory) -> tuple[Path, Path]:
    """An ECDSA P-256 key pair written by `modelcar keygen`: (private, public)."""
    from tests.helpers import run_cli

    d = tmp_path_factory.mktemp("keys")
    run_cli("keygen", str(d / "release"))
    return d / "release.key", d / "release.pub"


@pytest.fixture(scope="session")
def arm64_busybox() -> Path:
    """Debian's static busybox for arm64 (fetched with apt once, kept under .image/)."""
    from harness.debs import foreign_package

    return (
        foreign_package("busybox-static", "arm64", ROOT / ".image" / "arm64-busybox")
        / "bin"
        / "busybox"
    )


@pytest.fixture(scope="session")
def multiarch_base(registry, arm64_busybox) -> str:
    """A linux/amd64 + linux/arm64 busybox base in the session registry (an index)."""
    from tests.helpers import run_cli

    return run_cli(
        "base",
        "create",
        f"{registry.host}/base/busybox:multi",
        "--plain-http",
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        "--busybox",
        f"linux/arm64={arm64_busybox}",
    ).last_line
