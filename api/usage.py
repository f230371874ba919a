"""Who runs what: the Kubernetes objects admitted with a version pinned.

An object (kind, namespace, name) is recorded against every version whose digest it
pins, replacing what it pinned before; its DELETE admission removes it. A digest that
is no registered version is not recorded (there is nothing to protect).
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, delete, select
from sqlalchemy.orm import Session

from modelcar.api.db.tables import Version, Workload, utcnow
from modelcar.contract import wire


def record(s: Session, kind: str, namespace: str, name: str, uid: str, operation: str,
           digests: list[str]) -> int:  # fmt: skip
    """Record the object against the versions of ``digests``; how many it pins."""
    forget(s, kind, namespace, name)
    versions = s.scalars(select(Version).where(Version.digest.in_(set(digests)))).all()
    for v in versions:
        s.add(Workload(version_id=v.id, kind=kind, namespace=namespace, name=name, uid=uid,
                       operation=operation, updated=utcnow()))  # fmt: skip
    s.flush()
    return len(versions)


def unchanged(conn: Connection, kind: str, namespace: str, name: str, uid: str,
              digests: list[str]) -> bool:  # fmt: skip
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


def forget(s: Session, kind: str, namespace: str, name: str) -> None:
    s.execute(delete(Workload).where(Workload.kind == kind, Workload.namespace == namespace,
                                     Workload.name == name))  # fmt: skip


def users(s: Session, version_id: int) -> list[wire.WorkloadOut]:
    rows = s.scalars(
        select(Workload).where(Workload.version_id == version_id)
        .order_by(Workload.namespace, Workload.kind, Workload.name)
    ).all()  # fmt: skip
    return [wire.WorkloadOut(kind=w.kind, namespace=w.namespace, name=w.name, uid=w.uid,
                             operation=w.operation, updated=w.updated) for w in rows]  # fmt: skip


def counts(s: Session, version_ids: list[int]) -> dict[int, int]:
    from sqlalchemy import func

    rows = s.execute(
        select(Workload.version_id, func.count()).where(Workload.version_id.in_(version_ids))
        .group_by(Workload.version_id)
    ).all()  # fmt: skip
    return {vid: n for vid, n in rows}


def registered(s: Session, digest_list: list[str]) -> set[str]:
    """Which of the digests are a registered version (of any model)."""
    return set(s.scalars(select(Version.digest).where(Version.digest.in_(set(digest_list)))))
