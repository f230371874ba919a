"""Nodes, their status reports, cache policies and what each node should hold."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, select
from sqlalchemy.orm import Session, selectinload

from modelcar.api import catalog, trust
from modelcar.api.db.tables import Model, Node, NodeBlob, NodeModel, Policy, Version, utcnow
from modelcar.contract import wire as wire
from modelcar.contract.modelref import parse_model_ref
from modelcar.errors import Conflict, InvalidRequest, Missing, ModelcarError


def check_node(name: str) -> str:
    if len(name) > 253 or not wire.NODE_NAME_RE.match(name):
        raise InvalidRequest(
            "invalid node name", subject=name[:100], hint="a Kubernetes node name (DNS subdomain)"
        )
    return name


def fresh_since(stale_after: float) -> datetime:
    return utcnow() - timedelta(seconds=stale_after)


def put_status(s: Session, name: str, body: wire.NodeStatusPut) -> Node:
    """Replace the node's report with this one."""
    check_node(name)
    node = s.get(Node, name, with_for_update=True)
    now = utcnow()
    if node is None:
        node = Node(name=name, labels={})
        s.add(node)
    node.labels = dict(body.labels) or node.labels
    node.cache_root = body.cache_root or node.cache_root
    node.disk = body.disk.model_dump() if body.disk else node.disk
    node.last_seen = now
    reported = {m.digest: m for m in body.models}  # the last entry of a digest wins
    held = {m.digest: m for m in node.models}
    for digest, gone in held.items():
        if digest not in reported:
            node.models.remove(gone)
    for digest, m in sorted(reported.items()):
        row: NodeModel | None = held.get(digest)
        if row is None:
            row = NodeModel(node_name=name, digest=digest, updated=now)
            node.models.append(row)
        elif (row.state, row.bytes_done, row.error) != (m.state, m.bytes_done, m.error):
            row.updated = now
        row.state, row.bytes_done, row.bytes_total, row.error = (
            m.state,
            m.bytes_done,
            m.bytes_total,
            m.error,
        )
        row.sources = dict(m.sources) or None
    node.serve_url = body.serve_url.rstrip("/") if body.serve_url else None
    _replace_blobs(s, name, body.models)
    s.flush()
    return node


def _replace_blobs(s: Session, name: str, models: list[wire.NodeModelStatus]) -> None:
    """What the node serves now: the blobs of its report, ready where a ready model has
    them (a failed or evicted model serves nothing)."""
    ready: dict[str, bool] = {}
    for m in models:
        if m.state not in ("ready", "pulling", "pending"):
            continue
        for blob in m.blobs:
            ready[blob] = ready.get(blob, False) or m.state == "ready"
    s.execute(delete(NodeBlob).where(NodeBlob.node_name == name))
    s.add_all(NodeBlob(node_name=name, digest=d, ready=r) for d, r in sorted(ready.items()))


def holders(s: Session, digest: str, stale_after: float) -> wire.HoldersOut:
    """The fresh nodes serving ``digest``, ready ones first."""
    rows = s.execute(
        select(Node.name, Node.serve_url, Node.labels, NodeBlob.ready)
        .join(NodeBlob, NodeBlob.node_name == Node.name)
        .where(
            NodeBlob.digest == digest,
            Node.serve_url.is_not(None),
            Node.last_seen >= fresh_since(stale_after),
        )
        .order_by(NodeBlob.ready.desc(), Node.name)
    )
    return wire.HoldersOut(
        digest=digest,
        holders=[
            wire.BlobHolder(node=name, url=url, ready=r, labels=labels or {})
            for name, url, labels, r in rows
        ],
    )


def get_node(s: Session, name: str) -> Node:
    node = s.scalar(
        select(Node).where(Node.name == check_node(name)).options(selectinload(Node.models))
    )
    if node is None:
        raise Missing("unknown node", subject=name, hint="a node appears once its daemon reports")
    return node


def list_nodes(s: Session) -> list[Node]:
    return list(s.scalars(select(Node).options(selectinload(Node.models)).order_by(Node.name)))


def node_out(node: Node, stale_after: float, *, models: bool = True) -> wire.NodeOut:
    stale = node.last_seen < fresh_since(stale_after)
    return wire.NodeOut(
        name=node.name,
        labels=node.labels,
        cache_root=node.cache_root,
        last_seen=node.last_seen,
        stale=stale,
        disk=wire.DiskUsage.model_validate(node.disk) if node.disk else None,
        ready=0 if stale else sum(m.state == "ready" for m in node.models),
        models=[
            wire.NodeModelOut(
                digest=m.digest,
                state=m.state,
                bytes_done=m.bytes_done,
                bytes_total=m.bytes_total,
                error=m.error,
                updated=m.updated,
                sources=m.sources or {},
            )
            for m in node.models
        ]
        if models
        else [],
    )


def ready_by_digest(
    s: Session | Connection, digests: list[str], stale_after: float
) -> dict[str, list[str]]:
    """For each digest, the fresh nodes that reported it ready (sorted)."""
    rows = s.execute(
        select(NodeModel.digest, NodeModel.node_name)
        .join(Node)
        .where(
            NodeModel.digest.in_(digests),
            NodeModel.state == "ready",
            Node.last_seen >= fresh_since(stale_after),
        )
        .order_by(NodeModel.node_name)
    )
    ready: dict[str, list[str]] = {}
    for digest, node in rows:
        ready.setdefault(digest, []).append(node)
    return ready


# --- policies ----------------------------------------------------------------


