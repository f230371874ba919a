"""Property-based fuzzing of every operation in the OpenAPI schema (schemathesis).

Bounded: a fixed number of examples per operation, on SQLite and PostgreSQL.
Every answer must be documented, match its schema, and never be a 5xx.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from harness.apiserver import ApiServer
from modelcar.api.app import create_app
from modelcar.api.settings import Settings
from tests.helpers import digest, register

EXAMPLES = 30
# Operations whose body only the server can judge (a PEM key, a signature over a
# payload): a request that matches the schema may still be refused with 422, so
# "schema-valid data is accepted" does not apply; every other check still does.
CRYPTOGRAPHIC = {("POST", "/v1/keys"), ("POST", "/v1/signatures")}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fuzzed_api(request, tmp_path_factory):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz')}/catalog.db"
    else:
        url = request.getfixturevalue("postgres").create_database()
    server = ApiServer(Settings(db=url)).start()
    c = server.client(server.admin)
    register(c, "m", 1)
    c.put("/v1/models/m/aliases/prod", json={"version": 1})
    c.put("/v1/nodes/gpu-1/status", json={"models": [{"digest": digest(1), "state": "ready"}]})
    c.put("/v1/policies/p", json={"models": ["m@prod"]})
    yield server
    server.stop()


# The schema the server publishes at /openapi.json, taken from the app itself at
# collection time (building the app does not touch a database).
schema = schemathesis.openapi.from_dict(create_app(Settings(db="sqlite://")).openapi())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_request_gets_a_5xx_or_breaks_the_schema(case, fuzzed_api):
    crypto = (case.operation.method.upper(), case.operation.path) in CRYPTOGRAPHIC
    case.call_and_validate(
        base_url=fuzzed_api.url,
        headers={"Authorization": f"Bearer {fuzzed_api.admin}"},
        excluded_checks=[positive_data_acceptance] if crypto else None,
    )
