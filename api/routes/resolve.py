"""``GET /v1/resolve/{ref}``: a catalog reference to what a pod mounts."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query

from api import catalog
from api.deps import DB, Config, Reader
from api.fleet import nodes_ready
from api.mounts import inference_service, resolve_answer
from api.routes import ERRORS
from modelcar import apimodels as wire
from modelcar.errors import InvalidReference, InvalidRequest
from modelcar.modelref import parse_model_ref

router = APIRouter(prefix="/v1", tags=["resolve"], responses=ERRORS)


@router.get(
    "/resolve/{ref}",
    response_model=wire.ResolveAnswer | dict[str, Any],
    summary="Resolve name@alias, name:version or name@sha256:… to a pinned image and mounts",
    description="With format=kserve the answer is a KServe InferenceService instead.",
)
def resolve(
    ref: Annotated[
        str,
        Path(
            max_length=200,
            pattern=wire.MODEL_REF_PATTERN,
            description="name@alias, name:version or name@sha256:…",
        ),
    ],
    db: DB,
    settings: Config,
    _: Reader,
    mode: Annotated[
        wire.MountMode | None,
        Query(description="Mount for pod_spec: the image (oci) or the node cache (hostpath)"),
    ] = None,
    format: Annotated[Literal["json", "kserve"], Query(description="Answer shape")] = "json",
    model_format: Annotated[
        str,
        Query(max_length=63, pattern=r"^[a-z0-9][a-z0-9._-]*$", description="KServe modelFormat"),
    ] = "huggingface",
) -> wire.ResolveAnswer | dict[str, Any]:
    try:
        parsed = parse_model_ref(ref)
    except InvalidReference as e:
        raise InvalidRequest(e.message, subject=e.subject, hint=e.hint) from None
    with db.reading() as s:
        version = catalog.find(s, parsed)
        ready = nodes_ready(s, version.digest, settings.stale_after)
        answer = resolve_answer(
            version, alias=parsed.alias, nodes=ready, cache_root=settings.cache_root, mode=mode
        )
    if format == "kserve":
        return inference_service(answer, model_format=model_format)
    return answer
