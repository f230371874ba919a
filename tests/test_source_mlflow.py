"""Building MLflow registered models from a real `mlflow server`."""

from __future__ import annotations

import json

import pytest

from harness.localregistry import free_port
from harness.mlflowserver import MlflowServer
from harness.models import write_safetensors
from modelcar.format import keys as mk
from tests.helpers import assert_one_line_error, run_cli, tree, unpack_with_umoci


def _model(root, seed):
    root.mkdir(parents=True)
    write_safetensors(root / "model.safetensors", 3 << 20, seed=seed)
    (root / "config.json").write_text(json.dumps({"model_type": "bert", "seed": seed}))
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("hello\nworld\n" * (seed + 1))
    return root


@pytest.fixture(scope="module")
def mlflow_models(tmp_path_factory):
    import mlflow
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    server = MlflowServer(root / "server").start()
    client = MlflowClient(tracking_uri=server.url)
    mlflow.set_tracking_uri(server.url)
    client.create_registered_model("bert")
    runs, dirs = {}, {}
    for version, seed in ((1, 1), (2, 2)):
        dirs[version] = _model(root / f"v{version}", seed)
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(dirs[version]), artifact_path="model")
        runs[version] = run.info.run_id
        client.create_model_version(
            "bert", source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        )
    client.set_registered_model_alias("bert", "prod", "2")
    yield server, runs, dirs
    server.stop()


def _build(env, source, target, check=True):
    r = run_cli("build", source, target, "--plain-http", "--json", env=env, check=check)
    return r, (json.loads(r.stdout.strip().splitlines()[-2]) if r.code == 0 else None)


def test_an_alias_builds_the_version_it_points_at(mlflow_models, registry, tmp_path):
    server, runs, dirs = mlflow_models
    env = {"MLFLOW_TRACKING_URI": server.url}
    r, record = _build(env, "models:/bert@prod", f"{registry.host}/mlflow/bert:prod")
    assert record["source"] == "mlflow://bert/2"
    rootfs = unpack_with_umoci(r.last_line, tmp_path)  # skopeo + umoci, as a runtime would
    assert tree(rootfs / "models") == tree(dirs[2])
    from modelcar.oci.reference import parse_ref
    from modelcar.oci.store import StoreOptions
    from modelcar.oci.stores import open_store

    ref = parse_ref(r.last_line)
    manifest = json.loads(
        open_store(ref, StoreOptions(plain_http=True)).get_manifest(ref.reference).data
    )
    assert manifest["annotations"][mk.SOURCE_RUN_ID] == runs[2]

    _, v1 = _build(env, "models:/bert/1", f"{registry.host}/mlflow/bert:v1")
    _, v1_again = _build(env, "mlflow://bert/1", f"{registry.host}/mlflow/bert:v1b")
    assert v1["source"] == v1_again["source"] == "mlflow://bert/1"
    assert v1["digest"] == v1_again["digest"] != record["digest"]


def test_mlflow_errors_are_one_line(mlflow_models, registry):
    server, _, _ = mlflow_models
    target = f"{registry.host}/mlflow/err:1"
    env = {"MLFLOW_TRACKING_URI": server.url}
    assert_one_line_error(_build(env, "models:/bert@nope", target, check=False)[0], "not found")
    assert_one_line_error(_build(env, "models:/ghost/1", target, check=False)[0], "not found")
    assert_one_line_error(_build(env, "models:/bert", target, check=False)[0], "models:/NAME")
    down = {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    assert_one_line_error(_build(down, "models:/bert@prod", target, check=False)[0], "MLflow")
