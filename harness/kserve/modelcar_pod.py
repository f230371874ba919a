"""The pod KServe's webhook makes for ``storageUri: oci://…`` (its modelcar path).

Reproduced from kserve/kserve at commit 0217bdabaaa250485b336805da1aed04960dc758,
``pkg/utils/storage.go``: ``ConfigureModelcarToContainer``, ``CreateModelcarContainer``
and ``CreateModelcarInitContainer``, with the constants of ``pkg/constants`` and the
default ``uidModelcar`` (1010) of KServe's ``inferenceservice-config``. The strings are
KServe's, ``$$`` escapes included: kubelet (here :func:`harness.pods.expand`) turns
``$$$$`` into the ``$$`` the shell reads as its PID.
"""

from __future__ import annotations

import copy
from typing import Any

KSERVE_COMMIT = "0217bdabaaa250485b336805da1aed04960dc758"
MODEL_PATH = "/mnt/models"  # constants.DefaultModelLocalMountPath
VOLUME = "kserve-provision-location"  # constants.StorageInitializerVolumeName
UID_MODELCAR = 1010  # storageInitializer.uidModelcar in KServe's default config
CPU, MEMORY = "10m", "15Mi"  # constants.CpuModelcarDefault, MemoryModelcarDefault


def _resources() -> dict[str, Any]:
    both = {"cpu": CPU, "memory": MEMORY}
    return {"limits": dict(both), "requests": dict(both)}


def modelcar_container(image: str, uid: int | None) -> dict[str, Any]:
    """CreateModelcarContainer: the sidecar that links its /models into the volume."""
    container: dict[str, Any] = {
        "name": "modelcar",
        "image": image,
        "volumeMounts": [{"name": VOLUME, "mountPath": "/mnt", "readOnly": False}],
        "args": ["sh", "-c", f"ln -sf /proc/$$$$/root/models {MODEL_PATH} && sleep infinity"],
        "resources": _resources(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if uid is not None:
        container["securityContext"] = {"runAsUser": uid}
    return container


def modelcar_init_container(image: str) -> dict[str, Any]:
    """CreateModelcarInitContainer: pulls the image before the runtime starts and checks
    that /models is there and not empty."""
    check = (
        f"echo 'Pre-fetching modelcar {image}: ' && [ -d /models ] && "
        "[ \"$$(ls -A /models)\" ] && echo 'OK ... Prefetched and valid (/models exists)' || "
        "(echo 'NOK ... Prefetched but modelcar is invalid (/models does not exist or is "
        "empty)' && exit 1)"
    )
    return {
        "name": "modelcar-init",
        "image": image,
        "args": ["sh", "-c", check],
        "resources": _resources(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def configure_modelcar(
    pod: dict[str, Any], storage_uri: str, target: str, uid: int | None = UID_MODELCAR
) -> dict[str, Any]:
    """ConfigureModelcarToContainer on a copy of ``pod``: the runtime container ``target``
    gets MODEL_INIT_MODE=async, the shared volume at /mnt and (when uidModelcar is set)
    a securityContext replaced by ``runAsUser: uid``; the sidecar and the init container
    are added; the pod shares its process namespace."""
    pod = copy.deepcopy(pod)
    spec = pod["spec"]
    runtime = next(c for c in spec["containers"] if c["name"] == target)
    env = [e for e in runtime.get("env", []) if e["name"] != "MODEL_INIT_MODE"]
    runtime["env"] = [*env, {"name": "MODEL_INIT_MODE", "value": "async"}]
    if not any(v["name"] == VOLUME for v in spec.setdefault("volumes", [])):
        spec["volumes"].append({"name": VOLUME, "emptyDir": {}})
    mounts = runtime.setdefault("volumeMounts", [])
    if not any(m["name"] == VOLUME for m in mounts):
        mounts.append({"name": VOLUME, "mountPath": "/mnt", "readOnly": False})
    if uid is not None:
        runtime["securityContext"] = {"runAsUser": uid}
    if not any(c["name"] == "modelcar" for c in spec["containers"]):
        image = storage_uri.removeprefix("oci://")
        spec["containers"].append(modelcar_container(image, uid))
        spec.setdefault("initContainers", []).append(modelcar_init_container(image))
    spec["shareProcessNamespace"] = True
    return pod
