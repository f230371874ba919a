"""The operator's web UI at ``/ui``: models, a model, the fleet, rollouts. Read-only.

Server-rendered (Jinja2, autoescaped), no JavaScript and no CDN: one stylesheet served
from here. Reads need a token unless ``--open-reads``: the login form takes one, checks
it and opens a session: the cookie holds a random session id (never the token; the
database keeps its sha256), HttpOnly, SameSite=Strict, path /ui, gone when the browser
closes or after ``ui_session_hours``, Secure behind HTTPS (``--secure-cookies``, or a
forwarded proto from a trusted proxy). Revoking the token ends its sessions. There is no
write action anywhere: changes go through the API, where each one is recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from modelcar.api import catalog
from modelcar.api.auth import Principal
from modelcar.api.deps import identify, may_read
from modelcar.api.routes.models import model_detail
from modelcar.api.tokens import SESSION_PREFIX, close_session, open_session
from modelcar.api.ui import pages
from modelcar.cliutil import human
from modelcar.errors import ModelcarError, Unauthorized
from modelcar.version import version as release

HERE = Path(__file__).parent
COOKIE = "modelcar_ui_session"
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        auto_reload=False,
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the tests, not silently
    )
)
templates.env.filters["size"] = lambda n: human(n) if isinstance(n, int) else "–"
templates.env.filters["when"] = lambda t: t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
templates.env.globals["version"] = release()
templates.env.filters["origin"] = pages.origin_of

router = APIRouter(prefix="/ui", include_in_schema=False)
static = StaticFiles(directory=str(HERE / "static"))


async def _who(request: Request) -> Principal | None:
    """The reader, or None when a token is needed and there is no valid one."""
    secret, session = request.cookies.get(COOKIE), True
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        secret, session = header.removeprefix("Bearer "), False
    try:
        return may_read(await identify(request, secret, session), request.app.state.settings)
    except ModelcarError:
        return None


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("who", None)
    context.setdefault("page", "")
    return templates.TemplateResponse(
        request,
        template,
        {"open_reads": request.app.state.settings.open_reads, **context},
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'self'; style-src 'self'; "
            "img-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'",
            "Referrer-Policy": "no-referrer",
        },
    )


def _login(request: Request, error: str | None = None, status: int = 401) -> HTMLResponse:
    return _page(request, "login.html", status, error=error, next=request.url.path)


async def _read(
    request: Request, render: Callable[[Any, float, Principal], HTMLResponse]
) -> HTMLResponse:
    """Render a page for a reader, or the login page (and no data) for anyone else."""
    who = await _who(request)
    if who is None:
        return _login(request)
    db = request.app.state.db
    stale_after = request.app.state.settings.stale_after

    def work() -> HTMLResponse:
        with db.reading() as s:
            return render(s, stale_after, who)

    try:
        return await run_in_threadpool(work)
    except ModelcarError as e:
        status = e.http_status
        return _page(
            request,
            "error.html",
            status if status >= 400 else 404,
            who=who,
            message=e.message,
            subject=e.subject,
            hint=e.hint,
        )


@router.get("")
async def models_page(request: Request) -> Response:
    return await _read(
        request,
        lambda s, stale, who: _page(request, "models.html", who=who, models=pages.models(s)),
    )


@router.get("/models/{name}")
async def model_page(request: Request, name: str) -> Response:
    def render(s: Any, stale: float, who: Principal) -> HTMLResponse:
        detail = model_detail(s, name, stale)
        events = pages.alias_events(s, catalog.get_model(s, name))
        return _page(request, "model.html", who=who, model=detail, events=events)

    return await _read(request, render)


@router.get("/fleet")
async def fleet_page(request: Request) -> Response:
    return await _read(
        request,
        lambda s, stale, who: _page(
            request, "fleet.html", who=who, fleet=pages.fleet_grid(s, stale), now=datetime.now(UTC)
        ),
    )


@router.get("/rollouts")
async def rollouts_page(request: Request) -> Response:
    return await _read(
        request,
        lambda s, stale, who: _page(
            request, "rollouts.html", who=who, rollouts=pages.rollout_list(s, stale)
        ),
    )


@router.get("/login")
async def login_form(request: Request, next: str = "/ui") -> Response:
    return _page(request, "login.html", 200, error=None, next=_safe_next(next))


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the token once; keep it in a session cookie for the pages that follow.
    (An urlencoded form read here: no multipart parser is needed for two fields.)"""
    body = await request.body()
    form = parse_qs(body[:4096].decode("utf-8", "replace"), max_num_fields=4)
    token = (form.get("token") or [""])[0].strip()
    next_page = _safe_next((form.get("next") or ["/ui"])[0])
    settings = request.app.state.settings
    try:
        if token.startswith(SESSION_PREFIX):
            raise Unauthorized("that is a session id, not a token")
        (await identify(request, token)).require("read")  # a POST: checked in the database
        session = await run_in_threadpool(_open, request.app.state.db, token, settings)
    except ModelcarError as e:
        return _page(request, "login.html", 401, error=e.message, next=next_page)
    response = RedirectResponse(next_page, status_code=303)
    response.set_cookie(
        COOKIE,
        session,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=settings.secure_cookies or request.url.scheme == "https",
    )
    return response


def _open(db: Any, token: str, settings: Any) -> str:
    with db.writing() as s:
        return open_session(s, token, settings.ui_session_hours)


def _close(db: Any, session: str) -> None:
    with db.writing() as s:
        close_session(s, session)


@router.post("/logout")
async def logout(request: Request) -> Response:
    if session := request.cookies.get(COOKIE):
        await run_in_threadpool(_close, request.app.state.db, session)
        request.app.state.tokens.clear()  # a cached read of it ends here too
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


def _safe_next(path: str) -> str:
    """Only a page of this UI: never another site after login."""
    if not path.startswith("/ui") or path.startswith("//") or "\\" in path:
        return "/ui"
    return quote(path, safe="/-_.~")
