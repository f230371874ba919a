"""Where a layer's bytes come from: an ordered chain of sources, the origin last.

``--source KIND=URL[,credentials]`` (repeatable, in order) or ``sources:`` in the
config file. The kinds and what each is sent:

* ``spegel``: the node-local Spegel mirror (``http://$NODE_IP:30020``). ``GET
  /v2/<repo>/blobs/<digest>?ns=<origin registry>``; a miss is 404 and Spegel never
  goes to the origin itself, so a miss moves on at once. Connect timeout 2 s.
* ``dragonfly``: dfdaemon's registry proxy (``http://127.0.0.1:4001``), with
  ``X-Dragonfly-Registry: <scheme>://<origin>`` naming the registry behind it.
* ``mirror``: a registry that holds the same repository (host swapped), with its own
  credentials from the docker config, as ``--mirror`` always was.
* ``peer``: another node's daemon (``modelcar-cache run --serve``), named by hand:
  ``GET /v2/<repo>/blobs/<digest>`` with the fleet credential (``--fleet-token-file``).
* ``nodes``: the nodes the API says hold the blob (``GET /v1/blobs/<digest>/holders``),
  nearest first, each a ``peer`` (see ``peers.py``). Needs ``--api``.
* ``origin``: the registry of the reference itself. Always the last; added if not named.

A peer, Spegel or Dragonfly that fails (an error, 429 when busy, a connect timeout)
counts as a miss: the next source is asked at the same byte, and a wave without a lease
waits for one instead of failing.

The origin's credentials go to the origin, and to a spegel or dragonfly source only
when it is given ``,credentials`` (a proxy that must fetch private blobs for us);
never to a peer by default. URLs may name environment variables (``$NODE_IP``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from modelcar.contract.wire import BlobHolder
from modelcar.errors import UsageError
from modelcar.oci.manifest import first_error
from modelcar.oci.reference import ImageRef, LayoutRef
from modelcar.oci.store import ImageStore, StoreOptions, Via
from modelcar.oci.stores import open_store

Kind = Literal["spegel", "dragonfly", "peer", "nodes", "mirror", "origin"]
#: Kinds whose failure is a miss: they serve what some node holds, never the origin's.
PEER_KINDS = frozenset({"spegel", "dragonfly", "peer", "nodes"})
PEER_CONNECT_TIMEOUT = 2.0
_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")


class SourceSpec(BaseModel):
    """One link of the chain, as given on the command line or in the config file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    url: str | None = None
    credentials: bool = False

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+/?$", v):
            raise ValueError("a source URL is http(s)://HOST[:PORT]")
        return v


def parse_source(text: str) -> SourceSpec:
    """``spegel=http://$NODE_IP:30020``, ``dragonfly=http://127.0.0.1:4001,credentials``,
    ``peer=http://10.0.0.7:5050``, ``nodes``, ``mirror=https://harbor.internal``,
    ``origin``."""
    kind, eq, rest = text.partition("=")
    parts = rest.split(",") if eq else []
    url = _expand(parts[0].strip(), text) if parts else None
    flags = {p.strip() for p in parts[1:]}
    if flags - {"credentials"}:
        raise UsageError(
            "unknown source option",
            subject=text,
            hint="KIND=URL, optionally followed by ,credentials",
        )
    try:
        spec = SourceSpec(kind=kind.strip(), url=url, credentials="credentials" in flags)
    except ValidationError as e:
        raise UsageError(
            "invalid --source",
            subject=text,
            hint=f"{first_error(e)}; KIND is spegel, dragonfly, peer, nodes, mirror or origin",
        ) from None
    return check_chain([spec])[0]


def check_chain(specs: list[SourceSpec]) -> list[SourceSpec]:
    """Each kind but ``origin`` and ``nodes`` needs a URL; ``origin`` needs none, comes
    once and last."""
    for s in specs:
        if s.kind == "nodes" and (s.url or s.credentials):
            raise UsageError(
                "the nodes source takes no URL or options",
                subject="nodes",
                hint="the API names the nodes; --source peer=URL names one by hand",
            )
        if s.kind == "peer" and s.credentials:
            raise UsageError(
                "a peer gets the fleet credential, never the registry's",
                subject=s.url,
                hint="--fleet-token-file",
            )
        if s.kind not in ("origin", "nodes") and not s.url:
            raise UsageError(
                f"a {s.kind} source needs a URL",
                subject=s.kind,
                hint=f"--source {s.kind}=http://HOST:PORT",
            )
        if s.kind == "origin" and (s.url or s.credentials):
            raise UsageError(
                "the origin source takes no URL or options",
                subject="origin",
                hint="the origin is each image's own registry",
            )
        if s.kind == "mirror" and s.credentials:
            raise UsageError(
                "a mirror uses its own credentials",
                subject=s.url,
                hint="log in to the mirror's host in the docker config",
            )
    origins = [i for i, s in enumerate(specs) if s.kind == "origin"]
    if len(origins) > 1 or (origins and origins[0] != len(specs) - 1):
        raise UsageError(
            "the origin source comes once, last in the chain",
            subject=", ".join(s.kind for s in specs),
        )
    return specs


