"""Models, versions and aliases: the rules, on one SQLAlchemy session.

Writers lock the model's row first (``SELECT … FOR UPDATE`` on PostgreSQL;
SQLite write transactions are ``BEGIN IMMEDIATE`` and so already one at a
time), which makes version numbers gap-free and alias history ordered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from modelcar.api import usage
from modelcar.api.db.tables import (
    Alias,
    AliasEvent,
    Model,
    Node,
    NodeModel,
    Version,
    Workload,
    utcnow,
)
from modelcar.contract import wire as wire
from modelcar.contract.modelref import ModelRef, valid_alias, valid_model_name
from modelcar.errors import Conflict, InvalidRequest, Missing


def check_name(name: str) -> str:
    if not valid_model_name(name):
        raise InvalidRequest(
            "invalid model name",
            subject=name[:100],
            hint="a DNS label: lowercase letters, digits and '-', at most 63",
        )
    return name


def check_alias(alias: str) -> str:
    if not valid_alias(alias):
        raise InvalidRequest(
            "invalid alias",
            subject=alias[:100],
            hint="a letter, then lowercase letters, digits and '-', at most 63",
        )
    return alias


def get_model(s: Session, name: str, *, details: bool = False) -> Model:
    query = select(Model).where(Model.name == check_name(name))
    if details:
        query = query.options(
            selectinload(Model.versions), selectinload(Model.aliases).selectinload(Alias.version)
        )
    model = s.scalar(query)
    if model is None:
        raise Missing("unknown model", subject=name, hint="list models with GET /v1/models")
    return model


def lock_model(s: Session, name: str, *, create_by: str | None = None) -> Model:
    """The model's row, locked for this transaction; created first if ``create_by``."""
    return _lock_or_create(s, name, create_by)[0]


def _lock_or_create(s: Session, name: str, create_by: str | None) -> tuple[Model, bool]:
    """The model's row, locked; whether this transaction created it (decided under the
    lock or the unique index, so of two concurrent creators exactly one did)."""
    query = select(Model).where(Model.name == check_name(name)).with_for_update()
    model, created = s.scalar(query), False
    if model is None and create_by is not None:
        try:
            with s.begin_nested():
                model = Model(name=name, created_by=create_by, created=utcnow())
                s.add(model)
            created = True
        except IntegrityError:  # created concurrently: take theirs
            model = s.scalar(query)
    if model is None:
        raise Missing("unknown model", subject=name, hint="register a version first")
    return model, created


def upsert_model(s: Session, name: str, body: wire.ModelUpdate, actor: str) -> tuple[Model, bool]:
    model, created = _lock_or_create(s, name, actor)
    if body.description is not None:
        model.description = body.description
    if body.owner is not None:
        model.owner = body.owner
    return model, created


def register_version(
    s: Session, name: str, body: wire.VersionCreate, actor: str
) -> tuple[Version, bool]:
    """Add the model's next version; the same digest again returns the existing one."""
    model = lock_model(s, name, create_by=actor)
    existing = s.scalar(
        select(Version).where(Version.model_id == model.id, Version.digest == body.digest)
    )
    if existing is not None:
        if body.version is not None and body.version != existing.number:
            raise Conflict(
                f"this digest is already version {existing.number}, not {body.version}",
                subject=f"{name}@{body.digest}",
                hint="a digest is registered once per model",
            )
        return existing, False
    if body.version is not None:
        taken = s.scalar(
            select(Version).where(Version.model_id == model.id, Version.number == body.version)
        )
        if taken is not None:
            raise Conflict(
                f"version {body.version} exists with digest {taken.digest}",
                subject=f"{name}:{body.version}",
                hint="a version's digest never changes; register without a version number "
                "to get the next one",
            )
        if body.version != model.last_version + 1:
            raise Conflict(
                f"versions are numbered in order; the next one is {model.last_version + 1}",
                subject=f"{name}:{body.version}",
            )
    model.last_version += 1
    version = Version(
        model_id=model.id,
        number=model.last_version,
        digest=body.digest,
        repository=body.repository,
        source_uri=body.source_uri,
        size=body.size,
        file_count=body.file_count,
        index_digest=body.index_digest,
        modelpack_digest=body.modelpack_digest,
        build=body.build,
        created=utcnow(),
        created_by=actor,
    )
    s.add(version)
    s.flush()
    return version, True


