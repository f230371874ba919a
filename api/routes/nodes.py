"""Nodes (status reports, assignments) and the cache policies that drive them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from sqlalchemy import select

from modelcar.api import fleet, rollouts
from modelcar.api.db.tables import Policy
from modelcar.api.deps import DB, Admin, Anyone, Config, Reader
from modelcar.api.routes import ERRORS
from modelcar.contract import wire as wire
from modelcar.errors import InvalidRequest

router = APIRouter(prefix="/v1", responses=ERRORS)

NodeName = Annotated[
    str,
    Path(max_length=253, pattern=wire.NODE_NAME_PATTERN, description="Kubernetes node name"),
]
PolicyName = Annotated[
    str, Path(max_length=63, pattern=wire.MODEL_NAME_PATTERN, description="Policy (DNS label)")
]


def _read_node(who: Anyone, settings: Config, node: str) -> None:
    if not (who.anonymous and settings.open_reads):
        who.require_node(node, write=False)


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise InvalidRequest("labels are k=v pairs separated by ','", subject=item[:100])
        labels[key] = value
    try:
        return wire.NodeStatusPut(labels=labels).labels
    except ValueError as e:
        raise InvalidRequest(
            "invalid labels", subject=text[:200], hint=str(e).splitlines()[-1]
        ) from None


@router.get("/nodes", response_model=list[wire.NodeOut], tags=["nodes"], summary="List nodes")
def list_nodes(db: DB, settings: Config, _: Reader) -> list[wire.NodeOut]:
    with db.reading() as s:
        return [fleet.node_out(n, settings.stale_after, models=False) for n in fleet.list_nodes(s)]


@router.get("/nodes/{node}", response_model=wire.NodeOut, tags=["nodes"], summary="One node")
def get_node(node: NodeName, db: DB, settings: Config, who: Anyone) -> wire.NodeOut:
    _read_node(who, settings, node)
    with db.reading() as s:
        return fleet.node_out(fleet.get_node(s, node), settings.stale_after)


@router.put(
    "/nodes/{node}/status",
    response_model=wire.NodeOut,
    tags=["nodes"],
    summary="A node's full status report (node token of that node, or admin)",
)
def put_status(
    node: NodeName, body: wire.NodeStatusPut, db: DB, settings: Config, who: Anyone
) -> wire.NodeOut:
    who.require_node(node, write=True)
    with db.writing() as s:
        row = fleet.put_status(s, node, body)
        rollouts.after_report(s, row)
        return fleet.node_out(row, settings.stale_after)


@router.post(
    "/nodes/{node}/leases",
    response_model=wire.LeaseOut,
    tags=["nodes"],
    summary="Ask for an origin lease for a digest (rollout waves; node token of that node)",
)
def take_lease(
    node: NodeName, body: wire.LeaseRequest, db: DB, settings: Config, who: Anyone
) -> wire.LeaseOut:
    who.require_node(node, write=True)
    with db.writing() as s:
        return rollouts.take(s, node, body.digest, settings.stale_after)


@router.delete(
    "/nodes/{node}/leases/{digest}",
    status_code=204,
    tags=["nodes"],
    summary="Give an origin lease back (node token of that node)",
)
def give_back_lease(
    node: NodeName,
    digest: Annotated[str, Path(pattern=r"^sha256:[a-f0-9]{64}$", description="The digest")],
    db: DB,
    who: Anyone,
) -> Response:
    who.require_node(node, write=True)
    with db.writing() as s:
        rollouts.give_back(s, node, digest)
    return Response(status_code=204)


@router.get(
    "/blobs/{digest}/holders",
    response_model=wire.HoldersOut,
    tags=["nodes"],
    summary="The nodes serving a blob to their peers (a node token, or read)",
)
def blob_holders(
    digest: Annotated[str, Path(pattern=r"^sha256:[a-f0-9]{64}$", description="The digest")],
    db: DB,
    settings: Config,
    who: Anyone,
) -> wire.HoldersOut:
    if who.role != "node":
        who.require("read")  # never anonymous: where private models lie is not public
    with db.reading() as s:
        return fleet.holders(s, digest, settings.stale_after)


@router.get(
    "/nodes/{node}/assignments",
    response_model=wire.Assignments,
    tags=["nodes"],
    summary="The pinned images a node should hold (aliases resolved now)",
)
def assignments(
    node: NodeName,
    db: DB,
    settings: Config,
    who: Anyone,
    labels: Annotated[
        str | None,
        Query(
            max_length=8192,
            pattern=wire.LABELS_QUERY_PATTERN,
            description="The node's labels, k=v,… (default: last reported)",
        ),
    ] = None,
) -> wire.Assignments:
    _read_node(who, settings, node)
    selector = parse_labels(labels) if labels is not None else None
    with db.reading() as s:
        return fleet.assignments(s, node, selector)


@router.get(
    "/policies", response_model=list[wire.PolicyOut], tags=["policies"], summary="List policies"
)
def list_policies(db: DB, _: Reader) -> list[wire.PolicyOut]:
    with db.reading() as s:
        return [fleet.policy_out(p) for p in s.scalars(select(Policy).order_by(Policy.name))]


@router.get(
    "/policies/{name}", response_model=wire.PolicyOut, tags=["policies"], summary="One policy"
)
def get_policy(name: PolicyName, db: DB, _: Reader) -> wire.PolicyOut:
    with db.reading() as s:
        return fleet.policy_out(fleet.get_policy(s, name))


@router.put(
    "/policies/{name}",
    response_model=wire.PolicyOut,
    tags=["policies"],
    summary="Create or replace a cache policy (admin)",
)
def put_policy(name: PolicyName, body: wire.PolicyPut, db: DB, who: Admin) -> wire.PolicyOut:
    with db.writing() as s:
        return fleet.policy_out(fleet.put_policy(s, name, body, who.name))


@router.delete(
    "/policies/{name}", status_code=204, tags=["policies"], summary="Delete a policy (admin)"
)
def delete_policy(name: PolicyName, db: DB, _: Admin) -> Response:
    with db.writing() as s:
        s.delete(fleet.get_policy(s, name))
    return Response(status_code=204)
