"""The admission webhooks, on a port of their own (TLS): ``POST /mutate`` pins
``model://`` references (see ``admission.py``), ``POST /validate`` refuses unpinned or
unknown images, ``POST /record`` (a validating webhook that never refuses) records.
They record who runs what (``usage.py``) unless the review is a dry run, and a DELETE
review forgets the object. Nothing else is served on this port.

A large review (over INLINE_BYTES), and every review on PostgreSQL, runs on threads of
its own, so one large object never holds the event loop (and the small reviews behind
it); a body is refused on its Content-Length, read only up to the size limit and within
BODY_TIMEOUT, and a connection that has not sent its request head within
``httpserver.HEADER_TIMEOUT`` is closed.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from modelcar.api import admission, catalog, trust, usage
from modelcar.api.app import error_response, install_error_handlers
from modelcar.api.db.engine import Database
from modelcar.api.httpserver import HeaderTimeoutH11
from modelcar.api.mounts import resolve_answer
from modelcar.api.settings import Settings
from modelcar.contract import wire
from modelcar.contract.modelref import parse_model_ref
from modelcar.errors import ModelcarError
from modelcar.oci.manifest import error_at

log = logging.getLogger("modelcar.api")

#: Seconds a client has to send a review's body after its head (the apiserver gives up
#: on a webhook after at most 30 s; its reviews arrive at once).
BODY_TIMEOUT = 10.0
#: Threads that run large reviews (and every review on PostgreSQL), off the event loop:
#: few, so that concurrent reviews do not fight over the interpreter lock.
REVIEW_THREADS = 2
#: A review body up to this size is parsed and answered on the event loop, on SQLite:
#: with linear work and at most 256 references that is about a millisecond, less than
#: the hop to a thread costs at 20 concurrent (p99 31 ms on the loop, 40 ms in threads).
INLINE_BYTES = 64 << 10

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
_BODY = {
    "required": True,
    "content": {"application/json": {"schema": _inline(_SCHEMA, _SCHEMA.get("$defs", {}))}},
}


def _meta(req: admission.AdmissionRequest) -> dict[str, Any]:
    obj = req.object if isinstance(req.object, dict) else req.oldObject or {}
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


def _name(req: admission.AdmissionRequest) -> str:
    meta = _meta(req)
    return str(req.name or meta.get("name") or meta.get("generateName") or "")[:253]


def _uid(req: admission.AdmissionRequest) -> str:
    """The object's uid: the apiserver sets it after the mutating webhooks, so a
    CREATE has one in validating reviews only."""
    return str(_meta(req).get("uid") or "")[:128]


class Webhooks:
    def __init__(self, settings: Settings, db: Database):
        self.settings, self.db = settings, db

    def resolve(self, text: str, mode: wire.MountMode) -> wire.ResolveAnswer:
        """The version a reference names (no ready-node lookup: the patch needs none)."""
        ref = parse_model_ref(text)
        with self.db.connection() as conn:
            target = catalog.find(conn, ref)
        return resolve_answer(
            target, alias=ref.alias, nodes=[], cache_root=self.settings.cache_root, mode=mode
        )

    def _record(self, req: admission.AdmissionRequest, digests: list[str]) -> None:
        if req.dryRun:
            return
        kind, namespace, name, uid = req.kind.kind, req.namespace or "", _name(req), _uid(req)
        if not digests:  # an UPDATE that dropped its references: nothing pinned any more
            if req.operation == "UPDATE":
                with self.db.writing() as s:
                    usage.forget(s, kind, namespace, name, uid)
            return
        with self.db.connection() as conn:  # a re-admission of the same object writes nothing
            if usage.unchanged(conn, kind, namespace, name, uid, digests):
                return
        generated = str(_meta(req).get("generateName") or "")[:253]
        with self.db.writing() as s:
            if uid and generated and generated != name:  # /mutate saw only generateName
                usage.forget_provisional(s, kind, namespace, generated)
            usage.record(s, kind, namespace, name, uid, req.operation, digests)

    def review(self, review: admission.AdmissionReview, path: str) -> dict[str, Any]:
        """One review at ``path`` (mutate, validate or record); never raises: what the
        object's shape breaks ends in a denial naming it, not a 500."""
        req = review.request
        try:
            return self._review(req, path)
        except ModelcarError as e:
            return admission.answer(req.uid, allowed=False, message=e.one_line())
        except (TypeError, AttributeError, KeyError, ValueError, RecursionError) as e:
            log.warning("admission review %s: %s: %s", req.uid, type(e).__name__, e)
            return admission.answer(
                req.uid,
                allowed=path == "record",
                message=f"the object cannot be read ({type(e).__name__}); "
                "check its spec against the kind's schema",
            )

    def _review(self, req: admission.AdmissionRequest, path: str) -> dict[str, Any]:
        kind = req.kind.kind
        if (req.kind.group, kind) not in KINDS:
            return admission.answer(req.uid)  # not ours to judge
        if req.operation == "DELETE":
            if not req.dryRun:
                with self.db.writing() as s:
                    usage.forget(s, kind, req.namespace or "", _name(req), _uid(req))
            return admission.answer(req.uid)
        obj = req.object
        if req.operation not in ("CREATE", "UPDATE") or not isinstance(obj, dict):
            return admission.answer(req.uid)
        if path == "validate":
            return self._validate(req, obj, kind)
        if path == "record":  # never refuses: records what the object pins
            self._record(req, admission.digests(obj, kind))
            return admission.answer(req.uid)
        patch, pinned = admission.mutate(obj, kind, self.resolve)
        if pinned.answers:
            self._record(req, [a.digest for a in pinned.answers])
        return admission.answer(req.uid, patch=patch)

    def _deny(self, req: admission.AdmissionRequest, kind: str, why: str) -> dict[str, Any]:
        if req.operation == "CREATE" and not req.dryRun:  # it will not exist
            names = {_name(req), str(_meta(req).get("generateName") or "")[:253]} - {""}
            with self.db.writing() as s:
                for name in names:
                    usage.forget_provisional(s, kind, req.namespace or "", name)
        return admission.answer(req.uid, allowed=False, message=why)

    def _validate(
        self, req: admission.AdmissionRequest, obj: dict[str, Any], kind: str
    ) -> dict[str, Any]:
        bad = admission.unpinned(obj, kind)
        if bad:
            why = (
                f"image not pinned by digest: {bad[0]} (write model://NAME@ALIAS or REPO@sha256:…)"
            )
            return self._deny(req, kind, why)
        digests = admission.digests(obj, kind)
        with self.db.reading() as s:
            known = usage.registered(s, digests)
            signed = trust.signed_by(s, digests) if self.settings.webhook_require_signed else {}
        unknown = [d for d in digests if d not in known]
        if self.settings.webhook_require_registered and unknown:
            why = f"digest is no registered model version: {unknown[0]}"
            return self._deny(req, kind, why)
        unsigned = [d for d in digests if not signed.get(d)]
        if self.settings.webhook_require_signed and unsigned:
            why = f"digest is not signed by a trusted key: {unsigned[0]}"
            return self._deny(req, kind, why)
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
        create_webhook_app(settings, db),
        host=settings.host,
        port=settings.webhook_port or 0,
        ssl_certfile=settings.webhook_cert,
        ssl_keyfile=settings.webhook_key,
        **extra,
        **common,
        http=HeaderTimeoutH11,
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, name="webhooks", daemon=True).start()
    return server


