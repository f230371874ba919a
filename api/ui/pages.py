"""What each page of the web UI shows, read from the catalog and the fleet.

Plain data for the templates; the same functions the JSON routes use wherever a
page and an endpoint show the same thing (a model's detail, a rollout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from modelcar.api import catalog, fleet, rollouts, trust, usage
from modelcar.api.db.tables import Model, Version
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
    rows = catalog.models_with_aliases(s)
    versions = catalog.version_keys(s)
    signed = trust.signed_by(s, [digest for _, _, digest in versions])
    used = usage.counts(s, [v_id for v_id, _, _ in versions])
    per_model: dict[int, list[tuple[int, str]]] = {}
    for v_id, model_id, digest in versions:
        per_model.setdefault(model_id, []).append((v_id, digest))
    return [
        ModelRow(
            name=m.name,
            description=m.description,
            owner=m.owner,
            versions=len(per_model.get(m.id, [])),
            latest=m.last_version or None,
            aliases=dict(sorted((a.name, a.version.number) for a in m.aliases)),
            signed=sum(bool(signed[digest]) for _, digest in per_model.get(m.id, [])),
            usage=sum(used.get(v_id, 0) for v_id, _ in per_model.get(m.id, [])),
        )
        for m in rows
    ]


def alias_events(s: Session, model: Model) -> list[wire.AliasEvent]:
    """Every alias move of the model, newest first."""
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
        for e in catalog.alias_moves(s, model)
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
    reports = fleet.model_reports(s)
    digests = sorted({r.digest for r in reports})
    names = catalog.version_labels(s, digests)
    columns = sorted(((d, names.get(d, d[:19])) for d in digests), key=lambda c: c[1])
    position = {digest: i for i, (digest, _) in enumerate(columns)}
    since = fleet.fresh_since(stale_after)
    rows: dict[str, NodeRow] = {}
    for name, last_seen, disk in fleet.node_disks(s):
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
    for policy in fleet.policies_with_rollouts(s):
        for text in policy.models:
            try:
                target = catalog.find(s, parse_model_ref(text))
            except ModelcarError:
                continue
            version = catalog.get_version_of(s, target)
            if version is not None:
                found.setdefault(version.id, (version, []))[1].append(policy.rollout)
    return [rollouts.view(s, v, stale_after, rules=rules) for v, rules in found.values()]
