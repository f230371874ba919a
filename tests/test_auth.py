"""TLS + htpasswd registry: credentials from docker config.json, clear failures otherwise."""

from __future__ import annotations

from pathlib import Path

from modelcar.oci.reference import parse_ref
from modelcar.oci.store import StoreOptions
from modelcar.oci.stores import open_store
from tests.helpers import assert_one_line_error, run_cli


def test_push_with_docker_config_credentials(auth_registry, minilm, tmp_path):
    cfg = auth_registry.docker_config(tmp_path / "docker")
    target = f"{auth_registry.host}/secure/minilm:v1"
    r = run_cli(
        "build",
        str(minilm),
        target,
        "--ca-file",
        str(auth_registry.ca_file),
        "-q",
        env={"DOCKER_CONFIG": str(cfg)},
    )
    digest = r.last_line.split("@")[1]
    store = open_store(
        parse_ref(target), StoreOptions(ca_file=str(auth_registry.ca_file), docker_config=str(cfg))
    )
    assert store.get_manifest("v1").digest == digest
    out = run_cli(
        "verify",
        r.last_line,
        "--ca-file",
        str(auth_registry.ca_file),
        env={"DOCKER_CONFIG": str(cfg)},
    )
    assert out.stdout.startswith("ok:")


def test_wrong_password_is_one_line_and_keeps_the_tag(auth_registry, minilm, tmp_path):
    good = auth_registry.docker_config(tmp_path / "good")
    target = f"{auth_registry.host}/secure/keep:v1"
    ca = str(auth_registry.ca_file)
    first = run_cli(
        "build", str(minilm), target, "--ca-file", ca, "-q", env={"DOCKER_CONFIG": str(good)}
    ).last_line
    bad = auth_registry.docker_config(tmp_path / "bad", password="wrong")
    r = run_cli(
        "build",
        str(minilm),
        target,
        "--ca-file",
        ca,
        "--no-stat-cache",
        env={"DOCKER_CONFIG": str(bad)},
        check=False,
    )
    assert_one_line_error(r, "rejected the credentials", auth_registry.host)
    store = open_store(parse_ref(target), StoreOptions(ca_file=ca, docker_config=str(good)))
    assert store.get_manifest("v1").digest == first.split("@")[1]


def test_no_credentials(auth_registry, minilm, tmp_path):
    r = run_cli(
        "build",
        str(minilm),
        f"{auth_registry.host}/secure/x:v1",
        "--ca-file",
        str(auth_registry.ca_file),
        env={"DOCKER_CONFIG": str(tmp_path / "none")},
        check=False,
    )
    assert_one_line_error(r, "requires credentials")


def test_untrusted_certificate(auth_registry, minilm, tmp_path: Path):
    cfg = auth_registry.docker_config(tmp_path / "docker")
    r = run_cli(
        "build",
        str(minilm),
        f"{auth_registry.host}/secure/x:v1",
        env={"DOCKER_CONFIG": str(cfg)},
        check=False,
    )
    assert_one_line_error(r, "certificate is not trusted", "--ca-file")


def test_bearer_token_realm(tmp_path, minilm):
    """Registry with token auth: the client follows the realm, gets a JWT, pushes and reads."""
    import base64
    import json

    from harness.tokenserver import token_registry

    with token_registry(tmp_path, "ci", "tok-pass") as (reg, tokens):
        cfg = tmp_path / "docker"
        cfg.mkdir()
        auth = base64.b64encode(b"ci:tok-pass").decode()
        (cfg / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
        target = f"{reg.host}/tok/minilm:v1"
        ref = run_cli(
            "build", str(minilm), target, "--plain-http", "-q", env={"DOCKER_CONFIG": str(cfg)}
        ).last_line
        assert tokens.requests >= 1
        out = run_cli("verify", ref, "--plain-http", env={"DOCKER_CONFIG": str(cfg)})
        assert out.stdout.startswith("ok:")
        (cfg / "config.json").write_text(
            json.dumps({"auths": {reg.host: {"auth": base64.b64encode(b"ci:nope").decode()}}})
        )
        r = run_cli("inspect", ref, "--plain-http", env={"DOCKER_CONFIG": str(cfg)}, check=False)
        assert_one_line_error(r, "token service rejected the credentials")


def test_an_identity_token_is_exchanged_by_the_oauth2_post_never_sent_as_basic(tmp_path, minilm):
    """`docker login` against an OAuth2 registry keeps an identitytoken: it goes to the
    token service as a refresh_token grant (POST), never as Basic credentials."""
    import json

    from harness.tokenserver import token_registry

    with token_registry(tmp_path, "ci", "tok-pass", refresh_token="rt-123") as (reg, tokens):
        cfg = tmp_path / "docker"
        cfg.mkdir()
        (cfg / "config.json").write_text(
            json.dumps({"auths": {reg.host: {"auth": "", "identitytoken": "rt-123"}}})
        )
        target = f"{reg.host}/tok/minilm:v1"
        ref = run_cli(
            "build", str(minilm), target, "--plain-http", "-q", env={"DOCKER_CONFIG": str(cfg)}
        ).last_line
        assert tokens.posts >= 1 and tokens.refused == 0  # no Basic "<token>:…" was tried
        out = run_cli("verify", ref, "--plain-http", env={"DOCKER_CONFIG": str(cfg)})
        assert out.stdout.startswith("ok:")
        (cfg / "config.json").write_text(
            json.dumps({"auths": {reg.host: {"identitytoken": "stolen"}}})
        )
        r = run_cli("inspect", ref, "--plain-http", env={"DOCKER_CONFIG": str(cfg)}, check=False)
        assert_one_line_error(r, "token service")


def test_credentials_go_only_to_a_realm_the_registry_may_name(tmp_path, minilm):
    """A registry (here a proxy that answers every request with a challenge) naming a realm on a
    link-local address, another scheme or with user info: refused, nothing sent there."""
    import base64
    import json

    from harness.proxy import QuirkProxy
    from harness.tokenserver import token_registry

    with token_registry(tmp_path, "ci", "tok-pass") as (reg, tokens):
        cfg = tmp_path / "docker"
        cfg.mkdir()
        auth = base64.b64encode(b"ci:tok-pass").decode()
        for realm, needle in (
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("file:///etc/passwd", "no http(s) URL"),
            (f"http://x:y@{tokens.realm[7:]}", "user info"),
        ):

            def challenge(method: str, path: str, n: int, realm: str = realm):
                return (401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="s"'})

            with QuirkProxy(f"http://{reg.host}", rule=challenge) as proxy:
                (cfg / "config.json").write_text(
                    json.dumps({"auths": {proxy.host: {"auth": auth}}})
                )
                before = tokens.requests
                r = run_cli(
                    "build",
                    str(minilm),
                    f"{proxy.host}/tok/realm:v1",
                    "--plain-http",
                    env={"DOCKER_CONFIG": str(cfg)},
                    check=False,
                )
                assert_one_line_error(r, needle)
                assert tokens.requests == before
