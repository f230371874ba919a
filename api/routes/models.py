"""Models, versions and aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from modelcar.api import catalog, fleet, rollouts, trust, usage
from modelcar.api.db.tables import Alias, Model, Version
from modelcar.api.deps import DB, Admin, Config, Publisher, Reader
from modelcar.api.routes import ERRORS
from modelcar.contract import wire as wire
from modelcar.errors import Missing

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERRORS)

Name = Annotated[
    str, Path(max_length=63, pattern=wire.MODEL_NAME_PATTERN, description="Model name (DNS label)")
]
AliasName = Annotated[
    str, Path(max_length=63, pattern=wire.ALIAS_PATTERN, description="Alias, e.g. prod")
]
Number = Annotated[int, Path(ge=1, le=10**9, description="Version number")]


def version_out(
    v: Version,
    name: str,
    aliases: list[str] | None = None,
    nodes: list[str] | None = None,
    signed_by: list[str] | None = None,
    usage: int = 0,
) -> wire.VersionOut:
    return wire.VersionOut(
        model=name,
        version=v.number,
        digest=v.digest,
        repository=v.repository,
        image=f"{v.repository}@{v.digest}",
        source_uri=v.source_uri,
        size=v.size,
        file_count=v.file_count,
        index_digest=v.index_digest,
        modelpack_digest=v.modelpack_digest,
        build=v.build,
        created=v.created,
        created_by=v.created_by,
        aliases=aliases or [],
        nodes_ready=nodes or [],
        signed_by=signed_by or [],
        usage=usage,
    )


def model_out(m: Model, aliases: dict[str, int]) -> wire.ModelOut:
    return wire.ModelOut(
        name=m.name,
        description=m.description,
        owner=m.owner,
        created=m.created,
        latest_version=m.last_version or None,
        aliases=aliases,
    )


def alias_out(a: Alias, name: str) -> wire.AliasOut:
    return wire.AliasOut(
        model=name,
        alias=a.name,
        version=a.version.number,
        digest=a.version.digest,
        updated=a.updated,
        updated_by=a.updated_by,
    )


@router.get("", response_model=list[wire.ModelOut], summary="List models")
def list_models(db: DB, _: Reader) -> list[wire.ModelOut]:
    with db.reading() as s:
        models = s.scalars(
            select(Model)
            .options(selectinload(Model.aliases).selectinload(Alias.version))
            .order_by(Model.name)
        ).all()
        return [model_out(m, {a.name: a.version.number for a in m.aliases}) for m in models]


def model_detail(s: Session, name: str, stale_after: float) -> wire.ModelDetail:
    """A model with its versions: aliases, where each is ready, who signed it, who uses it."""
    m = catalog.get_model(s, name, details=True)
    aliases = {a.name: a.version.number for a in m.aliases}
    by_number: dict[int, list[str]] = {}
    for alias, number in aliases.items():
        by_number.setdefault(number, []).append(alias)
    digests = [v.digest for v in m.versions]
    ready = fleet.ready_by_digest(s, digests, stale_after)
    signed = trust.signed_by(s, digests)
    used = usage.counts(s, [v.id for v in m.versions])
    return wire.ModelDetail(
        **model_out(m, aliases).model_dump(),
        versions=[
            version_out(
                v,
                m.name,
                by_number.get(v.number),
                ready.get(v.digest),
                signed[v.digest],
                used.get(v.id, 0),
            )
            for v in m.versions
        ],
    )


@router.get("/{name}", response_model=wire.ModelDetail, summary="A model, its versions and aliases")
def get_model(name: Name, db: DB, settings: Config, _: Reader) -> wire.ModelDetail:
    with db.reading() as s:
        return model_detail(s, name, settings.stale_after)


@router.put(
    "/{name}",
    response_model=wire.ModelOut,
    summary="Create a model or set its description and owner",
    responses={201: {"model": wire.ModelOut, "description": "Created"}},
)
def put_model(
    name: Name, body: wire.ModelUpdate, response: Response, db: DB, who: Publisher
) -> wire.ModelOut:
    with db.writing() as s:
        m, created = catalog.upsert_model(s, name, body, who.name)
        aliases = {a.name: a.version.number for a in m.aliases}
        out = model_out(m, aliases)
    response.status_code = 201 if created else 200
    return out


@router.get("/{name}/versions", response_model=list[wire.VersionOut], summary="List versions")
def list_versions(name: Name, db: DB, _: Reader) -> list[wire.VersionOut]:
    with db.reading() as s:
        m = catalog.get_model(s, name, details=True)
        signed = trust.signed_by(s, [v.digest for v in m.versions])
        used = usage.counts(s, [v.id for v in m.versions])
        return [
            version_out(v, m.name, signed_by=signed[v.digest], usage=used.get(v.id, 0))
            for v in m.versions
        ]


@router.post(
    "/{name}/versions",
    response_model=wire.VersionOut,
    status_code=201,
    summary="Register an image as the next version (idempotent by digest)",
    responses={200: {"model": wire.VersionOut, "description": "Already registered"}},
)
def register_version(
    name: Name, body: wire.VersionCreate, response: Response, db: DB, who: Publisher
) -> wire.VersionOut:
    with db.writing() as s:
        v, created = catalog.register_version(s, name, body, who.name)
        out = version_out(v, name, signed_by=trust.signed_by(s, [v.digest])[v.digest])
    response.status_code = 201 if created else 200
    return out


@router.get("/{name}/versions/{version}", response_model=wire.VersionOut, summary="One version")
def get_version(
    name: Name, version: Number, db: DB, settings: Config, _: Reader
) -> wire.VersionOut:
    with db.reading() as s:
        v = catalog.get_version(s, catalog.get_model(s, name), version)
        aliases = s.scalars(select(Alias.name).where(Alias.version_id == v.id)).all()
        ready = fleet.ready_by_digest(s, [v.digest], settings.stale_after)
        signed = trust.signed_by(s, [v.digest])[v.digest]
        used = usage.counts(s, [v.id]).get(v.id, 0)
        return version_out(v, name, sorted(aliases), ready.get(v.digest), signed, used)


@router.get(
    "/{name}/versions/{version}/usage",
    response_model=list[wire.WorkloadOut],
    summary="The Kubernetes objects admitted with this version pinned",
)
def version_usage(name: Name, version: Number, db: DB, _: Reader) -> list[wire.WorkloadOut]:
    with db.reading() as s:
        v = catalog.get_version(s, catalog.get_model(s, name), version)
        return usage.users(s, v.id)


@router.get(
    "/{name}/versions/{version}/rollout",
    response_model=wire.RolloutOut,
    summary="The version's rollout: origin leases, node states, bytes from origin vs peers",
)
def version_rollout(
    name: Name, version: Number, db: DB, settings: Config, _: Reader
) -> wire.RolloutOut:
    with db.reading() as s:
        v = catalog.get_version(s, catalog.get_model(s, name), version)
        return rollouts.view(s, v, settings.stale_after)


@router.delete(
    "/{name}/versions/{version}",
    response_model=wire.VersionOut,
    summary="Delete a version no alias points at (admin); its number is never reused",
)
def delete_version(name: Name, version: Number, db: DB, _: Admin) -> wire.VersionOut:
    with db.writing() as s:
        v = catalog.delete_version(s, name, version)
        return version_out(v, name)


@router.get("/{name}/aliases", response_model=list[wire.AliasOut], summary="List aliases")
def list_aliases(name: Name, db: DB, _: Reader) -> list[wire.AliasOut]:
    with db.reading() as s:
        m = catalog.get_model(s, name, details=True)
        return [alias_out(a, m.name) for a in m.aliases]


@router.get("/{name}/aliases/{alias}", response_model=wire.AliasOut, summary="One alias")
def get_alias(name: Name, alias: AliasName, db: DB, _: Reader) -> wire.AliasOut:
    with db.reading() as s:
        m = catalog.get_model(s, name, details=True)
        for a in m.aliases:
            if a.name == alias:
                return alias_out(a, m.name)
    raise Missing("unknown alias", subject=f"{name}@{alias}")


@router.put(
    "/{name}/aliases/{alias}",
    response_model=wire.AliasOut,
    summary="Point an alias at a version (every move is kept in its history)",
)
def move_alias(
    name: Name, alias: AliasName, body: wire.AliasMove, db: DB, who: Publisher
) -> wire.AliasOut:
    with db.writing() as s:
        return alias_out(catalog.move_alias(s, name, alias, body, who.name), name)


@router.delete(
    "/{name}/aliases/{alias}", status_code=204, summary="Remove an alias (kept in its history)"
)
def delete_alias(
    name: Name,
    alias: AliasName,
    db: DB,
    who: Publisher,
    reason: Annotated[str, Query(max_length=1024, pattern=wire.NO_NUL)] = "",
) -> Response:
    with db.writing() as s:
        catalog.delete_alias(s, name, alias, who.name, reason)
    return Response(status_code=204)


@router.get(
    "/{name}/aliases/{alias}/history",
    response_model=list[wire.AliasEvent],
    summary="Every move of an alias, oldest first",
)
def alias_history(name: Name, alias: AliasName, db: DB, _: Reader) -> list[wire.AliasEvent]:
    with db.reading() as s:
        return [
            wire.AliasEvent(
                model=name,
                alias=e.alias,
                from_version=e.from_number,
                to_version=e.to_number,
                actor=e.actor,
                at=e.at,
                reason=e.reason,
            )
            for e in catalog.alias_history(s, name, alias)
        ]
