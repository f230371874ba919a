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
