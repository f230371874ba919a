"""Admission: ``model://NAME@ALIAS`` in an object becomes the pinned image, at admission.

The mutating review rewrites, in an InferenceService (``serving.kserve.io/v1beta1``),
each ``storageUri`` of the predictor's model and framework components and each
``storageUris[].uri`` of the predictor; in a Pod, and in the pod template of a
Deployment, StatefulSet, DaemonSet, ReplicaSet or Job, each image volume's
``reference``. ``oci`` mode (the default) pins ``oci://REPO@sha256:…`` and prefers nodes
where the node cache holds it; the annotation ``modelcar.dev/mode: hostpath`` mounts
the node cache's copy instead and requires such a node, as ``?format=kserve`` does.
An object with nothing to resolve is allowed unchanged, so a second pass is a no-op.

The validating review refuses images not pinned by digest and, by the API's settings,
digests that are no registered version or that no trusted key signed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelcar.api.mounts import MOUNT_PATH, VOLUME
from modelcar.contract import wire
from modelcar.errors import ModelcarError

SCHEME = "model://"
MODE_ANNOTATION = "modelcar.dev/mode"
ANNOTATIONS = ("model", "version", "alias", "digest")
POD_TEMPLATES = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
Resolve = Callable[[str, wire.MountMode], wire.ResolveAnswer]


class _Kind(BaseModel):
    group: str = ""
    version: str = ""
    kind: str = ""


class AdmissionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    uid: str = Field(min_length=1, max_length=128)
    kind: _Kind
    namespace: str | None = Field(None, max_length=253)
    name: str | None = Field(None, max_length=253)
    operation: Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
    object: dict[str, Any] | None = None
    oldObject: dict[str, Any] | None = None
    dryRun: bool = False


class AdmissionReview(BaseModel):
    """What the apiserver sends (``admission.k8s.io/v1``)."""

    model_config = ConfigDict(extra="allow")
    apiVersion: Literal["admission.k8s.io/v1"]
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


def answer(uid: str, *, allowed: bool = True, patch: list[dict[str, Any]] | None = None,
           message: str | None = None, code: int = 403) -> dict[str, Any]:  # fmt: skip
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": code, "message": message or "denied"}
    if patch:
        import base64
        import json

        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": response}  # fmt: skip


@dataclass
class Pinned:
    """What one object pins: each resolved answer, by the text it replaced."""

    answers: list[wire.ResolveAnswer] = field(default_factory=list)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _refs(spec: dict[str, Any], kind: str) -> Iterator[tuple[dict[str, Any], str]]:
    """(holder, key) for every place a model or image reference may be, in ``spec``."""
    if kind == "InferenceService":
        predictor = spec.get("predictor")
        if not isinstance(predictor, dict):
            return
        for value in predictor.values():
            if isinstance(value, dict) and isinstance(value.get("storageUri"), str):
                yield value, "storageUri"
        for item in predictor.get("storageUris") or []:
            if isinstance(item, dict) and isinstance(item.get("uri"), str):
                yield item, "uri"
        return
    for volume in spec.get("volumes") or []:
        image = volume.get("image") if isinstance(volume, dict) else None
        if isinstance(image, dict) and isinstance(image.get("reference"), str):
            yield image, "reference"


def _pod_spec_of(obj: dict[str, Any], kind: str) -> tuple[dict[str, Any] | None, str]:
    """The part of ``obj`` that holds references, and its JSON pointer."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return None, ""
    if kind in ("InferenceService", "Pod"):
        return spec, "/spec"
    if kind in POD_TEMPLATES:
        template = spec.get("template")
        inner = template.get("spec") if isinstance(template, dict) else None
        return (inner, "/spec/template/spec") if isinstance(inner, dict) else (None, "")
    return None, ""


def references(obj: dict[str, Any], kind: str) -> list[str]:
    """Every model or image reference the object holds."""
    spec, _ = _pod_spec_of(obj, kind)
    return [holder[key] for holder, key in _refs(spec, kind)] if spec else []


