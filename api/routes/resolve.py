"""``GET /v1/resolve/{ref}``: a catalog reference to what a pod mounts."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from modelcar.api import catalog, fleet, trust
from modelcar.api.db.engine import Database
from modelcar.api.deps import DB, Config, Reader
from modelcar.api.fleet import fresh_since
from modelcar.api.mounts import VLLM_IMAGE, StreamEndpoint, inference_service, resolve_answer
from modelcar.api.routes import ERRORS
from modelcar.api.settings import Settings
from modelcar.contract import wire as wire
from modelcar.contract.modelref import ModelRef, parse_model_ref
from modelcar.errors import Conflict, InvalidReference, InvalidRequest, Missing

router = APIRouter(prefix="/v1", tags=["resolve"], responses=ERRORS)


def _lookup(
    db: Database,
    ref: ModelRef,
    settings: Settings,
    mode: wire.MountMode | None,
    require_signed: bool,
    modelpack: bool = False,
) -> wire.ResolveAnswer:
    signed_by = None
    with db.connection() as conn:
        target = catalog.find(conn, ref, ready_since=fresh_since(settings.stale_after))
        if modelpack:  # the same version's ModelPack artifact, and where it is ready
            other = catalog.modelpack_digest(conn, target.name, target.number)
            if other is None:
                raise Missing(
                    f"version {target.number} has no ModelPack form",
                    subject=str(ref),
                    hint="build it with --format both (or modelpack)",
                )
            nodes = fleet.ready_by_digest(conn, [other], settings.stale_after).get(other, [])
            target = replace(target, digest=other, nodes_ready=tuple(nodes))
        if require_signed:
            signed_by = trust.signed_by(conn, [target.digest])[target.digest]
    if require_signed and not signed_by:
        raise Conflict(
            f"version {target.number} is not signed by a trusted key",
            subject=str(ref),
            hint="sign it (modelcar sign --key … --api …) with a key in GET /v1/keys",
        )
    answer = resolve_answer(
        target,
        alias=ref.alias,
        nodes=list(target.nodes_ready),
        cache_root=settings.cache_root,
        mode=mode,
        stream=StreamEndpoint(settings.stream_port, settings.stream_secret),
    )
    answer.signed_by = signed_by
    if modelpack:
        answer.image_format = "modelpack"
    return answer


@router.get(
    "/resolve/{ref}",
    response_model=wire.ResolveAnswer | dict[str, Any],
    summary="Resolve name@alias, name:version or name@sha256:… to a pinned image and mounts",
    description="With format=kserve the answer is a KServe InferenceService instead.",
)
async def resolve(
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
        Query(
            description="How the pod reads the model: the image (oci), the node cache "
            "(hostpath), or streamed from its node's S3 endpoint by vLLM (stream)"
        ),
    ] = None,
    format: Annotated[
        Literal["json", "kserve", "modelpack"],
        Query(
            description="Answer shape; modelpack: the JSON answer for the version's "
            "ModelPack artifact instead of its modelcar"
        ),
    ] = "json",
    model_format: Annotated[
        str,
        Query(max_length=63, pattern=r"^[a-z0-9][a-z0-9._-]*$", description="KServe modelFormat"),
    ] = "huggingface",
    require_signed: Annotated[
        bool, Query(description="Refuse (409) a version no trusted key has signed")
    ] = False,
    vllm_image: Annotated[
        str,
        Query(
            max_length=255,
            pattern=r"^[a-z0-9][a-z0-9._/:@-]*$",
            description="format=kserve&mode=stream: the vLLM server image",
        ),
    ] = VLLM_IMAGE,
) -> Response:
    try:
        parsed = parse_model_ref(ref)
    except InvalidReference as e:
        raise InvalidRequest(e.message, subject=e.subject, hint=e.hint) from None
    lookup = partial(_lookup, db, parsed, settings, mode, require_signed, format == "modelpack")
    # SQLite is a local file: two indexed reads take less time than a trip to the
    # thread pool, so they run on the event loop. A server database goes to the pool.
    answer = lookup() if db.is_sqlite else await run_in_threadpool(lookup)
    if format == "kserve":
        return JSONResponse(
            inference_service(answer, model_format=model_format, vllm_image=vllm_image)
        )
    # Serialised once here; FastAPI would validate the model again on the way out.
    return Response(answer.model_dump_json(), media_type="application/json")
