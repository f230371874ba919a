"""``modelcar-api`` as an operator runs it: migrations, tokens, config, serve."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from harness.localregistry import free_port
from tests.helpers import ROOT, assert_one_line_error, run_api_cli, stop_process

MIGRATIONS = ROOT / "api" / "db" / "migrations" / "versions"


def test_serve_refuses_an_unmigrated_database(tmp_path):
    db = f"sqlite:///{tmp_path}/new.db"
    refused = run_api_cli("serve", "--db", db, "--port", str(free_port()), check=False)
    assert_one_line_error(refused, "schema is at nothing", "modelcar-api db upgrade")

    head = sorted(p.name[:4] for p in MIGRATIONS.glob("[0-9]*.py"))[-1]
    up = run_api_cli("db", "upgrade", "--db", db)
    assert f"upgraded empty -> {head}" in up.stderr
    assert f"already at {head}" in run_api_cli("db", "upgrade", "--db", db).stderr
    assert run_api_cli("db", "current", "--db", db).stdout.split() == [
        "database:",
        head,
        "release:",
        head,
    ]


def test_token_create_prints_only_the_token(tmp_path):
    db = f"sqlite:///{tmp_path}/t.db"
    run_api_cli("db", "upgrade", "--db", db)
    out = run_api_cli("token", "create", "--role", "publish", "--name", "ci", "--db", db)
    assert out.stdout.count("\n") == 1 and out.stdout.startswith("mct_")
    listed = run_api_cli("token", "list", "--db", db).stdout
    assert '"name": "ci"' in listed and out.stdout.strip() not in listed

    bad_role = run_api_cli(
        "token", "create", "--role", "root", "--name", "x", "--db", db, check=False
    )
    assert_one_line_error(bad_role, "invalid --role")
    assert bad_role.code == 2
    bad_node = run_api_cli(
        "token", "create", "--role", "node", "--name", "Not A Node", "--db", db, check=False
    )
    assert_one_line_error(bad_node, "node")
    revoked = run_api_cli("token", "revoke", "1", "--db", db)
    assert "revoked token 1" in revoked.stderr
    assert_one_line_error(run_api_cli("token", "revoke", "1", "--db", db, check=False), "unknown")


@pytest.mark.parametrize(
    "url, needle",
    [
        ("mysql+nodriver://x/y", "no driver"),
        ("not a url", "invalid database URL"),
        ("postgresql://u:secret@127.0.0.1:1/db", "cannot reach the database"),
    ],
)
def test_bad_database_urls_are_one_line(url, needle):
    result = run_api_cli("db", "upgrade", "--db", url, check=False)
    assert_one_line_error(result, needle)
    assert "secret" not in result.stderr


def test_bad_config_is_one_line(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("port: [unclosed\n")
    assert_one_line_error(
        run_api_cli("db", "current", "--config", str(bad_yaml), check=False), "not valid YAML"
    )
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("port: many\n")
    assert_one_line_error(
        run_api_cli("serve", "--config", str(wrong), check=False), "invalid setting port"
    )
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("colour: blue\n")
    assert_one_line_error(
        run_api_cli("serve", "--config", str(unknown), check=False), "invalid setting colour"
    )
    assert_one_line_error(
        run_api_cli("db", "current", "--config", str(tmp_path / "none.yaml"), check=False),
        "cannot read config file",
    )


def test_serve_from_config_file_and_env(db_url, tmp_path):
    """Settings from YAML (db, port) and env (open reads); stopped by PID."""
    run_api_cli("db", "upgrade", "--db", db_url)
    port = free_port()
    config = tmp_path / "api.yaml"
    config.write_text(f"db: {db_url}\nport: {port}\nstale_after: 30\n")
    env = {**os.environ, "MODELCAR_API_OPEN_READS": "true", "MODELCAR_API_CONFIG": str(config)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelcar.api.cli", "serve", "--no-access-log"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the API did not start"
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"{base}/v1/models").json() == []  # open reads, from the env
        assert httpx.get(f"{base}/docs").status_code == 200
        assert "/v1/resolve/{ref}" in httpx.get(f"{base}/openapi.json").json()["paths"]
        assert httpx.post(f"{base}/v1/models/m/versions", json={}).status_code == 401
    finally:
        stderr = stop_process(proc, 20)
    assert "serving on" in stderr and "Traceback" not in stderr


def test_the_migrations_make_exactly_the_tables_the_code_declares(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from modelcar.api.db.tables import Base

    db = f"sqlite:///{tmp_path}/m.db"
    run_api_cli("db", "upgrade", "--db", db)
    engine = create_engine(db)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