def _prefer(affinity: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new``'s node affinity added to ``affinity``: required terms AND-ed, preferred
    ones appended."""
    out = copy.deepcopy(affinity) if isinstance(affinity, dict) else {}
    node = out.setdefault("nodeAffinity", {})
    rule = new["nodeAffinity"]
    if "preferredDuringSchedulingIgnoredDuringExecution" in rule:
        node.setdefault("preferredDuringSchedulingIgnoredDuringExecution", []).extend(
            rule["preferredDuringSchedulingIgnoredDuringExecution"]
        )
    else:
        want = rule["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        req = node.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
        terms = req.setdefault("nodeSelectorTerms", [])
        if not terms:
            terms.append({"matchExpressions": []})
        for term in terms:  # terms are OR-ed: the model's node label must hold in each
            term.setdefault("matchExpressions", []).extend(want["matchExpressions"])
    return out


def mutate(obj: dict[str, Any], kind: str, resolve: Resolve) -> tuple[list[dict[str, Any]],
                                                                      Pinned]:  # fmt: skip
    """The JSONPatch that pins every ``model://`` reference in ``obj``, and what it pins.
    Raises ModelcarError (the caller denies) for a reference that does not resolve."""
    spec, pointer = _pod_spec_of(obj, kind)
    pinned = Pinned()
    if spec is None:
        return [], pinned
    metadata = _dict(obj.get("metadata"))
    notes = _dict(metadata.get("annotations"))
    mode: wire.MountMode = "hostpath" if notes.get(MODE_ANNOTATION) == "hostpath" else "oci"
    new = copy.deepcopy(spec)
    for holder, key in list(_refs(new, kind)):
        text = holder[key]
        if not text.startswith(SCHEME):
            continue
        got = resolve(text.removeprefix(SCHEME), mode)
        pinned.answers.append(got)
        if kind != "InferenceService":  # an image volume: the pinned image
            holder[key] = got.image
            continue
        if mode == "oci":
            if got.storage_uri is None:
                raise ModelcarError("the version's image is in an oci: layout, which pods cannot "
                                    "pull", subject=text, hint=f"annotate {MODE_ANNOTATION}: "
                                    "hostpath to mount the node cache's copy")  # fmt: skip
            holder[key] = got.storage_uri
            new["predictor"]["affinity"] = _prefer(new["predictor"].get("affinity"),
                                                   got.pod_spec["affinity"])  # fmt: skip
        else:
            mounts = got.pod_spec["volumeMounts"]
            if key == "uri":  # a storageUris entry: mounted where it said
                mounts = [dict(mounts[0], mountPath=holder.get("mountPath") or MOUNT_PATH,
                               name=f"{VOLUME}-{len(pinned.answers)}")]  # fmt: skip
                new["predictor"]["storageUris"] = [
                    i for i in new["predictor"]["storageUris"] if i is not holder
                ] or None
                volumes = [dict(got.pod_spec["volumes"][0], name=mounts[0]["name"])]
                component = new["predictor"].setdefault("model", {})
            else:
                del holder[key]
                volumes, component = got.pod_spec["volumes"], holder
            component.setdefault("volumeMounts", []).extend(mounts)
            if "args" not in component and key == "storageUri":
                component["args"] = [f"--model_dir={MOUNT_PATH}"]
            new["predictor"].setdefault("volumes", []).extend(volumes)
            new["predictor"]["affinity"] = _prefer(new["predictor"].get("affinity"),
                                                   got.pod_spec["affinity"])  # fmt: skip
    if not pinned.answers:
        return [], pinned
    if kind == "InferenceService" and new["predictor"].get("storageUris", 1) is None:
        del new["predictor"]["storageUris"]
    if kind != "InferenceService" and mode == "oci":
        for got in pinned.answers:
            new["affinity"] = _prefer(new.get("affinity"), got.pod_spec["affinity"])
    first = pinned.answers[0]
    values = {"model": first.name, "version": str(first.version), "alias": first.alias or "",
              "digest": first.digest}  # fmt: skip
    patch: list[dict[str, Any]] = [{"op": "replace", "path": pointer, "value": new}]
    if "annotations" not in metadata:
        patch.append({"op": "add", "path": "/metadata/annotations",
                      "value": {f"modelcar.dev/{k}": values[k] for k in ANNOTATIONS}})  # fmt: skip
    else:
        for k in ANNOTATIONS:
            patch.append({"op": "add", "path": f"/metadata/annotations/modelcar.dev~1{k}",
                          "value": values[k]})  # fmt: skip
    if "metadata" not in obj:
        patch.insert(1, {"op": "add", "path": "/metadata", "value": {}})
    return patch, pinned


def _images(obj: dict[str, Any], kind: str) -> list[str]:
    """The image references (an InferenceService's ``oci://`` and ``model://`` URIs;
    every image volume of a pod)."""
    refs = references(obj, kind)
    if kind == "InferenceService":
        return [r for r in refs if r.startswith(("oci://", SCHEME))]
    return refs


def unpinned(obj: dict[str, Any], kind: str) -> list[str]:
    """The image references that are not pinned by digest (``model://`` ones included)."""
    return [r for r in _images(obj, kind) if r.startswith(SCHEME) or "@sha256:" not in r]


def digests(obj: dict[str, Any], kind: str) -> list[str]:
    """The digests the object's image references are pinned to."""
    return [r.rsplit("@", 1)[1] for r in _images(obj, kind)
            if not r.startswith(SCHEME) and "@sha256:" in r]  # fmt: skip