async def read_capped(request: Request, cap: int) -> bytes | None:
    """The body, or None when it is over ``cap`` bytes (by Content-Length, or once the
    bytes read pass it: nothing past the cap is kept). TimeoutError after BODY_TIMEOUT."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > cap):
        return None
    body = bytearray()

    async def read() -> bool:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > cap:
                return False
        return True

    if not await asyncio.wait_for(read(), BODY_TIMEOUT):
        return None
    return bytes(body)


def create_webhook_app(settings: Settings, db: Database) -> FastAPI:
    app = FastAPI(
        title="modelcar admission webhooks",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install_error_handlers(app)
    hooks = Webhooks(settings, db)
    reviewers = ThreadPoolExecutor(max_workers=REVIEW_THREADS, thread_name_prefix="review")

    def respond(body: bytes, path: str) -> JSONResponse:
        try:
            parsed = admission.AdmissionReview.model_validate_json(body)
        except ValidationError as e:
            where, msg = error_at(e)
            return error_response(
                400,
                "invalid",
                f"not an admission.k8s.io/v1 AdmissionReview ({where or 'body'}: {msg})",
            )
        return JSONResponse(hooks.review(parsed, path))

    async def answer(request: Request, path: str) -> Any:
        try:
            body = await read_capped(request, settings.max_body_bytes)
        except TimeoutError:
            return error_response(408, "timeout", f"review body not sent within {BODY_TIMEOUT}s")
        if body is None:
            return error_response(413, "too_large", "review body over the size limit")
        if db.is_sqlite and len(body) <= INLINE_BYTES:  # a millisecond: no thread hop
            return respond(body, path)
        # a large review (or a database across the network) never holds the loop
        return await asyncio.get_running_loop().run_in_executor(reviewers, respond, body, path)

    async def mutate(request: Request) -> Any:
        """Pin every model:// reference of the object (a JSONPatch), or deny."""
        return await answer(request, "mutate")

    async def validate(request: Request) -> Any:
        """Refuse images not pinned by digest, or no registered (or signed) version."""
        return await answer(request, "validate")

    async def record(request: Request) -> Any:
        """Record what the object pins (who runs what); always allowed."""
        return await answer(request, "record")

    responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "An AdmissionReview answer"},
        400: {"description": "Not an AdmissionReview"},
        408: {"description": "The body was not sent in time"},
        413: {"description": "Too large"},
    }
    for path, handler in (("/mutate", mutate), ("/validate", validate), ("/record", record)):
        app.add_api_route(
            path,
            handler,
            methods=["POST"],
            responses=responses,
            openapi_extra={"requestBody": _BODY},
        )
    return app
