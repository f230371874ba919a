"""Rollout waves: origin leases per digest, and what a rollout looks like.

A policy's ``rollout: {origin_concurrency: K, wave_timeout}`` caps the nodes that
fetch a digest's layers from the origin at once. A node asks for a lease before it
goes to the origin; without one it takes layers from its peers only, and asks again
when they miss. A lease ends when its node gives it back, reports the model ready,
failed or gone, stops reporting (stale), or has not reported "pulling" for
``wave_timeout`` seconds. Each granted lease is a row in one of K slots: the primary
key ``(digest, slot)`` makes two concurrent grants of the last slot impossible, on
SQLite and PostgreSQL alike, with any number of API replicas.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelcar.api import fleet
from modelcar.api.db.tables import Node, NodeModel, OriginLease, Version, utcnow
from modelcar.contract import wire as wire

#: Seconds a node waits before asking again for a lease it was refused.
RETRY_AFTER = 5.0


def _expire(s: Session, digest: str, stale_after: float) -> None:
    """Drop the digest's leases that ran out or whose node went stale."""
    now = utcnow()
    stale = select(Node.name).where(Node.last_seen < fleet.fresh_since(stale_after))
    s.execute(
        delete(OriginLease)
        .where(OriginLease.digest == digest)
        .where(or_(OriginLease.expires < now, OriginLease.node_name.in_(stale)))
        .execution_options(synchronize_session=False)
    )


def holders(s: Session, digest: str, stale_after: float) -> list[OriginLease]:
    """The digest's leases in force: not run out, held by a node that reports."""
    fresh = select(Node.name).where(Node.last_seen >= fleet.fresh_since(stale_after))
    return list(
        s.scalars(
            select(OriginLease)
            .where(OriginLease.digest == digest, OriginLease.expires >= utcnow())
            .where(OriginLease.node_name.in_(fresh))
            .order_by(OriginLease.slot)
        )
    )


def take(s: Session, node: str, digest: str, stale_after: float) -> wire.LeaseOut:
    """Grant ``node`` an origin lease for ``digest`` if a slot is free (or renew its own)."""
    fleet.check_node(node)
    entry = next((a for a in fleet.assignments(s, node, None).models if a.digest == digest), None)
    rule = entry.rollout if entry else None
    if rule is None:  # no wave: the origin is open to this node
        return wire.LeaseOut(digest=digest, node=node, granted=True, limit=None, holders=[])
    if s.get(Node, node) is None:  # a lease belongs to a node that reports
        s.add(Node(name=node, labels={}))
        s.flush()
    _expire(s, digest, stale_after)
    now = utcnow()
    expires = now + timedelta(seconds=rule.wave_timeout)
    rows = holders(s, digest, stale_after)
    mine = next((r for r in rows if r.node_name == node), None)
    if mine is not None:
        mine.expires, mine.ttl = expires, rule.wave_timeout
    else:
        free = sorted(set(range(rule.origin_concurrency)) - {r.slot for r in rows})
        if free:
            lease = OriginLease(
                digest=digest,
                slot=free[0],
                node_name=node,
                granted=now,
                expires=expires,
                ttl=rule.wave_timeout,
            )
            try:
                with s.begin_nested():
                    s.add(lease)
            except IntegrityError:  # another request took the slot first
                pass
            else:
                mine = lease
    names = [r.node_name for r in holders(s, digest, stale_after)]  # with any concurrent grant
    return wire.LeaseOut(
        digest=digest,
        node=node,
        granted=mine is not None,
        limit=rule.origin_concurrency,
        holders=names,
        expires=mine.expires if mine else None,
        retry_after=0.0 if mine else RETRY_AFTER,
    )


def give_back(s: Session, node: str, digest: str) -> None:
    fleet.check_node(node)
    s.execute(
        delete(OriginLease)
        .where(OriginLease.digest == digest, OriginLease.node_name == node)
        .execution_options(synchronize_session=False)
    )


def after_report(s: Session, node: Node) -> None:
    """A node's report renews the leases of what it is pulling and ends the others."""
    pulling = {m.digest for m in node.models if m.state in ("pulling", "pending")}
    now = utcnow()
    for lease in s.scalars(select(OriginLease).where(OriginLease.node_name == node.name)):
        if lease.digest in pulling:
            lease.expires = now + timedelta(seconds=lease.ttl)
        else:
            s.delete(lease)
    s.flush()


def view(
    s: Session,
    version: Version,
    stale_after: float,
    rules: list[dict[str, Any] | None] | None = None,
) -> wire.RolloutOut:
    """Leases, node states and bytes by source for one version's digest. ``rules``: the
    rollouts of the policies assigning it, when the caller knows them already."""
    digest = version.digest
    rows = s.execute(
        select(NodeModel)
        .join(Node)
        .where(NodeModel.digest == digest, Node.last_seen >= fleet.fresh_since(stale_after))
    ).scalars()
    states: dict[str, int] = {}
    by_source: dict[str, int] = {}
    nodes = 0
    for m in rows:
        nodes += 1
        states[m.state] = states.get(m.state, 0) + 1
        for name, n in (m.sources or {}).items():
            by_source[name] = by_source.get(name, 0) + n
    if rules is None:
        rules = [p.rollout for p in fleet.policies_assigning(s, version)]
    rule = fleet.strictest(rules)
    origin = sum(n for name, n in by_source.items() if name == "origin")
    return wire.RolloutOut(
        model=version.model.name,
        version=version.number,
        digest=digest,
        origin_concurrency=rule.origin_concurrency if rule else None,
        wave_timeout=rule.wave_timeout if rule else None,
        leases=[
            wire.LeaseHolder(node=r.node_name, granted=r.granted, expires=r.expires)
            for r in holders(s, digest, stale_after)
        ],
        nodes=nodes,
        ready=states.get("ready", 0),
        pulling=states.get("pulling", 0),
        failed=states.get("failed", 0),
        bytes_from_origin=origin,
        bytes_from_peers=sum(by_source.values()) - origin,
        bytes_by_source=by_source,
    )
