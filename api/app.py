"""The FastAPI application: routes, JSON errors, request limits and metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

from modelcar.api import ui
from modelcar.api.db.engine import Database
from modelcar.api.deps import TokenCache
from modelcar.api.metrics import Metrics, Telemetry
from modelcar.api.routes import health, models, nodes, resolve, tokens, trust
from modelcar.api.settings import Settings
from modelcar.contract.wire import PATTERN_HELP
from modelcar.errors import Conflict, DatabaseNotReady, InvalidRequest, ModelcarError

log = logging.getLogger("modelcar.api")

DESCRIPTION = """\
Resolves `name@alias`, `name:version` and `name@sha256:…` to a pinned modelcar
image, a KServe `storageUri`, the node-cache hostPath and a pod-spec snippet;
keeps immutable versions, alias history, cache policies and node status.

Send `Authorization: Bearer <token>`. Roles: `read`, `publish` (register
versions, move aliases), `admin` (policies, tokens, deletions), `node` (its own
node's status and assignments). Errors are JSON: `{"error": {"code", "message",
"subject", "hint"}}`.
"""


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"code": code, "message": message}
    body.update({k: v for k, v in extra.items() if v})
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _from_error(e: ModelcarError) -> JSONResponse:
    return error_response(e.http_status, e.code, e.message, subject=e.subject, hint=e.hint)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        message = err.get("msg", "invalid")
        pattern = (err.get("ctx") or {}).get("pattern")
        if err.get("type") == "string_pattern_mismatch" and pattern in PATTERN_HELP:
            message = f"{str(err.get('input'))[:80]!r} is not {PATTERN_HELP[pattern]}"
        parts.append(f"{where}: {message}")
    return "invalid request: " + "; ".join(parts)


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE and isinstance(route, APIRoute | Route):
            methods |= route.methods or set()
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Every error as the API's JSON error body, never a 500 (the webhook port's too)."""

    @app.exception_handler(ModelcarError)
    async def _modelcar(_: Request, exc: ModelcarError) -> JSONResponse:
        return _from_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid", " ".join(_validation_message(exc).split()))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = {400: "invalid", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "error"
        )
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not just the first route's
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    @app.exception_handler(IntegrityError)
    async def _integrity(_: Request, exc: IntegrityError) -> JSONResponse:
        log.warning("write refused by the database: %s", str(exc.orig).splitlines()[0])
        return _from_error(
            Conflict(
                "the write conflicts with the catalog's current state; nothing was changed",
                hint="read the current state and try again",
            )
        )

    @app.exception_handler(DataError)
    async def _data(_: Request, exc: DataError) -> JSONResponse:
        log.warning("value refused by the database: %s", str(exc.orig).splitlines()[0])
        return _from_error(
            InvalidRequest("a value is not acceptable to the database; nothing was changed")
        )

    @app.exception_handler(OperationalError)
    async def _database(_: Request, exc: OperationalError) -> JSONResponse:
        log.error("database error: %s", str(exc.orig).splitlines()[0] if exc.orig else exc)
        return _from_error(
            DatabaseNotReady("the database is unavailable", hint="try again shortly")
        )


def create_app(settings: Settings, database: Database | None = None) -> FastAPI:
    db = database or Database(settings.db, pool_size=settings.pool_size)
    app = FastAPI(
        title="modelcar API",
        version="1",
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.db = db
    app.state.settings = settings
    app.state.tokens = TokenCache()
    metrics = Metrics(db, settings)
    app.state.metrics = metrics

    install_error_handlers(app)

    for module in (models, resolve, nodes, trust, tokens, health):
        app.include_router(module.router)
    app.include_router(ui.router)
    app.mount("/ui/static", ui.static, name="ui-static")
    app.add_middleware(Telemetry, metrics=metrics, max_body=settings.max_body_bytes)
    return app