def check_policy_name(name: str) -> str:
    return catalog.check_name(name)


def put_policy(s: Session, name: str, body: wire.PolicyPut, actor: str) -> Policy:
    check_policy_name(name)
    names = {parse_model_ref(ref).name for ref in body.models}
    known = set(s.scalars(select(Model.name).where(Model.name.in_(names))).all())
    if unknown := sorted(names - known):
        raise Conflict(
            f"unknown model{'s' if len(unknown) > 1 else ''} in policy: {', '.join(unknown)}",
            subject=name,
            hint="register a version of each model before assigning it",
        )
    if body.verification is not None:
        trust.check_keys(s, body.verification.keys)
    policy = s.get(Policy, name, with_for_update=True)
    if policy is None:
        policy = Policy(name=name)
        s.add(policy)
    policy.models = list(dict.fromkeys(body.models))
    policy.node_selector = dict(body.node_selector)
    policy.description = body.description
    policy.verification = (
        body.verification.model_dump(mode="json") if body.verification is not None else None
    )
    policy.rollout = body.rollout.model_dump(mode="json") if body.rollout is not None else None
    policy.updated, policy.updated_by = utcnow(), actor
    s.flush()
    return policy


def get_policy(s: Session, name: str) -> Policy:
    policy = s.get(Policy, check_policy_name(name))
    if policy is None:
        raise Missing("unknown policy", subject=name, hint="list policies with GET /v1/policies")
    return policy


def policy_out(p: Policy) -> wire.PolicyOut:
    return wire.PolicyOut(
        name=p.name,
        models=p.models,
        node_selector=p.node_selector,
        description=p.description,
        verification=p.verification,
        rollout=p.rollout,
        updated=p.updated,
        updated_by=p.updated_by,
    )


def policies_assigning(s: Session, version: Version) -> list[Policy]:
    """The policies with a reference that resolves, now, to this version's digest."""
    found = []
    for policy in s.scalars(select(Policy).order_by(Policy.name)):
        for text in policy.models:
            try:
                if catalog.find(s, parse_model_ref(text)).digest == version.digest:
                    found.append(policy)
                    break
            except ModelcarError:
                continue
    return found


def assignments(s: Session, node: str, labels: dict[str, str] | None) -> wire.Assignments:
    """What ``node`` should hold: every policy whose selector its labels match.

    Aliases are resolved now, so moving ``prod`` re-targets every node at its
    next poll. Without ``labels``, the labels of the node's last report count.
    """
    check_node(node)
    if labels is None:
        row = s.get(Node, node)
        labels = dict(row.labels) if row else {}
    chosen: dict[str, wire.Assignment] = {}
    unresolved: list[wire.Unresolved] = []
    pems: dict[str, str] | None = None
    for policy in s.scalars(select(Policy).order_by(Policy.name)):
        if any(labels.get(k) != v for k, v in policy.node_selector.items()):
            continue
        rule = None
        if policy.verification:
            pems = trust.trusted(s) if pems is None else pems
            v = wire.Verification.model_validate(policy.verification)
            rule = wire.VerificationRule(
                policy=policy.name,
                keys=[pems[k] for k in v.keys if k in pems],
                require=v.require,
                source_prefix=v.source_prefix,
            )
        for text in policy.models:
            try:
                version = catalog.find(s, parse_model_ref(text))
            except ModelcarError as e:
                unresolved.append(wire.Unresolved(policy=policy.name, ref=text, error=e.one_line()))
                continue
            entry = chosen.get(version.digest)
            if entry is None:
                entry = chosen[version.digest] = wire.Assignment(
                    digest=version.digest,
                    image=f"{version.repository}@{version.digest}",
                    repository=version.repository,
                    name=version.name,
                    version=version.number,
                    size=version.size,
                    refs=[],
                    policies=[],
                )
            if text not in entry.refs:
                entry.refs.append(text)
            if policy.name not in entry.policies:
                entry.policies.append(policy.name)
                if rule is not None:
                    entry.verification.append(rule)
                entry.rollout = strictest([entry.rollout, policy.rollout])
    return wire.Assignments(
        node=node, labels=labels, models=list(chosen.values()), unresolved=unresolved
    )


def strictest(
    rollouts: Iterable[wire.RolloutRule | dict[str, Any] | None],
) -> wire.RolloutRule | None:
    """Of the rollouts of the policies assigning one digest, the fewest origin leases
    (then the shorter wait); None when none sets one."""
    rules = [wire.RolloutRule.model_validate(r) for r in rollouts if r]
    return min(rules, key=lambda r: (r.origin_concurrency, r.wave_timeout)) if rules else None


def model_reports(s: Session) -> list[Any]:
    """Every node's report of every model: plain columns (node_name, digest, state,
    bytes_done, bytes_total, error), no ORM objects (the fleet grid reads hundreds)."""
    return list(
        s.execute(
            select(
                NodeModel.node_name,
                NodeModel.digest,
                NodeModel.state,
                NodeModel.bytes_done,
                NodeModel.bytes_total,
                NodeModel.error,
            )
        ).all()
    )


def node_disks(s: Session) -> list[tuple[str, datetime, dict[str, Any]]]:
    """(name, last report, disk figures) of every node, by name."""
    return [
        (name, last_seen, disk or {})
        for name, last_seen, disk in s.execute(
            select(Node.name, Node.last_seen, Node.disk).order_by(Node.name)
        )
    ]


def policies_with_rollouts(s: Session) -> list[Policy]:
    return [p for p in s.scalars(select(Policy).order_by(Policy.name)) if p.rollout]
