"""Turn a resolved version into what a pod needs: pinned image, storageUri, hostPath,
a pod-spec snippet, and a KServe InferenceService.

Three ways to the files:

- ``oci``: the image itself. The pod spec uses a Kubernetes image volume
  (``subPath: models``, so the files sit at /mnt/models); KServe users put
  ``storage_uri`` (``oci://…``) in ``storageUri`` instead. Nodes where the
  daemon holds the model are *preferred*: the image is warm there.
- ``hostpath``: the daemon's verified copy, mounted read-only. The directory
  exists only where the model is ready, so the node affinity is *required*.
- ``stream``: no mount; a vLLM container loads with ``--load-format runai_streamer``
  from its node's S3 read endpoint (the cache daemon's ``--serve`` hostPort, reached at
  the pod's ``status.hostIP``), every byte verified, while the node may still be
  pulling. Works on any node that holds or pulls the model (ready nodes *preferred*);
  only streamer-aware servers can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelcar.api.catalog import Target
from modelcar.contract import wire as wire
from modelcar.contract.nodecache import LABEL_READY, MOUNT_PATH, host_path, node_label_key
from modelcar.errors import Conflict
from modelcar.oci.reference import parse_ref

VOLUME = "modelcar-models"
KSERVE_API = "serving.kserve.io/v1beta1"
# KServe's storageInitializer `uidModelcar` (its default config: 1010). The runtime reads
# the model through /proc/<sidecar pid>/root, which the kernel allows only to the
# sidecar's own uid: both containers must run as it (other uids get "Permission denied").
KSERVE_UID_MODELCAR = 1010
#: mode=stream's InferenceService runs vLLM's OpenAI server image (its entrypoint is
#: `vllm serve`); the API's caller names another with vllm_image=.
VLLM_IMAGE = "vllm/vllm-openai:latest"


@dataclass(frozen=True)
class StreamEndpoint:
    """Where a pod finds its node's S3 read endpoint, and how it signs."""

    port: int = 5050
    #: a Secret in the pod's namespace, key ``token``: the fleet token (the S3 secret
    #: key); None: unsigned reads (the daemons run with --s3-anonymous)
    secret: str | None = None


def s3_uri(digest: str) -> str:
    return f"s3://modelcar/sha256-{digest.removeprefix('sha256:')}/"


def is_registry(repository: str) -> bool:
    return parse_ref(repository).transport == "registry"


def resolve_answer(
    version: Target,
    *,
    alias: str | None,
    nodes: list[str],
    cache_root: str,
    mode: wire.MountMode | None,
    stream: StreamEndpoint | None = None,
) -> wire.ResolveAnswer:
    image = f"{version.repository}@{version.digest}"
    registry = is_registry(version.repository)
    mode = mode or ("oci" if registry else "hostpath")
    if mode == "oci" and not registry:
        raise Conflict(
            "this version's image is in an oci: layout, which pods cannot pull",
            subject=image,
            hint="use mode=hostpath, or push the image to a registry",
        )
    path = host_path(cache_root, version.digest)
    return wire.ResolveAnswer(
        name=version.name,
        version=version.number,
        alias=alias,
        digest=version.digest,
        repository=version.repository,
        image=image,
        storage_uri=f"oci://{image}" if registry else None,
        host_path=path,
        s3_uri=s3_uri(version.digest),
        node_label=node_label_key(version.digest),
        nodes_ready=nodes,
        size=version.size,
        file_count=version.file_count,
        mode=mode,
        pod_spec=(
            stream_spec(version.digest, node_label_key(version.digest), stream or StreamEndpoint())
            if mode == "stream"
            else pod_spec(image, path, node_label_key(version.digest), mode)
        ),
    )


def _affinity(label: str, *, required: bool) -> dict[str, Any]:
    term: dict[str, Any] = {
        "matchExpressions": [{"key": label, "operator": "In", "values": [LABEL_READY]}]
    }
    rule: dict[str, Any]
    if required:
        rule = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
    else:
        rule = {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": term}]
        }
    return {"nodeAffinity": rule}


def pod_spec(image: str, path: str, label: str, mode: wire.MountMode) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": VOLUME, "mountPath": MOUNT_PATH, "readOnly": True}
    if mode == "oci":
        volume = {"name": VOLUME, "image": {"reference": image, "pullPolicy": "IfNotPresent"}}
        mount["subPath"] = "models"
    else:
        volume = {"name": VOLUME, "hostPath": {"path": path, "type": "Directory"}}
    return {
        "volumes": [volume],
        "volumeMounts": [mount],
        "affinity": _affinity(label, required=mode == "hostpath"),
    }


def stream_spec(digest: str, label: str, endpoint: StreamEndpoint) -> dict[str, Any]:
    """env and args for a vLLM container that streams the model from its node."""
    env: list[dict[str, Any]] = [
        {"name": "MODELCAR_NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "AWS_ENDPOINT_URL", "value": f"http://$(MODELCAR_NODE_IP):{endpoint.port}"},
        {"name": "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "value": "0"},
        {"name": "AWS_EC2_METADATA_DISABLED", "value": "true"},
        {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"},
    ]
    if endpoint.secret:
        env += [
            {"name": "AWS_ACCESS_KEY_ID", "value": "modelcar"},
            {
                "name": "AWS_SECRET_ACCESS_KEY",
                "valueFrom": {"secretKeyRef": {"name": endpoint.secret, "key": "token"}},
            },
        ]
    else:
        env.append({"name": "RUNAI_STREAMER_S3_UNSIGNED", "value": "1"})
    return {
        "env": env,
        "args": ["--model", s3_uri(digest), "--load-format", "runai_streamer"],
        "affinity": _affinity(label, required=False),
    }


def inference_service(
    answer: wire.ResolveAnswer,
    *,
    model_format: str,
    name: str | None = None,
    vllm_image: str = VLLM_IMAGE,
) -> dict[str, Any]:
    """A KServe v1beta1 InferenceService serving the resolved version."""
    isvc_name = name or (answer.name if answer.name[0].isalpha() else f"m-{answer.name}")
    model: dict[str, Any] = {"modelFormat": {"name": model_format}}
    predictor: dict[str, Any] = {"model": model}
    if answer.mode == "stream":  # a vLLM container of its own: its load format is ours
        spec = answer.pod_spec
        predictor = {
            "containers": [
                {
                    "name": "kserve-container",
                    "image": vllm_image,
                    "args": [*spec["args"], "--port", "8080"],
                    "env": spec["env"],
                    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                }
            ],
            "affinity": spec["affinity"],
        }
    elif answer.mode == "oci":
        model["storageUri"] = answer.storage_uri
        # what KServe sets itself when uidModelcar is configured; said here so that a
        # runtime with a USER of its own cannot end up unable to read the sidecar's files
        model["securityContext"] = {"runAsUser": KSERVE_UID_MODELCAR}
        predictor["affinity"] = answer.pod_spec["affinity"]
    else:
        model["args"] = [f"--model_dir={MOUNT_PATH}"]
        model["volumeMounts"] = answer.pod_spec["volumeMounts"]
        predictor["volumes"] = answer.pod_spec["volumes"]
        predictor["affinity"] = answer.pod_spec["affinity"]
    return {
        "apiVersion": KSERVE_API,
        "kind": "InferenceService",
        "metadata": {
            "name": isvc_name[:63],
            "annotations": {
                "modelcar.dev/model": f"{answer.name}:{answer.version}",
                "modelcar.dev/digest": answer.digest,
            },
        },
        "spec": {"predictor": predictor},
    }
