"""Registry behaviours seen in the wild, replayed by a proxy in front of the real registry."""

from __future__ import annotations

from harness.proxy import QuirkProxy
from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import assert_one_line_error, run_cli

SMALL_CHUNKS = StoreOptions(plain_http=True, chunk_size=1 << 20, retries=4)


def _push(host: str, blob: bytes) -> str:
    from modelcar.oci.digest import sha256_bytes

    repo = open_store(parse_ref(f"{host}/quirks/x"), SMALL_CHUNKS)
    digest = sha256_bytes(blob)
    repo.put_blob(
        digest, len(blob), lambda: [blob[i : i + 300_000] for i in range(0, len(blob), 300_000)]
    )
    return digest


BLOB = bytes(range(256)) * 12_000  # ~3 MiB: three chunks of 1 MiB


def test_429_with_retry_after_is_retried(registry, sharded_model):
    def rule(method, path, n):
        if method == "PUT" and "/manifests/" in path and n <= 2:
            return 429, {"Retry-After": "1"}
        return None

    with QuirkProxy(registry.url, rule) as proxy:
        r = run_cli("build", str(sharded_model), f"{proxy.host}/quirks/m:v1", "--plain-http")
    assert "@sha256:" in r.last_line
    assert [s for m, p, s in proxy.log if s == 429] == [429, 429]
    assert "retrying in 1.0s" in r.stderr


def test_persistent_429_is_one_line(registry, sharded_model):
    def rule(method, path, n):
        return (429, {"Retry-After": "0"}) if method == "PUT" and "/manifests/" in path else None

    with QuirkProxy(registry.url, rule) as proxy:
        r = run_cli(
            "build", str(sharded_model), f"{proxy.host}/quirks/m:v2", "--plain-http", check=False
        )
    assert_one_line_error(r, "HTTP 429", "quirks/m")


def test_registry_refusing_chunks_gets_a_monolithic_put(registry):
    def rule(method, path, n):
        return (405, {}) if method == "PATCH" else None

    with QuirkProxy(registry.url, rule) as proxy:
        digest = _push(proxy.host, BLOB)
        assert any(m == "PATCH" and s == 405 for m, p, s in proxy.log)
        assert any(m == "PUT" and "digest=" in p and s == 201 for m, p, s in proxy.log)
    assert open_store(parse_ref(f"{registry.host}/quirks/x"), SMALL_CHUNKS).has_blob(digest)


def test_patch_answered_with_201_is_accepted(registry):
    def rule(method, path, n):
        return ("rewrite", 201) if method == "PATCH" else None

    with QuirkProxy(registry.url, rule) as proxy:
        digest = _push(proxy.host, BLOB[::-1])
        patches = [s for m, p, s in proxy.log if m == "PATCH"]
    assert patches == [201, 201, 201]
    assert open_store(parse_ref(f"{registry.host}/quirks/x"), SMALL_CHUNKS).has_blob(digest)


def test_5xx_on_an_upload_restarts_it(registry):
    def rule(method, path, n):
        return (503, {}) if method == "PATCH" and n == 2 else None

    with QuirkProxy(registry.url, rule) as proxy:
        _push(proxy.host, BLOB + b"x")
    assert sum(1 for m, p, s in proxy.log if m == "POST") == 2