def chain(sources: Sequence[SourceSpec], mirrors: Sequence[str] = ()) -> list[SourceSpec]:
    """The full chain: the given sources, ``--mirror`` URLs as mirror sources, the origin."""
    specs = [s for s in check_chain(list(sources)) if s.kind != "origin"]
    specs += [SourceSpec(kind="mirror", url=_expand(m, m).rstrip("/")) for m in mirrors]
    return check_chain([*specs, SourceSpec(kind="origin")])


@dataclass(frozen=True)
class Fleet:
    """What ``peer`` and ``nodes`` sources need: the fleet credential, and (``nodes``)
    who holds a blob, this node's name and labels, and the labels that say near."""

    token: str | None = None
    holders: Callable[[str], list[BlobHolder]] | None = None
    node: str = ""
    labels: Callable[[], dict[str, str]] = dict
    topology: tuple[str, ...] = ("topology.kubernetes.io/zone",)


def peer_store(ref: ImageRef, url: str, token: str, options: StoreOptions) -> ImageStore:
    """Another node's daemon as a store of ``ref``'s blobs (the fleet credential sent)."""
    via = Via(
        endpoint=url,
        headers=(("Authorization", f"Bearer {token}"),),
        connect_timeout=PEER_CONNECT_TIMEOUT,
    )
    plain = url.startswith("http://")
    return open_store(ref, replace(options, via=via, retries=1, plain_http=plain))


@dataclass(frozen=True)
class BlobSource:
    """A link of the chain opened for one image: its label (for metrics), its store."""

    name: str
    kind: str
    store: ImageStore

    @property
    def origin(self) -> bool:
        return self.kind == "origin"

    @property
    def peer(self) -> bool:
        """Serves what some node holds: a failure is a miss."""
        return self.kind in PEER_KINDS


def open_sources(
    ref: ImageRef | LayoutRef,
    specs: list[SourceSpec],
    options: StoreOptions,
    fleet: Fleet | None = None,
) -> list[BlobSource]:
    """The stores of ``ref`` along the chain. An ``oci:`` layout has only itself."""
    if not isinstance(ref, ImageRef):
        return [BlobSource("origin", "origin", open_store(ref, options))]
    names = _names(specs)
    out: list[BlobSource] = []
    for spec, name in zip(specs, names, strict=True):
        if spec.kind == "origin":
            out.append(BlobSource(name, "origin", open_store(ref, options)))
            continue
        if spec.kind in ("peer", "nodes"):
            from modelcar.cache_daemon.peers import FleetStore

            fleet = fleet or Fleet()
            if not fleet.token:
                raise UsageError(
                    f"a {spec.kind} source needs the fleet credential",
                    subject=spec.kind,
                    hint="--fleet-token-file (the chart mounts the fleet Secret)",
                )
            if spec.kind == "peer":
                assert spec.url is not None
                store = peer_store(ref, spec.url, fleet.token, options)
            else:
                store = FleetStore(ref, fleet, options)
            out.append(BlobSource(name, spec.kind, store))
            continue
        assert spec.url is not None
        plain = spec.url.startswith("http://")
        if spec.kind == "mirror":
            host = spec.url.split("://", 1)[-1].rstrip("/")
            opts = replace(options, plain_http=plain, retries=1)  # the next source is its retry
            store = open_store(ImageRef(host, ref.repository, digest=ref.digest), opts)
        else:
            scheme = "http" if options.plain_http else "https"
            via = Via(
                endpoint=spec.url,
                params=(("ns", ref.registry),) if spec.kind == "spegel" else (),
                headers=(("X-Dragonfly-Registry", f"{scheme}://{ref.api_host}"),)
                if spec.kind == "dragonfly"
                else (),
                credentials=spec.credentials,
                connect_timeout=PEER_CONNECT_TIMEOUT,
            )
            store = open_store(ref, replace(options, via=via, retries=1))
        out.append(BlobSource(name, spec.kind, store))
    return out


def _names(specs: list[SourceSpec]) -> list[str]:
    """The kind, numbered when a kind comes more than once (``mirror``, ``mirror-2``)."""
    seen: dict[str, int] = {}
    names = []
    for s in specs:
        seen[s.kind] = seen.get(s.kind, 0) + 1
        names.append(s.kind if seen[s.kind] == 1 else f"{s.kind}-{seen[s.kind]}")
    return names


def _expand(url: str, text: str) -> str:
    def var(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in os.environ:
            raise UsageError(
                f"the source URL names ${name}, which is not set",
                subject=text,
                hint=f"set {name} (in the chart: from the Downward API)",
            )
        return os.environ[name]

    return _VAR.sub(var, url)


def origin_only(store: ImageStore) -> Callable[[ImageRef | LayoutRef], list[BlobSource]]:
    """A chain of one given store (an in-memory one, in tests and benchmarks)."""
    return lambda ref: [BlobSource("origin", "origin", store)]
