"""KServe: the examples and the API's `?format=kserve` answers validate against the
InferenceService CRD schema (vendored; see harness/kserve/SOURCE.md)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from modelcar.contract.nodecache import node_label_key
from tests.helpers import digest, register

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "harness/kserve/inferenceservice-v1beta1.schema.json").read_text())


def strict(schema):
    """Kubernetes refuses unknown fields (strict field validation): say so in JSON Schema."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


VALIDATOR = jsonschema.Draft7Validator(strict(SCHEMA))


def check(isvc: dict) -> None:
    errors = sorted(VALIDATOR.iter_errors(isvc), key=lambda e: list(e.path))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5]]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples/kserve").glob("*.yaml")), ids=lambda p: p.name
)
def test_examples_validate(path):
    check(yaml.safe_load(path.read_text()))


def test_a_typo_is_caught():
    bad = yaml.safe_load((ROOT / "examples/kserve/oci-storage-uri.yaml").read_text())
    bad["spec"]["predictor"]["model"]["storageURI"] = bad["spec"]["predictor"]["model"].pop(
        "storageUri"
    )
    with pytest.raises(AssertionError):
        check(bad)


def test_examples_use_the_daemons_label():
    for path in (ROOT / "examples/kserve").glob("*.yaml"):
        text = path.read_text()
        if "modelcar.dev/sha256-" in text:
            assert (
                node_label_key(
                    "sha256:9b0a8c1e6e2c4f7f0f9d1d3b5c2a7e8f4d6b1a3c5e7f9b2d4c6e8a0b1c3d5e7f"
                )
                in text
            )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("mode", ["oci", "hostpath", "stream"])
def test_the_apis_kserve_answer_validates(api, mode):
    c = api.client(api.admin)
    register(c, "llama3-8b", 1)
    c.put("/v1/models/llama3-8b/aliases/prod", json={"version": 1})
    isvc = c.get("/v1/resolve/llama3-8b@prod", params={"format": "kserve", "mode": mode}).json()
    check(isvc)
    text = json.dumps(isvc)
    assert node_label_key(digest(1)) in text
    if mode == "oci":
        assert isvc["spec"]["predictor"]["model"]["storageUri"].startswith("oci://")
    elif mode == "stream":
        (container,) = isvc["spec"]["predictor"]["containers"]
        assert container["args"][:4] == [
            "--model",
            f"s3://modelcar/sha256-{digest(1)[7:]}/",
            "--load-format",
            "runai_streamer",
        ]
        assert "storageUri" not in text and "hostPath" not in text
    else:
        assert "hostPath" in text and "storageUri" not in text
