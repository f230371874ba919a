"""``modelcar-cache``: keep assigned modelcars unpacked and verified on this node.

``run`` is the daemon; ``pull``, ``ls``, ``gc`` and ``verify`` act on a cache dir
in the foreground (the same code paths). Every failure a user can cause ends in
one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelcar.cache_daemon import control
from modelcar.cache_daemon.cachedir import CacheDir
from modelcar.cache_daemon.config import BudgetConfig, DaemonConfig, PullConfig
from modelcar.cache_daemon.control import ControlServer
from modelcar.cache_daemon.evict import Evictor
from modelcar.cache_daemon.pull import Puller, pinned
from modelcar.cache_daemon.serve import read_token
from modelcar.cache_daemon.sources import Fleet
from modelcar.cliutil import (
    CaFile,
    DockerConfigs,
    Insecure,
    PlainHttp,
    human,
    new_app,
    parse_size,
    run_cli,
)
from modelcar.contract.client import API_ENV, TOKEN_ENV, TOKEN_FILE_ENV, ApiClient
from modelcar.contract.control import GcArgs, VerifyArgs
from modelcar.contract.nodecache import DEFAULT_CACHE_ROOT
from modelcar.errors import DigestMismatch, UsageError

if TYPE_CHECKING:
    from modelcar.cache_daemon.s3 import S3Reads
    from modelcar.cache_daemon.serve import BlobServer

app = new_app("modelcar-cache", "Keep assigned modelcars unpacked and verified on this node.")

CacheRoot = Annotated[
    str,
    typer.Option("--cache-dir", envvar="MODELCAR_CACHE_ROOT", help="The node cache directory."),
]
Jobs = Annotated[int, typer.Option(min=1, max=64, help="Layers pulled at once.")]
MaxRate = Annotated[
    str | None, typer.Option(help="Bandwidth cap for all layers together, e.g. 200MiB (per s).")
]
Mirror = Annotated[
    list[str] | None,
    typer.Option("--mirror", help="Registry mirror URL tried before the origin (repeatable)."),
]
SourceChain = Annotated[
    list[str] | None,
    typer.Option(
        "--source",
        help="A blob source tried before the origin, in order (repeatable): "
        "spegel=http://$NODE_IP:30020 (a miss is 404, next at once), "
        "dragonfly=http://127.0.0.1:4001 (dfdaemon's proxy), peer=http://HOST:PORT "
        "(another node's --serve), nodes (the nodes the API says hold each blob, "
        "nearest first), mirror=https://HOST, and 'origin' last. Add ,credentials to "
        "send a spegel or dragonfly source the origin's credentials (never by default). "
        "$VARS in URLs are expanded.",
    ),
]
FleetToken = Annotated[
    str | None,
    typer.Option(
        envvar="MODELCAR_FLEET_TOKEN_FILE",
        help="A file holding the fleet's shared token: sent to peer and nodes sources, "
        "and required of every client of --serve.",
    ),
]
S3Anonymous = Annotated[
    bool,
    typer.Option(
        "--s3-anonymous",
        help="Let unsigned S3 reads (/modelcar) through; without it an S3 client signs "
        "with SigV4, the fleet token as its secret access key.",
    ),
]
StreamWait = Annotated[
    float,
    typer.Option(
        min=0,
        max=600,
        help="Seconds an S3 read of bytes not verified yet waits before 503 SlowDown.",
    ),
]
MaxUploads = Annotated[
    int,
    typer.Option(
        min=1,
        max=1024,
        help="Blob transfers served at once; past that a client is told 429 and goes to "
        "another peer.",
    ),
]
MaxBytes = Annotated[str | None, typer.Option(help="Disk budget, e.g. 500GiB.")]
High = Annotated[
    float, typer.Option(min=0.1, max=1.0, help="Evict when usage passes this share of the budget.")
]
Low = Annotated[float, typer.Option(min=0.1, max=1.0, help="…down to this share.")]
Checkpoint = Annotated[
    str, typer.Option(help="Make pulled bytes durable (resumable after a crash) every SIZE.")
]
MaxPercent = Annotated[
    float | None, typer.Option(min=1, max=100, help="Disk budget as % of the filesystem.")
]
JsonOut = Annotated[bool, typer.Option("--json", help="JSON output.")]
StallTimeout = Annotated[
    float,
    typer.Option(
        min=1,
        help="A source that delivers less than --min-speed over this many seconds of waiting "
        "is stalled: the next source resumes at the same offset.",
    ),
]
MinSpeed = Annotated[
    str, typer.Option(help="Minimum bytes per second a source must deliver, e.g. 16KiB.")
]


def _setup_logging(verbose: bool = True) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _pull_config(
    *,
    fleet_token_file: str | None = None,
    jobs: int,
    max_rate: str | None,
    mirror: list[str] | None,
    source: list[str] | None,
    checkpoint: str,
    stall_timeout: float,
    min_speed: str,
    docker_config: list[str] | None,
    plain_http: bool,
    insecure: bool,
    ca_file: str | None,
) -> PullConfig:
    """The pull flags ``run`` and ``pull`` share, as one model."""
    return PullConfig(
        jobs=jobs,
        max_rate=max_rate,
        mirrors=mirror or [],
        sources=source or [],
        checkpoint=checkpoint,
        stall_timeout=stall_timeout,
        min_speed=min_speed,
        docker_config=docker_config or [],
        plain_http=plain_http,
        insecure=insecure,
        ca_file=ca_file,
        fleet_token_file=fleet_token_file,
    )


@app.command()
def run(
    node: Annotated[
        str, typer.Option(envvar=["MODELCAR_NODE", "NODE_NAME"], help="This node's name.")
    ],
    cache_dir: CacheRoot = DEFAULT_CACHE_ROOT,
    api: Annotated[
        str | None, typer.Option(envvar=API_ENV, help="modelcar API for assignments and status.")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar=TOKEN_ENV, help="A node token for this node.")
    ] = None,
    token_file: Annotated[
        str | None,
        typer.Option(
            envvar=TOKEN_FILE_ENV,
            help="Read the node token from this file (a mounted Secret); re-read when it "
            "changes or the API answers 401.",
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(help="YAML `models: [REPO@sha256:…]` instead of the API (re-read on change)."),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            help="Node label KEY=VALUE for policies (repeatable); default in Kubernetes: "
            "the Node object's labels."
        ),
    ] = None,
    kubeconfig: Annotated[
        str | None,
        typer.Option(
            envvar="KUBECONFIG",
            help="Label the Node through this kubeconfig (in a pod: the service account).",
        ),
    ] = None,
    warm_cri: Annotated[
        bool,
        typer.Option(
            "--warm-cri",
            help="Also pull each ready model's image through the runtime's CRI socket and pin "
            "it, so KServe's oci:// path starts without a pull.",
        ),
    ] = False,
    cri_socket: Annotated[
        str, typer.Option(help="The CRI socket for --warm-cri.")
    ] = "/run/containerd/containerd.sock",
    interval: Annotated[float, typer.Option(help="Seconds between passes.")] = 30.0,
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
    listen: Annotated[
        str, typer.Option(help="HOST:PORT for /metrics, /healthz, /readyz ('' for none).")
    ] = "0.0.0.0:9090",
    serve: Annotated[
        str,
        typer.Option(
            envvar="MODELCAR_SERVE",
            help="HOST:PORT of the node's read-only registry: what it holds verified, by "
            "digest, to its containerd and its peers ('' for none; needs --fleet-token-file).",
        ),
    ] = "",
    serve_url: Annotated[
        str | None,
        typer.Option(
            envvar="MODELCAR_SERVE_URL",
            help="The URL peers reach --serve at, reported to the API (e.g. http://$NODE_IP:5050).",
        ),
    ] = None,
    max_uploads: MaxUploads = 8,
    s3_anonymous: S3Anonymous = False,
    stream_wait: StreamWait = 30.0,
    topology_label: Annotated[
        list[str] | None,
        typer.Option(
            help="A node label that says near (repeatable; the nodes source asks peers "
            "sharing more of them first). Default: topology.kubernetes.io/zone.",
        ),
    ] = None,
    fleet_token_file: FleetToken = None,
    scrub_every: Annotated[
        float, typer.Option(help="Seconds between re-hashes of each ready model.")
    ] = 86400.0,
    scrub_rate: Annotated[str, typer.Option(help="Re-hash speed cap per second.")] = "100MiB",
    jobs: Jobs = 4,
    max_rate: MaxRate = None,
    source: SourceChain = None,
    mirror: Mirror = None,
    max_bytes: MaxBytes = None,
    max_percent: MaxPercent = None,
    high_watermark: High = 0.95,
    low_watermark: Low = 0.85,
    checkpoint: Checkpoint = "64MiB",
    stall_timeout: StallTimeout = 30.0,
    min_speed: MinSpeed = "16KiB",
    docker_config: DockerConfigs = None,
    plain_http: PlainHttp = False,
    insecure: Insecure = False,
    ca_file: CaFile = None,
) -> None:
    """Keep this node's assigned models ready: pull, verify, publish, evict, scrub, report.

    With --serve, the node also answers S3 reads of its models' files under
    s3://modelcar/sha256-<hex>/<path> (path-style, on the same address): a model being
    pulled is readable range by range as its 64 MiB chunks verify (streamed start)."""
    from modelcar.cache_daemon.cri import RuntimeWarmer
    from modelcar.cache_daemon.daemon import Daemon
    from modelcar.cache_daemon.desired import DesiredFromApi, DesiredFromFile
    from modelcar.cache_daemon.metrics import Metrics, StatusServer
    from modelcar.cache_daemon.nodelabels import NodeLabeller
    from modelcar.cache_daemon.s3 import S3Reads
    from modelcar.cache_daemon.verified import Board

    cfg = DaemonConfig(
        node=node,
        cache_dir=cache_dir,
        api=api,
        token=token,
        token_file=token_file,
        config=config,
        labels=label or [],
        kubeconfig=kubeconfig,
        warm_cri=warm_cri,
        cri_socket=cri_socket,
        interval=interval,
        once=once,
        listen=listen,
        serve=serve,
        serve_url=serve_url,
        max_uploads=max_uploads,
        topology_labels=topology_label or ["topology.kubernetes.io/zone"],
        scrub_every=scrub_every,
        scrub_rate=scrub_rate,
        pull=_pull_config(
            fleet_token_file=fleet_token_file,
            jobs=jobs,
            max_rate=max_rate,
            mirror=mirror,
            source=source,
            checkpoint=checkpoint,
            stall_timeout=stall_timeout,
            min_speed=min_speed,
            docker_config=docker_config,
            plain_http=plain_http,
            insecure=insecure,
            ca_file=ca_file,
        ),
        budget=BudgetConfig(
            max_bytes=max_bytes,
            max_percent=max_percent,
            high_watermark=high_watermark,
            low_watermark=low_watermark,
        ),
    ).check()
    _setup_logging()
    file_sources = DesiredFromFile(config).sources() if config and not source else None
    options = cfg.daemon_options(file_sources)
    client = ApiClient(api, token, token_file=token_file) if api else None
    desired = (
        DesiredFromApi(client, node, options.labels) if client else DesiredFromFile(config or "")
    )
    metrics = Metrics()
    options.serve_url = cfg.advertised()
    options.pull.fleet = Fleet(
        token=options.pull.fleet.token,
        holders=(lambda digest: client.holders(digest).holders) if client else None,
        node=node,
        labels=lambda: dict(desired.labels) if isinstance(desired, DesiredFromApi) else {},
        topology=tuple(cfg.topology_labels),
    )
    log = logging.getLogger("modelcar.cache")
    with CacheDir(cache_dir) as cache:
        labeller = NodeLabeller.from_environment(node, kubeconfig)
        warmer = RuntimeWarmer(cri_socket) if warm_cri else None
        board = Board() if serve else None
        daemon = Daemon(cache, options, desired, client, metrics, labeller, warmer, board)
        server = blobs = None
        if listen:
            host, _, port = listen.rpartition(":")
            server = StatusServer(host or "0.0.0.0", int(port), metrics, daemon.ready).start()
            log.info("status on %s:%d", host, server.port)
        if serve:
            s3 = S3Reads(cache, board, daemon.assigned, stream_wait)
            blobs = _blob_server(
                cache, serve, options.pull.fleet.token, max_uploads, metrics, s3, s3_anonymous
            )
            log.info("serving what the node holds on %s", options.serve_url)
        control = ControlServer(cache.root, daemon.control, daemon.events).start()
        signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
        try:
            daemon.run(once=once)
        finally:
            control.stop()
            if server:
                server.stop()
            if blobs:
                blobs.stop()


def _blob_server(
    cache: CacheDir,
    listen: str,
    token: str | None,
    max_uploads: int,
    metrics: Any = None,
    s3: S3Reads | None = None,
    s3_anonymous: bool = False,
) -> BlobServer:
    from modelcar.cache_daemon.serve import BlobServer, listen_address

    host, port = listen_address(listen)
    assert token is not None  # checked with the flags
    counter = metrics.served_bytes.inc if metrics is not None else None
    try:
        return BlobServer(
            cache,
            host,
            port,
            token,
            max_uploads=max_uploads,
            on_served=counter,
            s3=s3,
            s3_anonymous=s3_anonymous,
        ).start()
    except OSError as e:
        raise UsageError(f"cannot listen ({e.strerror})", subject=listen) from None


@app.command("hosts-toml")
def hosts_toml(
    registry: Annotated[
        list[str],
        typer.Option(help="A registry HOST[:PORT] whose pulls go to the node first (repeatable)."),
    ],
    endpoint: Annotated[
        str, typer.Option(help="The node's --serve URL as containerd reaches it (http://IP:PORT).")
    ],
    certs_dir: Annotated[
        str, typer.Option(help="containerd's config_path.")
    ] = "/etc/containerd/certs.d",
    fleet_token_file: FleetToken = None,
    plain_http: PlainHttp = False,
) -> None:
    """Write containerd's hosts.toml for each registry: the node's endpoint first (pull
    by digest, with the fleet token), the registry itself for tags and the rest.

    containerd re-reads these at every pull: KServe's oci:// modelcars, image volumes
    and --warm-cri then take what the node holds from local disk. The chart runs this
    in an init container (cache.serve.containerdHosts)."""
    from modelcar.cache_daemon.hosts import write_hosts

    if not fleet_token_file:
        raise UsageError("hosts-toml needs the fleet credential", hint="--fleet-token-file FILE")
    token = read_token(fleet_token_file)
    for path in write_hosts(Path(certs_dir), registry, endpoint, token, plain_http=plain_http):
        typer.echo(path)


@app.command()
def serve(
    cache_dir: CacheRoot = DEFAULT_CACHE_ROOT,
    listen: Annotated[
        str, typer.Option(envvar="MODELCAR_SERVE", help="HOST:PORT to listen on.")
    ] = "127.0.0.1:5050",
    fleet_token_file: FleetToken = None,
    max_uploads: MaxUploads = 8,
    s3_anonymous: S3Anonymous = False,
) -> None:
    """Serve what the cache dir holds verified as a read-only registry, by digest.

    The same endpoint as `run --serve`, beside a running daemon or alone: manifests,
    configs and base layers the node kept, modelcar layers regenerated byte for byte
    from their verified files, raw ModelPack layers from their file. Tags are never
    served (point containerd's hosts.toml at it with capabilities ["pull"]); every
    request needs the fleet token (Authorization: Bearer TOKEN). The published models'
    files are also readable as S3 objects, s3://modelcar/sha256-<hex>/<path> (SigV4
    with the fleet token as the secret key). Stops on SIGTERM or Ctrl-C."""
    if not fleet_token_file:
        raise UsageError(
            "serve needs the fleet credential",
            hint="--fleet-token-file FILE (MODELCAR_FLEET_TOKEN_FILE)",
        )
    token = read_token(fleet_token_file)
    _setup_logging()
    cache = CacheDir.reader(cache_dir)
    server = _blob_server(cache, listen, token, max_uploads, None, None, s3_anonymous)
    logging.getLogger("modelcar.cache").info(
        "serving %s on %s:%d", cache.root, listen.rpartition(":")[0], server.port
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        cache.close()


@app.command()
def pull(
    ref: Annotated[str, typer.Argument(metavar="REF", help="REPO@sha256:… or oci:PATH@sha256:…")],
    cache_dir: CacheRoot = DEFAULT_CACHE_ROOT,
    json_out: JsonOut = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    jobs: Jobs = 4,
    max_rate: MaxRate = None,
    source: SourceChain = None,
    mirror: Mirror = None,
    max_bytes: MaxBytes = None,
    max_percent: MaxPercent = None,
    checkpoint: Checkpoint = "64MiB",
    stall_timeout: StallTimeout = 30.0,
    min_speed: MinSpeed = "16KiB",
    docker_config: DockerConfigs = None,
    plain_http: PlainHttp = False,
    insecure: Insecure = False,
    ca_file: CaFile = None,
    fleet_token_file: FleetToken = None,
) -> None:
    """Pull one pinned model in the foreground; print the published directory last.

    Any model image: a modelcar, a hand-built one (a container image with /models;
    layers applied in order, whiteouts honoured), a CNCF ModelPack artifact or a KitOps
    ModelKit; every byte is checked and files are published 0644 and dirs 0755. After
    an interruption the pull resumes: a modelcar's layer or a raw ModelPack layer from
    where it stopped, a tar layer of another format (gzip or zstd especially) from its
    beginning.

    With a daemon running on the cache dir, the daemon pulls it (with its own options)
    and this waits for the result."""
    pinned(ref)
    pull_cfg = _pull_config(
        fleet_token_file=fleet_token_file,
        jobs=jobs,
        max_rate=max_rate,
        mirror=mirror,
        source=source,
        checkpoint=checkpoint,
        stall_timeout=stall_timeout,
        min_speed=min_speed,
        docker_config=docker_config,
        plain_http=plain_http,
        insecure=insecure,
        ca_file=ca_file,
    )
    budget = BudgetConfig(max_bytes=max_bytes, max_percent=max_percent).budget()
    options = pull_cfg.pull_options()  # a bad chain or size is refused before anything
    _setup_logging(not quiet)
    done = control.pull(Path(cache_dir), ref)
    if done is not None:
        if json_out:
            typer.echo(done.model_dump_json())
        typer.echo(done.path)
        return
    with CacheDir(cache_dir) as cache:
        evictor = Evictor(cache, budget, set)
        result = Puller(cache, options, make_room=evictor.make_room).pull(ref)
    if json_out:
        typer.echo(result.model_dump_json())
    elif len(result.by_source) > 1 or set(result.by_source) - {"origin"}:
        parts = ", ".join(f"{k} {human(v)}" for k, v in sorted(result.by_source.items()))
        typer.echo(f"bytes by source: {parts}", err=True)
    typer.echo(result.path)


def _reader(cache_dir: str) -> CacheDir:
    return CacheDir.reader(cache_dir)


def _ago(ts: float) -> str:
    if not ts:
        return "never"
    s = max(0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit} ago"
    return f"{s:.0f}s ago"


@app.command("ls")
def list_models(cache_dir: CacheRoot = DEFAULT_CACHE_ROOT, json_out: JsonOut = False) -> None:
    """List the models in a cache dir: state, size, last use, and (with a daemon
    running) whether it is assigned. Reads only; works beside the daemon."""
    if not (Path(cache_dir) / "state.db").is_file():
        typer.echo(f"no models: {cache_dir} holds no cache (yet)", err=True)
        return
    status = control.status(Path(cache_dir))
    assigned = set(status.assigned) if status else None
    cache = _reader(cache_dir)
    try:
        records = cache.db.all()
    finally:
        cache.close()
    for r in records:
        flag = None if assigned is None else r.digest in assigned
        if json_out:
            typer.echo(json.dumps({**r.__dict__, "assigned": flag}))
        else:
            mark = {None: "?", True: "assigned", False: "-"}[flag]
            err = f"  {r.error}" if r.error else ""
            typer.echo(
                f"{r.digest}  {r.state:8} {r.size:>14}  {_ago(r.last_used):>9}  "
                f"{mark:8}  {r.image}{err}"
            )


@app.command()
def status(cache_dir: CacheRoot = DEFAULT_CACHE_ROOT, json_out: JsonOut = False) -> None:
    """What the running daemon is doing now: each pull (bytes, rate, ETA, source), the
    last error per model, the disk budget."""
    answer = control.status(Path(cache_dir))
    if answer is None:
        raise UsageError(
            "no daemon is running on this cache dir",
            subject=str(cache_dir),
            hint="`modelcar-cache ls` reads the cache without one",
        )
    if json_out:
        typer.echo(json.dumps(answer.model_dump(), sort_keys=True))
        return
    disk = answer.disk
    disk_use = (
        f"{human(disk.used_bytes)} used of a {human(disk.budget_bytes)} budget "
        f"({human(disk.capacity_bytes)} disk)"
    )
    typer.echo(
        f"node {answer.node} (daemon pid {answer.pid}), cache "
        f"{answer.cache_dir}: {disk_use}, {len(answer.assigned)} assigned"
    )
    for p in answer.pulls:
        pct = 100 * p.bytes_done / p.bytes_total if p.bytes_total else 0.0
        eta = f"ETA {p.eta_seconds}s" if p.eta_seconds is not None else "ETA ?"
        typer.echo(
            f"pulling {p.digest[:19]}  {p.model}  {human(p.bytes_done)} of "
            f"{human(p.bytes_total)} ({pct:.0f}%)  {human(p.rate)}/s  {eta}  "
            f"from {p.source}"
        )
    if not answer.pulls:
        typer.echo("no pull in progress")
    for digest, error in sorted(answer.errors.items()):
        typer.echo(f"error   {digest[:19]}  {error}")


@app.command()
def events(
    cache_dir: CacheRoot = DEFAULT_CACHE_ROOT,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events as they happen.")
    ] = False,
) -> None:
    """The running daemon's state changes (pulling, ready, failed, evicted, …) as JSON
    lines: the recent ones, then with --follow each new one."""
    lines = control.events(Path(cache_dir), follow)
    if lines is None:
        raise UsageError("no daemon is running on this cache dir", subject=str(cache_dir))
    try:
        for line in lines:
            typer.echo(line)
    except KeyboardInterrupt:
        return


@app.command()
def gc(
    cache_dir: CacheRoot = DEFAULT_CACHE_ROOT,
    max_bytes: MaxBytes = None,
    max_percent: MaxPercent = None,
    keep: Annotated[
        list[str] | None, typer.Option(help="Pinned REF never to evict (repeatable).")
    ] = None,
) -> None:
    """Evict least recently used models over the budget; remove leftover partial pulls.

    With a daemon running on the cache dir, the daemon does it: by its own budget, or
    down to --max-bytes/--max-percent once; its assigned models and pulls are kept."""
    _setup_logging()
    keep_digests = {pinned(k).digest or "" for k in keep or []}
    answer = control.gc(
        Path(cache_dir),
        GcArgs(
            keep=sorted(keep_digests),
            max_bytes=parse_size(max_bytes) if max_bytes else None,
            max_percent=max_percent,
        ),
    )
    if answer is not None:
        for digest in answer.evicted:
            typer.echo(digest)
        typer.echo(f"evicted {len(answer.evicted)} models (by the running daemon)", err=True)
        return
    with CacheDir(cache_dir) as cache:
        for digest in cache.staged():
            cache.remove_staging(digest)
        evictor = Evictor(
            cache,
            BudgetConfig(max_bytes=max_bytes, max_percent=max_percent).budget(),
            lambda: keep_digests,
        )
        evicted = evictor.collect()
    typer.echo(f"evicted {len(evicted)} models", err=True)


@app.command()
def verify(
    digests: Annotated[
        list[str] | None, typer.Argument(metavar="[DIGEST]...", help="Default: every model.")
    ] = None,
    cache_dir: CacheRoot = DEFAULT_CACHE_ROOT,
    quarantine: Annotated[
        bool,
        typer.Option(
            "--quarantine",
            help="Move a corrupt model to quarantine/ (done by the daemon when one runs).",
        ),
    ] = False,
) -> None:
    """Re-hash published models against their file index; exit 1 if any differ.
    Reads only, beside the daemon too, unless --quarantine."""
    from modelcar.cache_daemon.scrub import verify_models

    args = VerifyArgs(digests=digests or [], quarantine=True)
    answer = control.verify(Path(cache_dir), args) if quarantine else None
    if answer is not None:
        results = answer
    elif quarantine:
        with CacheDir(cache_dir) as cache:
            results = verify_models(cache, digests or [], quarantine=True)
    else:
        cache = _reader(cache_dir)
        try:
            results = verify_models(cache, digests or [], quarantine=False)
        finally:
            cache.close()
    for r in results:
        verdict = "ok" if not r.problems else "CORRUPT: " + r.problems[0]
        moved = f" (moved to {r.quarantined})" if r.quarantined else ""
        typer.echo(f"{r.digest}  {verdict}{moved}")
    bad = sum(bool(r.problems) for r in results)
    if bad:  # exit 1, as a corrupt layer does
        raise DigestMismatch(f"{bad} of {len(results)} models differ from their file index")


def main(argv: list[str] | None = None) -> None:
    os.umask(0o022)
    run_cli(app, "modelcar-cache", argv)


if __name__ == "__main__":  # pragma: no cover
    main()
