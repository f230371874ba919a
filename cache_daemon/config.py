"""The node daemon's configuration, assembled once (as ``api/settings.py`` is the API's):
the flags of ``modelcar-cache run`` and ``pull`` (each with its environment variable)
and the ``sources:`` of a ``--config`` file, checked together into one model from which
the daemon's, the pull's and the budget's options are read.

Every bad value is one :class:`~modelcar.errors.UsageError` naming the flag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from modelcar.cache_daemon.evict import Budget
from modelcar.cache_daemon.pull import PullOptions
from modelcar.cache_daemon.serve import listen_address, read_token
from modelcar.cache_daemon.sources import Fleet, SourceSpec, chain, parse_source
from modelcar.cliutil import parse_size, store_options
from modelcar.errors import UsageError
from modelcar.http.body import StallRule

if TYPE_CHECKING:
    from modelcar.cache_daemon.daemon import DaemonOptions


class PullConfig(BaseModel):
    """What every pull of this process is given (``run`` and ``pull`` alike)."""

    model_config = ConfigDict(extra="forbid")

    jobs: int = 4
    max_rate: str | None = None
    mirrors: list[str] = []
    #: The chain before the origin, as given (``spegel=URL``…); checked on assembly.
    sources: list[str] = []
    checkpoint: str = "64MiB"
    stall_timeout: float = 30.0
    min_speed: str = "16KiB"
    docker_config: list[str] = []
    plain_http: bool = False
    insecure: bool = False
    ca_file: str | None = None
    #: The fleet's shared credential, for peer and nodes sources (and --serve).
    fleet_token_file: str | None = None

    def fleet_token(self) -> str | None:
        return read_token(self.fleet_token_file) if self.fleet_token_file else None

    def specs(self) -> list[SourceSpec]:
        return [parse_source(text) for text in self.sources]

    def pull_options(self, specs: list[SourceSpec] | None = None) -> PullOptions:
        """The pull's options; ``specs`` (a ``--config`` file's chain) when no --source."""
        specs = self.specs() or (specs or [])
        full = chain(specs, self.mirrors)  # a bad chain is refused now, not at the first pull
        token = self.fleet_token()
        if token is None and (peer := next((s for s in full if s.kind in ("peer", "nodes")), None)):
            raise UsageError(
                f"a {peer.kind} source needs the fleet credential",
                subject=peer.url or peer.kind,
                hint="--fleet-token-file FILE (MODELCAR_FLEET_TOKEN_FILE)",
            )
        rule = StallRule(window=self.stall_timeout, min_speed=parse_size(self.min_speed))
        return PullOptions(
            jobs=self.jobs,
            checkpoint_bytes=max(1, parse_size(self.checkpoint)),
            max_rate=parse_size(self.max_rate) if self.max_rate else None,
            mirrors=self.mirrors,
            sources=specs,
            store=store_options(
                plain_http=self.plain_http,
                insecure=self.insecure,
                ca_file=self.ca_file,
                docker_config=self.docker_config,
                stall=rule,
            ),
            fleet=Fleet(token=token),
        )


class BudgetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_bytes: str | None = None
    max_percent: float | None = None
    high_watermark: float = 0.95
    low_watermark: float = 0.85

    def budget(self) -> Budget:
        if self.low_watermark > self.high_watermark:
            raise UsageError("--low-watermark must not be above --high-watermark")
        return Budget(
            max_bytes=parse_size(self.max_bytes) if self.max_bytes else None,
            max_percent=self.max_percent,
            high=self.high_watermark,
            low=self.low_watermark,
        )


class DaemonConfig(BaseModel):
    """Everything ``modelcar-cache run`` was told."""

    model_config = ConfigDict(extra="forbid")

    node: str
    cache_dir: str
    api: str | None = None
    token: str | None = None
    token_file: str | None = None
    #: A YAML file of ``models:`` (and ``sources:``) instead of the API.
    config: str | None = None
    labels: list[str] = []
    kubeconfig: str | None = None
    warm_cri: bool = False
    cri_socket: str = "/run/containerd/containerd.sock"
    interval: float = 30.0
    once: bool = False
    listen: str = "0.0.0.0:9090"
    #: HOST:PORT of the node's registry endpoint ('' for none), and its URL for peers.
    serve: str = ""
    serve_url: str | None = None
    max_uploads: int = 8
    topology_labels: list[str] = ["topology.kubernetes.io/zone"]
    scrub_every: float = 86400.0
    scrub_rate: str = "100MiB"
    pull: PullConfig = PullConfig()
    budget: BudgetConfig = BudgetConfig()

    def check(self) -> DaemonConfig:
        if bool(self.api) == bool(self.config):
            raise UsageError("give exactly one of --api URL (or MODELCAR_API) and --config FILE")
        self.node_labels()
        if self.serve:
            listen_address(self.serve)
            if not self.pull.fleet_token_file:
                raise UsageError(
                    "--serve needs the fleet credential",
                    subject=self.serve,
                    hint="--fleet-token-file FILE: peers and containerd send it; "
                    "nothing is served without it",
                )
        if "nodes" in self.pull.sources and not self.api:
            raise UsageError("the nodes source needs --api", hint="or name peers: peer=URL")
        return self

    def advertised(self) -> str | None:
        """The URL peers reach this node's endpoint at (None: not serving)."""
        if not self.serve:
            return None
        if self.serve_url:
            return self.serve_url.rstrip("/")
        host, port = listen_address(self.serve)
        if host in ("0.0.0.0", "::", ""):
            raise UsageError(
                "--serve on every address needs --serve-url for peers",
                subject=self.serve,
                hint="e.g. --serve-url http://$NODE_IP:5050 (the chart sets it)",
            )
        return f"http://{host}:{port}"

    def node_labels(self) -> dict[str, str]:
        labels = {}
        for item in self.labels:
            key, eq, value = item.partition("=")
            if not eq:
                raise UsageError("--label takes KEY=VALUE", subject=item)
            labels[key] = value
        return labels

    def daemon_options(self, file_sources: list[SourceSpec] | None = None) -> DaemonOptions:
        from modelcar.cache_daemon.daemon import DaemonOptions

        return DaemonOptions(
            node=self.node,
            labels=self.node_labels(),
            interval=self.interval,
            pull=self.pull.pull_options(file_sources),
            budget=self.budget.budget(),
            scrub_every=self.scrub_every,
            scrub_rate=parse_size(self.scrub_rate),
        )
