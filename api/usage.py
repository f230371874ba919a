"""Who runs what: the Kubernetes objects admitted with a version pinned.

An object (kind, namespace, name) is recorded against every version whose digest it
pins, replacing what it pinned before. A digest that is no registered version is not
recorded (there is nothing to protect). The records converge on what runs:

* **confirmed** records carry the object's uid: the apiserver gives it after the
  mutating webhooks, so they come from the validating reviews (``/validate`` where
  validation is on, ``/record`` everywhere else), which see the final name too (a
  ``generateName`` object is recorded under its real name);
* **provisional** records come from ``/mutate`` on CREATE (no uid yet: the object may
  still be denied, or exist already); they count for PROVISIONAL_TTL and then expire
  unless a validating review confirms them;
* a DELETE review forgets the object (by name and by uid), an UPDATE that pins nothing
  any more forgets it, and a denied CREATE forgets its provisional record.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import ColumnElement, Connection, bindparam, delete, or_, select
from sqlalchemy.orm import Session

from modelcar.api.db.tables import Version, Workload, utcnow
from modelcar.contract import wire

#: How long a provisional record (no uid: from /mutate) counts without confirmation.
PROVISIONAL_TTL = timedelta(minutes=15)


def current() -> ColumnElement[bool]:
    """Confirmed records, and provisional ones not yet expired."""
    return or_(Workload.uid != "", Workload.updated > utcnow() - PROVISIONAL_TTL)


def record(
    s: Session, kind: str, namespace: str, name: str, uid: str, operation: str, digests: list[str]
) -> int:
    """Record the object against the versions of ``digests``; how many it pins."""
    s.execute(
        delete(Workload).where(Workload.uid == "", Workload.updated <= utcnow() - PROVISIONAL_TTL)
    )
    forget(s, kind, namespace, name, uid)
    versions = s.scalars(select(Version).where(Version.digest.in_(set(digests)))).all()
    for v in versions:
        s.add(
            Workload(
                version_id=v.id,
                kind=kind,
                namespace=namespace,
                name=name,
                uid=uid,
                operation=operation,
                updated=utcnow(),
            )
        )
    s.flush()
    return len(versions)


def unchanged(
    conn: Connection, kind: str, namespace: str, name: str, uid: str, digests: list[str]
) -> bool:
    """Whether the object is recorded already, with this uid, against exactly these
    digests (a re-admission, e.g. the same `kubectl apply`): then nothing is written.
    One indexed Core query: this is on every admission's path."""
    rows = conn.execute(_RECORDED, {"kind": kind, "namespace": namespace, "name": name}).all()
    return bool(rows) and {d for d, _ in rows} == set(digests) and all(u == uid for _, u in rows)


_RECORDED = (
    select(Version.digest, Workload.uid)
    .join(Version, Version.id == Workload.version_id)
    .where(
        Workload.kind == bindparam("kind"),
        Workload.namespace == bindparam("namespace"),
        Workload.name == bindparam("name"),
    )
)


def forget(s: Session, kind: str, namespace: str, name: str, uid: str = "") -> None:
    """Forget the object by its name and, given one, by its uid."""
    same = (Workload.kind == kind) & (Workload.namespace == namespace)
    who = (Workload.name == name) | (Workload.uid == uid) if uid else Workload.name == name
    s.execute(delete(Workload).where(same & who))


def forget_provisional(s: Session, kind: str, namespace: str, name: str) -> None:
    """A denied CREATE: the record /mutate made for it goes."""
    s.execute(
        delete(Workload).where(
            Workload.kind == kind,
            Workload.namespace == namespace,
            Workload.name == name,
            Workload.uid == "",
        )
    )


def users(s: Session, version_id: int) -> list[wire.WorkloadOut]:
    rows = s.scalars(
        select(Workload)
        .where(Workload.version_id == version_id, current())
        .order_by(Workload.namespace, Workload.kind, Workload.name)
    ).all()
    return [
        wire.WorkloadOut(
            kind=w.kind,
            namespace=w.namespace,
            name=w.name,
            uid=w.uid,
            operation=w.operation,
            updated=w.updated,
        )
        for w in rows
    ]


def counts(s: Session, version_ids: list[int]) -> dict[int, int]:
    from sqlalchemy import func

    rows = s.execute(
        select(Workload.version_id, func.count())
        .where(Workload.version_id.in_(version_ids), current())
        .group_by(Workload.version_id)
    ).all()
    return {vid: n for vid, n in rows}


def registered(s: Session, digest_list: list[str]) -> set[str]:
    """Which of the digests are a registered version (of any model)."""
    return set(s.scalars(select(Version.digest).where(Version.digest.in_(set(digest_list)))))