def get_version(s: Session, model: Model, number: int) -> Version:
    version = s.scalar(
        select(Version).where(Version.model_id == model.id, Version.number == number)
    )
    if version is None:
        raise Missing(
            "unknown version",
            subject=f"{model.name}:{number}",
            hint=f"the latest is {model.last_version}" if model.last_version else "none yet",
        )
    return version


def delete_version(s: Session, name: str, number: int) -> Version:
    model = lock_model(s, name)
    version = get_version(s, model, number)
    pointing = s.scalars(select(Alias.name).where(Alias.version_id == version.id)).all()
    if pointing:
        raise Conflict(
            f"version {number} is the target of alias {', '.join(sorted(pointing))}",
            subject=f"{name}:{number}",
            hint="move the alias to another version first",
        )
    users = s.execute(
        select(Workload.namespace, Workload.kind, Workload.name)
        .where(Workload.version_id == version.id, usage.current())
        .order_by(Workload.namespace, Workload.kind, Workload.name)
    ).all()
    if users:
        shown = ", ".join(f"{ns}/{kind}/{obj}" for ns, kind, obj in users[:5])
        more = f" and {len(users) - 5} more" if len(users) > 5 else ""
        raise Conflict(
            f"version {number} is in use by {shown}{more}",
            subject=f"{name}:{number}",
            hint="delete those objects, or re-pin them, first",
        )
    s.delete(version)
    return version


def move_alias(s: Session, name: str, alias: str, body: wire.AliasMove, actor: str) -> Alias:
    """Point ``alias`` at a version, keeping the move in the alias's history."""
    check_alias(alias)
    model = lock_model(s, name)
    target = get_version(s, model, body.version)
    row = s.scalar(select(Alias).where(Alias.model_id == model.id, Alias.name == alias))
    if row is not None and row.version_id == target.id:
        return row  # not a move; nothing to record
    previous = row.version.number if row is not None else None
    now = utcnow()
    if row is None:
        row = Alias(model_id=model.id, name=alias)
        s.add(row)
    row.version_id, row.version, row.updated, row.updated_by = target.id, target, now, actor
    s.add(
        AliasEvent(
            model_id=model.id,
            alias=alias,
            from_number=previous,
            to_number=target.number,
            actor=actor,
            at=now,
            reason=body.reason,
        )
    )
    s.flush()
    return row


def delete_alias(s: Session, name: str, alias: str, actor: str, reason: str) -> None:
    check_alias(alias)
    model = lock_model(s, name)
    row = s.scalar(select(Alias).where(Alias.model_id == model.id, Alias.name == alias))
    if row is None:
        raise Missing("unknown alias", subject=f"{name}@{alias}")
    s.add(
        AliasEvent(
            model_id=model.id,
            alias=alias,
            from_number=row.version.number,
            to_number=None,
            actor=actor,
            at=utcnow(),
            reason=reason,
        )
    )
    s.delete(row)


def models_with_aliases(s: Session) -> list[Model]:
    """Every model, by name, its aliases (and their versions) loaded."""
    return list(
        s.scalars(
            select(Model)
            .options(selectinload(Model.aliases).selectinload(Alias.version))
            .order_by(Model.name)
        )
    )


def version_keys(s: Session) -> list[tuple[int, int, str]]:
    """(id, model id, digest) of every version: plain columns, for counts by model."""
    return [
        (v_id, m_id, d)
        for v_id, m_id, d in s.execute(select(Version.id, Version.model_id, Version.digest))
    ]


def alias_moves(s: Session, model: Model) -> list[AliasEvent]:
    """Every alias move of the model, newest first."""
    return list(
        s.scalars(
            select(AliasEvent).where(AliasEvent.model_id == model.id).order_by(AliasEvent.id.desc())
        )
    )


def version_labels(s: Session, digests: list[str]) -> dict[str, str]:
    """``model:number`` of each digest a version has (the first by name and number)."""
    names: dict[str, str] = {}
    for digest, model, number in s.execute(
        select(Version.digest, Model.name, Version.number)
        .join(Model, Model.id == Version.model_id)
        .where(Version.digest.in_(digests))
        .order_by(Model.name, Version.number)
    ):
        names.setdefault(digest, f"{model}:{number}")
    return names


