"""Bad input and failed writes: JSON errors, never a 500, and the database as it was."""

from __future__ import annotations

from sqlalchemy import text

from modelcar.api.db.tables import Base
from tests.helpers import digest, error_of, register


def _snapshot(api) -> dict[str, list]:
    with api.db.reading() as s:
        return {
            t.name: sorted(map(repr, s.execute(t.select()).all()))
            for t in Base.metadata.sorted_tables
        }


def _refuse(api, table: str, column: str) -> None:
    """Make the database itself refuse rows where ``column`` is 'boom'."""
    with api.db.writing() as s:
        if api.db.is_sqlite:
            s.execute(
                text(
                    f"CREATE TRIGGER boom_{table} BEFORE INSERT ON {table} "
                    f"WHEN NEW.{column} = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END"
                )
            )
        else:
            s.execute(text(f"ALTER TABLE {table} ADD CONSTRAINT boom CHECK ({column} <> 'boom')"))


def test_a_failed_write_leaves_the_database_as_it_was(api):
    c = api.client(api.admin)
    register(c, "m", 1)
    register(c, "m", 2)
    c.put("/v1/models/m/aliases/prod", json={"version": 1})
    _refuse(api, "versions", "source_uri")
    _refuse(api, "alias_events", "reason")
    before = _snapshot(api)

    # the model row is inserted, then the version insert fails: both are undone
    r = register(c, "fresh", 3, source_uri="boom")
    assert r.status_code == 409, r.text
    assert "nothing was changed" in error_of(r)["message"]
    # the version number is bumped, then the insert fails: the bump is undone
    assert register(c, "m", 4, source_uri="boom").status_code == 409
    # the alias is moved, then its history row fails: the move is undone
    moved = c.put("/v1/models/m/aliases/prod", json={"version": 2, "reason": "boom"})
    assert moved.status_code == 409

    assert _snapshot(api) == before
    assert c.get("/v1/models/fresh").status_code == 404
    assert c.get("/v1/resolve/m@prod").json()["version"] == 1
    assert register(c, "m", 5).json()["version"] == 3


def test_malformed_requests_get_json_errors(api):
    c = api.client(api.admin)
    register(c, "m", 1)
    cases = [
        ("POST", "/v1/models/m/versions", {"content": b"{not json"}, 422),
        ("POST", "/v1/models/m/versions", {"json": []}, 422),
        ("POST", "/v1/models/m/versions", {"json": {"digest": "sha256:xyz"}}, 422),
        (
            "POST",
            "/v1/models/m/versions",
            {"json": {"digest": digest(2), "repository": "a b"}},
            422,
        ),
        (
            "POST",
            "/v1/models/m/versions",
            {"json": {"digest": digest(2), "repository": "r.io/m:tag"}},
            422,
        ),
        (
            "POST",
            "/v1/models/m/versions",
            {"json": {"digest": digest(2), "repository": "r.io/m", "size": 2**70}},
            422,
        ),
        (
            "POST",
            "/v1/models/m/versions",
            {"json": {"digest": digest(2), "repository": "r.io/m", "extra": 1}},
            422,
        ),
        ("PUT", "/v1/models/m/aliases/prod", {"json": {"version": "one"}}, 422),
        ("PUT", "/v1/models/m/aliases/prod", {"json": {"version": 0}}, 422),
        ("GET", "/v1/models/m/versions/99999999999", {}, 422),
        ("GET", "/v1/resolve/" + "a" * 300, {}, 422),
        ("GET", "/v1/resolve/m:1", {"params": {"mode": "nfs"}}, 422),
        ("GET", "/v1/nodes/UPPER_case/assignments", {}, 422),
        (
            "PUT",
            "/v1/nodes/gpu-1/status",
            {"json": {"models": [{"digest": digest(1), "state": "sleepy"}]}},
            422,
        ),
        ("POST", "/v1/models/m/versions", {"content": b"x" * (5 << 20)}, 413),
        ("GET", "/v1/nowhere", {}, 404),
        ("DELETE", "/v1/resolve/m:1", {}, 405),
    ]
    for method, path, kwargs, status in cases:
        r = c.request(method, path, **kwargs)
        assert r.status_code == status, (method, path, r.status_code, r.text[:300])
        error_of(r)


def test_a_lost_database_is_503_not_500(make_api, db_url):
    api = make_api()
    c = api.client(api.admin)
    register(c, "m", 1)
    if api.db.is_sqlite:
        with api.db.writing() as s:  # every table gone: the schema no longer matches
            for table in reversed(Base.metadata.sorted_tables):
                s.execute(text(f"DROP TABLE {table.name}"))
            s.execute(text("DROP TABLE alembic_version"))
    else:
        import psycopg

        name = db_url.rsplit("/", 1)[1]
        admin_url = db_url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    r = c.get("/v1/resolve/m:1")  # its token is still in the server's short cache
    assert r.status_code == 503, r.text
    assert error_of(r)["code"] == "database"
    r = api.client("mct_unknown").get("/v1/models")  # the token lookup fails first
    assert r.status_code == 503, r.text
    ready = api.client().get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
