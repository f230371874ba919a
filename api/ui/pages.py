"""What each page of the web UI shows, read from the catalog and the fleet.

Plain data for the templates; the same functions the JSON routes use wherever a
page and an endpoint show the same thing (a model's detail, a rollout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from modelcar.api import catalog, fleet, rollouts, trust, usage
from modelcar.api.db.tables import Alias, AliasEvent, Model, Node, NodeModel, Policy, Version
from modelcar.contract import wire
from modelcar.contract.build import read_build
from modelcar.contract.modelref import parse_model_ref
from modelcar.errors import ModelcarError
from modelcar.format.keys import SOURCE_RUN_ID, hf_commit


@dataclass
class ModelRow:
    name: str
    description: str
    owner: str
    versions: int
    latest: int | None
    aliases: dict[str, int]
    signed: int  # versions a trusted key signed
    usage: int  # admitted objects pinning any version


def models(s: Session) -> list[ModelRow]:
    rows = s.scalars(
        select(Model)
        .options(selectinload(Model.aliases).selectinload(Alias.version))
        .order_by(Model.name)
    ).all()
    versions = s.execute(select(Version.id, Version.model_id, Version.digest)).all()
    signed = trust.signed_by(s, [v.digest for v in versions])
    used = usage.counts(s, [v.id for v in versions])
    per_model: dict[int, list[Any]] = {}
    for v in versions:
        per_model.setdefault(v.model_id, []).append(v)
    return [
        ModelRow(
            name=m.name,
            description=m.description,
            owner=m.owner,
            versions=len(per_model.get(m.id, [])),
            latest=m.last_version or None,
            aliases=dict(sorted((a.name, a.version.number) for a in m.aliases)),
            signed=sum(bool(signed[v.digest]) for v in per_model.get(m.id, [])),
            usage=sum(used.get(v.id, 0) for v in per_model.get(m.id, [])),
        )
        for m in rows
    ]


def alias_events(s: Session, model: Model) -> list[wire.AliasEvent]:
    """Every alias move of the model, newest first."""
    rows = s.scalars(
        select(AliasEvent).where(AliasEvent.model_id == model.id).order_by(AliasEvent.id.desc())
    )
    return [
        wire.AliasEvent(
            model=model.name,
            alias=e.alias,
            from_version=e.from_number,
            to_version=e.to_number,
            actor=e.actor,
            at=e.at,
            reason=e.reason,
        )
        for e in rows
    ]


@dataclass
class Origin:
    uri: str
    commit: str | None  # a Hugging Face commit, a git revision
    run: str | None  # an MLflow run


def origin_of(v: wire.VersionOut) -> Origin:
    """Where a version came from, with its commit or run when the build recorded one."""
    build = read_build(v.build)
    uri = v.source_uri or (build.source if build else "")
    pinned = hf_commit(uri)
    run = build.source_annotations.get(SOURCE_RUN_ID) if build else None
    return Origin(uri, pinned[1] if pinned else None, run)


@dataclass
class Cell:
    state: str
    text: str  # the state in words: never colour alone
    title: str = ""


@dataclass
class NodeRow:
    name: str
    stale: bool
    last_seen: datetime
    used: int | None
    budget: int | None
    capacity: int | None
    cells: list[Cell | None] = field(default_factory=list)  # one per column

    @property
    def used_share(self) -> float | None:
        limit = self.budget or self.capacity
        return self.used / limit if self.used is not None and limit else None


@dataclass
class Fleet:
    columns: list[tuple[str, str]]  # (digest, label: name:version or the short digest)
    nodes: list[NodeRow]
    counts: dict[str, int]


def fleet_grid(s: Session, stale_after: float) -> Fleet:
    """Every node (rows) × every model reported (columns). Plain column reads, no ORM
    objects: the page must stay fast with hundreds of nodes."""
    reports = s.execute(
        select(
            NodeModel.node_name,
            NodeModel.digest,
            NodeModel.state,
            NodeModel.bytes_done,
            NodeModel.bytes_total,
            NodeModel.error,
        )
    ).all()
    digests = sorted({r.digest for r in reports})
    names: dict[str, str] = {}
    for digest, model, number in s.execute(
        select(Version.digest, Model.name, Version.number)
        .join(Model, Model.id == Version.model_id)
        .where(Version.digest.in_(digests))
        .order_by(Model.name, Version.number)
    ):
        names.setdefault(digest, f"{model}:{number}")
    columns = sorted(((d, names.get(d, d[:19])) for d in digests), key=lambda c: c[1])
    position = {digest: i for i, (digest, _) in enumerate(columns)}
    since = fleet.fresh_since(stale_after)
    rows: dict[str, NodeRow] = {}
    for name, last_seen, disk in s.execute(
        select(Node.name, Node.last_seen, Node.disk).order_by(Node.name)
    ):
        disk = disk or {}
        rows[name] = NodeRow(
            name=name,
            stale=last_seen < since,
            last_seen=last_seen,
            used=disk.get("used_bytes"),
            budget=disk.get("budget_bytes"),
            capacity=disk.get("capacity_bytes"),
            cells=[None] * len(columns),
        )
    counts: dict[str, int] = {}
    for r in reports:
        row = rows.get(r.node_name)
        if row is None:
            continue
        row.cells[position[r.digest]] = _cell(r.state, r.bytes_done, r.bytes_total, r.error)
        counts[r.state] = counts.get(r.state, 0) + 1
    return Fleet(columns, list(rows.values()), counts)


def _cell(state: str, done: int, total: int, error: str | None) -> Cell:
    if state == "pulling" and total:
        return Cell(state, f"pulling {100 * done // total}%", f"{done} of {total} bytes")
    if state == "failed":
        return Cell(state, "failed", error or "")
    return Cell(state, state, error or "")


def rollout_list(s: Session, stale_after: float) -> list[wire.RolloutOut]:
    """The versions that policies with a rollout assign, each with its rollout now (the
    strictest of its policies')."""
    found: dict[int, tuple[Version, list[dict[str, Any] | None]]] = {}
    for policy in s.scalars(select(Policy).order_by(Policy.name)):
        if not policy.rollout:
            continue
        for text in policy.models:
            try:
                target = catalog.find(s, parse_model_ref(text))
            except ModelcarError:
                continue
            version = s.scalar(
                select(Version)
                .join(Model)
                .where(Model.name == target.name, Version.number == target.number)
                .options(selectinload(Version.model))
            )
            if version is not None:
                found.setdefault(version.id, (version, []))[1].append(policy.rollout)
    return [rollouts.view(s, v, stale_after, rules=rules) for v, rules in found.values()]