def get_version_of(s: Session, target: Target) -> Version | None:
    """The version row a resolved target names, its model loaded."""
    return s.scalar(
        select(Version)
        .join(Model)
        .where(Model.name == target.name, Version.number == target.number)
        .options(selectinload(Version.model))
    )


def alias_history(s: Session, name: str, alias: str) -> list[AliasEvent]:
    check_alias(alias)
    model = get_model(s, name)
    events = s.scalars(
        select(AliasEvent)
        .where(AliasEvent.model_id == model.id, AliasEvent.alias == alias)
        .order_by(AliasEvent.id)
    ).all()
    if not events:
        raise Missing("unknown alias", subject=f"{name}@{alias}")
    return list(events)


@dataclass(frozen=True)
class Target:
    """What a reference resolves to: enough to build a mount, nothing more."""

    name: str
    number: int
    digest: str
    repository: str
    size: int
    file_count: int
    #: Fresh nodes where it is ready, when asked for (sorted).
    nodes_ready: tuple[str, ...] = ()


_READY_NODES = (
    select(func.aggregate_strings(NodeModel.node_name, ","))
    .join(Node, Node.name == NodeModel.node_name)
    .where(
        NodeModel.digest == Version.digest,
        NodeModel.state == "ready",
        Node.last_seen >= bindparam("since"),
    )
    .correlate(Version)
    .scalar_subquery()
)


def _target_query(kind: str, with_nodes: bool) -> Select[*tuple[Any, ...]]:
    columns = [
        Model.name,
        Version.number,
        Version.digest,
        Version.repository,
        Version.size,
        Version.file_count,
    ]
    query = select(*columns, *([_READY_NODES] if with_nodes else []))
    query = query.join(Model, Version.model_id == Model.id).where(Model.name == bindparam("name"))
    if kind == "alias":
        return query.join(Alias, Alias.version_id == Version.id).where(
            Alias.name == bindparam("alias")
        )
    if kind == "version":
        return query.where(Version.number == bindparam("version"))
    return query.where(Version.digest == bindparam("digest"))


_QUERIES = {
    (kind, nodes): _target_query(kind, nodes)
    for kind in ("alias", "version", "digest")
    for nodes in (False, True)
}


def modelpack_digest(conn: Connection | Session, name: str, number: int) -> str | None:
    """The ModelPack digest recorded for version ``number`` of ``name``, if any."""
    value: str | None = conn.execute(
        select(Version.modelpack_digest)
        .join(Model, Model.id == Version.model_id)
        .where(Model.name == name, Version.number == number)
    ).scalar()
    return value


def find(
    conn: Connection | Session, ref: ModelRef, *, ready_since: datetime | None = None
) -> Target:
    """The version a catalog reference names (alias resolved now), in one indexed query;
    with ``ready_since``, also the nodes that reported it ready since then.

    Core, not the ORM: this is the hot path of resolve and of every node's poll.
    """
    kind = "alias" if ref.alias else "version" if ref.version is not None else "digest"
    params: dict[str, object] = {"name": ref.name, kind: getattr(ref, kind)}
    if ready_since is not None:
        params["since"] = ready_since
    row = conn.execute(_QUERIES[kind, ready_since is not None], params).first()
    if row is not None:
        nodes = tuple(sorted(row[6].split(","))) if len(row) > 6 and row[6] else ()
        name, number, digest, repository, size, file_count = row[:6]
        return Target(name, number, digest, repository, size, file_count, nodes_ready=nodes)
    model = conn.execute(select(Model.id, Model.last_version).where(Model.name == ref.name)).first()
    if model is None:
        raise Missing("unknown model", subject=ref.name, hint="list models with GET /v1/models")
    if ref.alias:
        names = conn.execute(select(Alias.name).where(Alias.model_id == model.id)).scalars().all()
        hint = f"its aliases: {', '.join(sorted(names))}" if names else "it has no aliases yet"
        raise Missing("unknown alias", subject=str(ref), hint=hint)
    if ref.version is not None:
        latest = f"the latest is {model.last_version}" if model.last_version else "none yet"
        raise Missing("unknown version", subject=str(ref), hint=latest)
    raise Missing("no version of the model has this digest", subject=str(ref))
