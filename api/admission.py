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

from modelcar.api.mounts import VOLUME
from modelcar.contract import wire
from modelcar.contract.nodecache import MOUNT_PATH
from modelcar.errors import Malformed, ModelcarError

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


def answer(
    uid: str,
    *,
    allowed: bool = True,
    patch: list[dict[str, Any]] | None = None,
    message: str | None = None,
    code: int = 403,
) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": code, "message": message or "denied"}
    if patch:
        import base64
        import json

        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


@dataclass
class Pinned:
    """What one object pins: each resolved answer, by the text it replaced."""

    answers: list[wire.ResolveAnswer] = field(default_factory=list)


#: References to resolve in one object: more is no workload, and each costs a lookup.
MAX_REFERENCES = 256
#: The InferenceService components that hold storage fields (KServe's CRD: predictor,
#: transformer, explainer, and each canary's predictor).
COMPONENTS = ("predictor", "transformer", "explainer")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list_in(holder: dict[str, Any], key: str, where: str) -> list[Any]:
    """``holder[key]`` as a list to extend (made if absent); Malformed if it is no list."""
    value = holder.setdefault(key, [])
    if value is None:
        value = holder[key] = []
    if not isinstance(value, list):
        raise Malformed(f"{where}.{key} is not a list", hint="fix the object's spec")
    return value


