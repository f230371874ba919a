"""The node daemon's control socket, typed: what ``modelcar-cache status|gc|pull|verify``
ask the running daemon and what it answers (one JSON line each way).

A request is ``{"op": NAME, "args": {...}}``; the answer ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "..."}``. The args and results are the models below, as
``wire.py`` is for the API: both sides read them through these models, never by keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Op = Literal["status", "gc", "pull", "verify", "events"]


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StatusArgs(_Args):
    pass


class GcArgs(_Args):
    #: A one-off budget (evict down to it, not between watermarks); None: the daemon's.
    max_bytes: int | None = Field(None, ge=0)
    max_percent: float | None = Field(None, gt=0, le=100)
    #: Digests kept besides the daemon's assigned ones.
    keep: list[str] = []


class PullArgs(_Args):
    ref: str = Field(description="REPO@sha256:… or oci:PATH@sha256:…")


class VerifyArgs(_Args):
    digests: list[str] = []  # none: every published model
    quarantine: bool = False


class EventsArgs(_Args):
    follow: bool = False


ARGS: dict[str, type[_Args]] = {
    "status": StatusArgs,
    "gc": GcArgs,
    "pull": PullArgs,
    "verify": VerifyArgs,
    "events": EventsArgs,
}


class PullView(BaseModel):
    """A pull in progress."""

    digest: str
    image: str
    model: str
    bytes_done: int
    bytes_total: int
    rate: int  # bytes per second over the last samples
    eta_seconds: int | None
    source: str  # the registry it comes from
    seconds: float
    by_source: dict[str, int] = {}


class DiskUse(BaseModel):
    used_bytes: int
    budget_bytes: int
    capacity_bytes: int


class LiveStatus(BaseModel):
    """What the daemon is doing now (``status``)."""

    node: str
    pid: int
    cache_dir: str
    pulls: list[PullView]
    assigned: list[str]
    errors: dict[str, str]  # the last error per digest
    disk: DiskUse


class GcResult(BaseModel):
    evicted: list[str]


class PullResult(BaseModel):
    """A published model (``pull``), also what ``modelcar-cache pull --json`` prints."""

    digest: str
    image: str
    path: str
    size: int
    files: int
    layers: int
    bytes_fetched: int
    bytes_resumed: int
    seconds: float
    #: Layer bytes by source of the chain (``origin``, ``spegel``, …) in this pull.
    by_source: dict[str, int] = {}


class VerifyResult(BaseModel):
    """One model re-hashed (``verify``)."""

    digest: str
    problems: list[str]
    #: Where a corrupt model was moved (with ``quarantine``), else None.
    quarantined: str | None = None
