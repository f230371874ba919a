"""Models, versions and aliases: the rules, on one SQLAlchemy session.

Writers lock the model's row first (``SELECT … FOR UPDATE`` on PostgreSQL;
SQLite write transactions are ``BEGIN IMMEDIATE`` and so already one at a
time), which makes version numbers gap-free and alias history ordered.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from api.db.tables import Alias, AliasEvent, Model, Version, utcnow
from modelcar import apimodels as wire
from modelcar.errors import Conflict, InvalidRequest, Missing
from modelcar.modelref import ModelRef, valid_alias, valid_model_name


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
    query = select(Model).where(Model.name == check_name(name)).with_for_update()
    model = s.scalar(query)
    if model is None and create_by is not None:
        try:
            with s.begin_nested():
                model = Model(name=name, created_by=create_by, created=utcnow())
                s.add(model)
        except IntegrityError:  # created concurrently: take theirs
            model = s.scalar(query)
    if model is None:
        raise Missing("unknown model", subject=name, hint="register a version first")
    return model


def upsert_model(s: Session, name: str, body: wire.ModelUpdate, actor: str) -> tuple[Model, bool]:
    existing = s.scalar(select(Model).where(Model.name == check_name(name)))
    model = lock_model(s, name, create_by=actor)
    if body.description is not None:
        model.description = body.description
    if body.owner is not None:
        model.owner = body.owner
    return model, existing is None


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


def find(s: Session, ref: ModelRef) -> Version:
    """The version a catalog reference names (alias resolved now)."""
    query = select(Version).join(Model).where(Model.name == ref.name)
    if ref.alias:
        query = query.join(Alias, Alias.version_id == Version.id).where(Alias.name == ref.alias)
    elif ref.version is not None:
        query = query.where(Version.number == ref.version)
    else:
        query = query.where(Version.digest == ref.digest)
    version = s.scalar(query.options(selectinload(Version.model)))
    if version is not None:
        return version
    model = get_model(s, ref.name)  # raises "unknown model" first
    if ref.alias:
        names = s.scalars(select(Alias.name).where(Alias.model_id == model.id)).all()
        hint = f"its aliases: {', '.join(sorted(names))}" if names else "it has no aliases yet"
        raise Missing("unknown alias", subject=str(ref), hint=hint)
    if ref.version is not None:
        get_version(s, model, ref.version)
    raise Missing("no version of the model has this digest", subject=str(ref))