def _components(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(JSON-ish path, component) for every InferenceService component."""
    for name in COMPONENTS:
        if isinstance(spec.get(name), dict):
            yield f"spec.{name}", spec[name]
    canary = spec.get("canary")
    for i, item in enumerate(canary if isinstance(canary, list) else []):
        if isinstance(item, dict) and isinstance(item.get("predictor"), dict):
            yield f"spec.canary[{i}].predictor", item["predictor"]


def _refs(spec: dict[str, Any], kind: str) -> Iterator[tuple[dict[str, Any], dict[str, Any], str]]:
    """(component, holder, key) for every place a model or image reference may be:
    every ``storageUri`` of a component's framework fields and each ``storageUris[].uri``
    (all of KServe's storage fields); each image volume's ``reference`` of a pod."""
    if kind == "InferenceService":
        for _, component in _components(spec):
            for value in component.values():
                if isinstance(value, dict) and isinstance(value.get("storageUri"), str):
                    yield component, value, "storageUri"
            uris = component.get("storageUris")
            for item in uris if isinstance(uris, list) else []:
                if isinstance(item, dict) and isinstance(item.get("uri"), str):
                    yield component, item, "uri"
        return
    volumes = spec.get("volumes")
    for volume in volumes if isinstance(volumes, list) else []:
        image = volume.get("image") if isinstance(volume, dict) else None
        if isinstance(image, dict) and isinstance(image.get("reference"), str):
            yield spec, image, "reference"


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
    return [holder[key] for _, holder, key in _refs(spec, kind)] if spec else []


def _prefer(affinity: Any, rules: list[dict[str, Any]]) -> dict[str, Any]:
    """``rules``' node affinities added to ``affinity``, in one copy: required terms
    AND-ed into each of the object's terms, preferred ones appended."""
    out = copy.deepcopy(affinity) if isinstance(affinity, dict) else {}
    if not isinstance(out.get("nodeAffinity"), dict):
        out["nodeAffinity"] = {}
    node = out["nodeAffinity"]
    for rule in (r["nodeAffinity"] for r in rules):
        if "preferredDuringSchedulingIgnoredDuringExecution" in rule:
            _list_in(node, "preferredDuringSchedulingIgnoredDuringExecution", "affinity").extend(
                rule["preferredDuringSchedulingIgnoredDuringExecution"]
            )
            continue
        want = rule["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        req = node.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
        if not isinstance(req, dict):
            raise Malformed("affinity.nodeAffinity.requiredDuringScheduling… is not an object")
        terms = _list_in(req, "nodeSelectorTerms", "affinity")
        if not terms:
            terms.append({"matchExpressions": []})
        for term in terms:  # terms are OR-ed: the model's node label must hold in each
            if not isinstance(term, dict):
                raise Malformed("a nodeSelectorTerm is not an object")
            _list_in(term, "matchExpressions", "nodeSelectorTerm").extend(want["matchExpressions"])
    return out


def _annotations_patch(
    obj: dict[str, Any], base: str, values: dict[str, str]
) -> list[dict[str, Any]]:
    """The patch that sets our annotations on ``obj`` (at ``base``), whatever its
    ``metadata`` and annotations are (absent, null, a list): a patch that always applies.
    ``add`` replaces an existing member (RFC 6902): a non-object becomes an object."""
    ours = {f"modelcar.dev/{k}": values[k] for k in ANNOTATIONS}
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return [{"op": "add", "path": f"{base}/metadata", "value": {"annotations": ours}}]
    if not isinstance(metadata.get("annotations"), dict):
        return [{"op": "add", "path": f"{base}/metadata/annotations", "value": ours}]
    return [
        {"op": "add", "path": f"{base}/metadata/annotations/{k.replace('/', '~1')}", "value": v}
        for k, v in ours.items()
    ]


def mutate(obj: dict[str, Any], kind: str, resolve: Resolve) -> tuple[list[dict[str, Any]], Pinned]:
    """The JSONPatch that pins every ``model://`` reference in ``obj``, and what it pins.
    Raises ModelcarError (the caller denies) for a reference that does not resolve, an
    object over MAX_REFERENCES references, or a part of the wrong type. Linear in the
    object: each text is resolved once, each component's affinity copied once with one
    term per distinct digest."""
    spec, pointer = _pod_spec_of(obj, kind)
    pinned = Pinned()
    if spec is None:
        return [], pinned
    notes = _dict(_dict(obj.get("metadata")).get("annotations"))
    mode: wire.MountMode = "hostpath" if notes.get(MODE_ANNOTATION) == "hostpath" else "oci"
    new = copy.deepcopy(spec)
    todo = [(c, h, k) for c, h, k in _refs(new, kind) if h[k].startswith(SCHEME)]
    if len(todo) > MAX_REFERENCES:
        raise ModelcarError(
            f"{len(todo)} model:// references in one object, over the limit of {MAX_REFERENCES}",
            hint="split the workload",
        )
    answers: dict[str, wire.ResolveAnswer] = {}
    rules: dict[int, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = {}
    dropped: dict[int, set[int]] = {}  # component -> storageUris entries mounted instead
    for component, holder, key in todo:
        text = holder[key]
        if text not in answers:
            answers[text] = resolve(text.removeprefix(SCHEME), mode)
        got = answers[text]
        pinned.answers.append(got)
        if got.storage_uri is None and (kind != "InferenceService" or mode == "oci"):
            raise ModelcarError(
                "the version's image is in an oci: layout, which pods cannot pull",
                subject=text,
                hint=f"annotate {MODE_ANNOTATION}: hostpath to mount the node cache's copy",
            )
        if kind != "InferenceService":  # an image volume: the pinned image
            holder[key] = got.image
        elif mode == "oci":
            holder[key] = got.storage_uri
        else:
            _mount(component, holder, key, got, len(pinned.answers), dropped)
        if kind == "InferenceService" or mode == "oci":
            rules.setdefault(id(component), (component, {}))[1].setdefault(
                got.digest, got.pod_spec["affinity"]
            )
    if not pinned.answers:
        return [], pinned
    for component, by_digest in rules.values():
        component["affinity"] = _prefer(component.get("affinity"), list(by_digest.values()))
    for _, component in _components(new) if kind == "InferenceService" else ():
        if id(component) in dropped:
            left = [i for i in component["storageUris"] if id(i) not in dropped[id(component)]]
            if left:
                component["storageUris"] = left
            else:
                del component["storageUris"]
    first = pinned.answers[0]
    values = {
        "model": first.name,
        "version": str(first.version),
        "alias": first.alias or "",
        "digest": first.digest,
    }
    patch = [{"op": "replace", "path": pointer, "value": new}, *_annotations_patch(obj, "", values)]
    if kind in POD_TEMPLATES:  # its pods carry them too: their deletion is then seen
        patch += _annotations_patch(obj["spec"]["template"], "/spec/template", values)
    return patch, pinned


def _mount(
    component: dict[str, Any],
    holder: dict[str, Any],
    key: str,
    got: wire.ResolveAnswer,
    n: int,
    dropped: dict[int, set[int]],
) -> None:
    """hostpath mode: the node cache's copy mounted in place of a storage field."""
    mounts = got.pod_spec["volumeMounts"]
    if key == "uri":  # a storageUris entry: mounted where it said, in the model container
        mounts = [
            dict(mounts[0], mountPath=holder.get("mountPath") or MOUNT_PATH, name=f"{VOLUME}-{n}")
        ]
        dropped.setdefault(id(component), set()).add(id(holder))
        volumes = [dict(got.pod_spec["volumes"][0], name=mounts[0]["name"])]
        container = component.setdefault("model", {})
        if not isinstance(container, dict):
            raise Malformed("the component's model is not an object")
    else:
        del holder[key]
        volumes, container = got.pod_spec["volumes"], holder
    _list_in(container, "volumeMounts", "the model container").extend(mounts)
    if "args" not in container and key == "storageUri":
        container["args"] = [f"--model_dir={MOUNT_PATH}"]
    _list_in(component, "volumes", "the component").extend(volumes)


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
    return [
        r.rsplit("@", 1)[1]
        for r in _images(obj, kind)
        if not r.startswith(SCHEME) and "@sha256:" in r
    ]
