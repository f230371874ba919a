"""The builder and ``modelcar resolve`` against a real API and a real registry."""

from __future__ import annotations

import json

import pytest

from harness.localregistry import free_port
from harness.models import write_safetensors
from tests.helpers import assert_one_line_error, run_cli


@pytest.fixture
def small_model(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    write_safetensors(d / "model.safetensors", 200_000, seed=1)
    (d / "config.json").write_text('{"model_type": "bert"}\n')
    return d


def test_build_registers_and_resolve_returns_the_same_digest(api, registry, small_model):
    env = {"MODELCAR_API_TOKEN": api.token("publish", "ci")}
    target = f"{registry.host}/e2e/m"
    built = run_cli(
        "build",
        str(small_model),
        target,
        "--plain-http",
        "--api",
        api.url,
        "--alias",
        "prod",
        "--reason",
        "first build",
        env=env,
    )
    pinned = built.last_line
    assert pinned.startswith(f"{target}@sha256:")
    assert "registered m:1, prod -> 1" in built.stderr

    env_read = {"MODELCAR_API": api.url, "MODELCAR_API_TOKEN": api.token("read", "deployer")}
    resolved = run_cli("resolve", "m@prod", env=env_read)
    assert resolved.last_line == pinned
    as_json = run_cli("resolve", "m@prod", "--json", env=env_read).stdout.splitlines()
    answer = json.loads(as_json[0])
    assert as_json[-1] == pinned
    assert answer["image"] == pinned and answer["digest"] == pinned.split("@")[1]
    assert answer["storage_uri"] == f"oci://{pinned}"
    isvc = json.loads(run_cli("resolve", "m@prod", "--kserve", env=env_read).stdout)
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == f"oci://{pinned}"
    streamed = json.loads(
        run_cli("resolve", "m@prod", "--kserve", "--mode", "stream", env=env_read).stdout
    )
    args = streamed["spec"]["predictor"]["containers"][0]["args"]
    assert args[:4] == [
        "--model",
        f"s3://modelcar/{pinned.split('@')[1].replace(':', '-')}/",
        "--load-format",
        "runai_streamer",
    ]

    version = api.client(api.admin).get("/v1/models/m/versions/1").json()
    assert version["build"]["digest"] == answer["digest"]
    assert version["file_count"] == 2 and version["index_digest"].startswith("sha256:")
    history = api.client(api.admin).get("/v1/models/m/aliases/prod/history").json()
    assert [(h["to_version"], h["actor"], h["reason"]) for h in history] == [
        (1, "ci", "first build")
    ]

    # a rebuild of the same files is the same version; a change is the next one
    again = run_cli("build", str(small_model), target, "--plain-http", "--api", api.url, env=env)
    assert again.last_line == pinned and "already registered as m:1" in again.stderr
    (small_model / "config.json").write_text('{"model_type": "bert", "v": 2}\n')
    changed = run_cli(
        "build",
        str(small_model),
        target,
        "--plain-http",
        "--api",
        api.url,
        "--alias",
        "canary",
        env=env,
    )
    assert "registered m:2, canary -> 2" in changed.stderr
    assert run_cli("resolve", "m@canary", env=env_read).last_line == changed.last_line

    # rollback: move prod with the CLI, resolve follows
    moved = run_cli("alias", "m@prod", "2", "--reason", "promote", env={**env_read, **env})
    assert moved.last_line == changed.last_line
    assert run_cli("resolve", "m@prod", env=env_read).last_line == changed.last_line


def test_failed_registration_says_the_image_is_pushed(api, registry, small_model):
    target = f"{registry.host}/e2e/denied"
    env = {"MODELCAR_API_TOKEN": api.token("read", "not-a-publisher")}
    result = run_cli(
        "build", str(small_model), target, "--plain-http", "--api", api.url, env=env, check=False
    )
    assert_one_line_error(result, "needs the publish role", "image is pushed")
    assert result.last_line.startswith(f"{target}@sha256:")
    env["MODELCAR_API_TOKEN"] = api.token("publish", "ci")
    ok = run_cli("build", str(small_model), target, "--plain-http", "--api", api.url, env=env)
    assert ok.last_line == result.last_line and "registered denied:1" in ok.stderr


def test_cli_input_errors_are_one_line(api, registry, small_model, tmp_path):
    target = f"{registry.host}/e2e/x"
    no_api = run_cli("build", str(small_model), target, "--alias", "prod", check=False)
    assert_one_line_error(no_api, "--alias need --api")
    bad_model = run_cli(
        "build", str(small_model), target, "--api", api.url, "--model", "Bad_Name", check=False
    )
    assert_one_line_error(bad_model, "invalid --model")
    assert "@sha256:" not in bad_model.stdout  # refused before building
    layout_name = run_cli(
        "build", str(small_model), f"oci:{tmp_path / 'Not_Valid'}", "--api", api.url, check=False
    )
    assert_one_line_error(layout_name, "cannot derive a model name", "--model")

    env = {"MODELCAR_API": api.url, "MODELCAR_API_TOKEN": api.admin}
    assert_one_line_error(run_cli("resolve", "nope@prod", env=env, check=False), "unknown model")
    assert_one_line_error(
        run_cli("resolve", "Bad@prod", env=env, check=False), "invalid model name"
    )
    assert_one_line_error(run_cli("resolve", "m@prod", check=False), "no modelcar API address")
    down = {"MODELCAR_API": f"http://127.0.0.1:{free_port()}"}
    assert_one_line_error(run_cli("resolve", "m@prod", env=down, check=False), "cannot reach")
    no_token = {"MODELCAR_API": api.url}
    assert_one_line_error(run_cli("resolve", "m@prod", env=no_token, check=False), "bearer token")
