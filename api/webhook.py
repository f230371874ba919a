"""The admission webhooks, on a port of their own (TLS): ``POST /mutate`` pins
``model://`` references (see ``admission.py``), ``POST /validate`` refuses unpinned or
unknown images. Both record who runs what (``usage.py``) unless the review is a dry
run, and a DELETE review forgets the object. Nothing else is served on this port.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from modelcar.api import admission, catalog, trust, usage
from modelcar.api.app import error_response, install_error_handlers
from modelcar.api.db.engine import Database
from modelcar.api.mounts import resolve_answer
from modelcar.api.settings import Settings
from modelcar.contract import wire
from modelcar.contract.modelref import parse_model_ref
from modelcar.errors import ModelcarError

KINDS = {
    ("serving.kserve.io", "InferenceService"),
    ("", "Pod"),
    ("apps", "Deployment"),
    ("apps", "StatefulSet"),
    ("apps", "DaemonSet"),
    ("apps", "ReplicaSet"),
    ("batch", "Job"),
}


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """The schema with its ``$defs`` references written in place (for the OpenAPI doc)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


_SCHEMA = admission.AdmissionReview.model_json_schema()
_BODY = {"required": True, "content": {"application/json": {
    "schema": _inline(_SCHEMA, _SCHEMA.get("$defs", {}))}}}  # fmt: skip


def _name(req: admission.AdmissionRequest) -> str:
    obj = req.object or req.oldObject or {}
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    return str(req.name or meta.get("name") or meta.get("generateName") or "")


class Webhooks:
    def __init__(self, settings: Settings, db: Database):
        self.settings, self.db = settings, db

    def resolve(self, text: str, mode: wire.MountMode) -> wire.ResolveAnswer:
        """The version a reference names (no ready-node lookup: the patch needs none)."""
        ref = parse_model_ref(text)
        with self.db.connection() as conn:
            target = catalog.find(conn, ref)
        return resolve_answer(target, alias=ref.alias, nodes=[],
                              cache_root=self.settings.cache_root, mode=mode)  # fmt: skip

    def _record(self, req: admission.AdmissionRequest, digests: list[str]) -> None:
        if req.dryRun or not digests:
            return
        kind, namespace, name = req.kind.kind, req.namespace or "", _name(req)
        uid = str((req.object or {}).get("metadata", {}).get("uid") or "")
        with self.db.connection() as conn:  # a re-admission of the same object writes nothing
            if usage.unchanged(conn, kind, namespace, name, uid, digests):
                return
        with self.db.writing() as s:
            usage.record(s, kind, namespace, name, uid, req.operation, digests)

    def review(self, review: admission.AdmissionReview, validating: bool) -> dict[str, Any]:
        req = review.request
        kind = req.kind.kind
        if (req.kind.group, kind) not in KINDS:
            return admission.answer(req.uid)  # not ours to judge
        if req.operation == "DELETE":
            if not req.dryRun:
                with self.db.writing() as s:
                    usage.forget(s, kind, req.namespace or "", _name(req))
            return admission.answer(req.uid)
        obj = req.object
        if req.operation not in ("CREATE", "UPDATE") or not isinstance(obj, dict):
            return admission.answer(req.uid)
        if validating:
            return self._validate(req, obj, kind)
        try:
            patch, pinned = admission.mutate(obj, kind, self.resolve)
        except ModelcarError as e:
            return admission.answer(req.uid, allowed=False, message=e.one_line())
        self._record(req, [a.digest for a in pinned.answers])
        return admission.answer(req.uid, patch=patch)

    def _validate(
        self, req: admission.AdmissionRequest, obj: dict[str, Any], kind: str
    ) -> dict[str, Any]:
        bad = admission.unpinned(obj, kind)
        if bad:
            why = (
                f"image not pinned by digest: {bad[0]} (write model://NAME@ALIAS or REPO@sha256:…)"
            )
            return admission.answer(req.uid, allowed=False, message=why)
        digests = admission.digests(obj, kind)
        with self.db.reading() as s:
            known = usage.registered(s, digests)
            signed = trust.signed_by(s, digests) if self.settings.webhook_require_signed else {}
        unknown = [d for d in digests if d not in known]
        if self.settings.webhook_require_registered and unknown:
            why = f"digest is no registered model version: {unknown[0]}"
            return admission.answer(req.uid, allowed=False, message=why)
        unsigned = [d for d in digests if not signed.get(d)]
        if self.settings.webhook_require_signed and unsigned:
            why = f"digest is not signed by a trusted key: {unsigned[0]}"
            return admission.answer(req.uid, allowed=False, message=why)
        self._record(req, digests)
        return admission.answer(req.uid)


def serve_webhooks(settings: Settings, db: Database, **common: Any) -> Any:
    """Start the webhook server (TLS, its own port) in a thread; the uvicorn Server."""
    import ssl
    import threading

    import uvicorn

    extra: dict[str, Any] = {}
    if settings.webhook_client_ca:
        extra = {"ssl_ca_certs": settings.webhook_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    config = uvicorn.Config(
        create_webhook_app(settings, db), host=settings.host, port=settings.webhook_port or 0,
        ssl_certfile=settings.webhook_cert, ssl_keyfile=settings.webhook_key, **extra, **common,
    )  # fmt: skip
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, name="webhooks", daemon=True).start()
    return server


def create_webhook_app(settings: Settings, db: Database) -> FastAPI:
    app = FastAPI(title="modelcar admission webhooks", version="1", docs_url=None,
                  redoc_url=None, openapi_url=None)  # fmt: skip
    install_error_handlers(app)
    hooks = Webhooks(settings, db)

    async def parse(request: Request) -> admission.AdmissionReview | JSONResponse:
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            return error_response(413, "too_large", "review body over the size limit")
        try:
            return admission.AdmissionReview.model_validate_json(body)
        except ValidationError as e:
            where = ".".join(str(p) for p in e.errors()[0]["loc"]) or "body"
            return error_response(400, "invalid",
                                  f"not an admission.k8s.io/v1 AdmissionReview ({where}: "
                                  f"{e.errors()[0]['msg']})")  # fmt: skip

    from starlette.concurrency import run_in_threadpool

    async def answer(request: Request, validating: bool) -> Any:
        parsed = await parse(request)
        if isinstance(parsed, JSONResponse):
            return parsed
        if db.is_sqlite:  # a local file: faster than a trip to the thread pool
            return JSONResponse(hooks.review(parsed, validating))
        return JSONResponse(await run_in_threadpool(hooks.review, parsed, validating))

    async def mutate(request: Request) -> Any:
        """Pin every model:// reference of the object (a JSONPatch), or deny."""
        return await answer(request, False)

    async def validate(request: Request) -> Any:
        """Refuse images not pinned by digest, or no registered (or signed) version."""
        return await answer(request, True)

    responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "An AdmissionReview answer"},
        400: {"description": "Not an AdmissionReview"},
        413: {"description": "Too large"},
    }
    for path, handler in (("/mutate", mutate), ("/validate", validate)):
        app.add_api_route(path, handler, methods=["POST"], responses=responses,
                          openapi_extra={"requestBody": _BODY})  # fmt: skip
    return app
