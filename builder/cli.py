"""``modelcar``: build, inspect and verify modelcar images.

Every failure a user can cause ends in one line on stderr and a non-zero
exit; the last line on stdout of ``build`` is always the pinned reference.
"""

from __future__ import annotations

import re
import sys
from typing import Annotated

import typer

from modelcar.errors import ModelcarError, UsageError
from modelcar.reference import parse_ref
from modelcar.store import StoreOptions

app = typer.Typer(
    name="modelcar",
    help="Package model weights as digest-pinned OCI images (modelcars) and inspect them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
base_app = typer.Typer(
    help="The minimal busybox base image under model layers.", no_args_is_help=True
)
app.add_typer(base_app, name="base")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.I)
_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "KI": 1024,
    "KIB": 1024,
    "M": 10**6,
    "MB": 10**6,
    "MI": 1 << 20,
    "MIB": 1 << 20,
    "G": 10**9,
    "GB": 10**9,
    "GI": 1 << 30,
    "GIB": 1 << 30,
    "T": 10**12,
    "TB": 10**12,
    "TI": 1 << 40,
    "TIB": 1 << 40,
}


def parse_size(text: str) -> int:
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError("invalid size", subject=text, hint="use e.g. 64MiB, 52000MiB, 2GiB")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


PlainHttp = Annotated[
    bool,
    typer.Option(
        "--plain-http", envvar="MODELCAR_PLAIN_HTTP", help="Talk HTTP, not HTTPS, to the registry."
    ),
]
Insecure = Annotated[
    bool, typer.Option("--insecure", help="Do not verify the registry's TLS certificate.")
]
CaFile = Annotated[
    str | None,
    typer.Option(
        "--ca-file", envvar="MODELCAR_CA_FILE", help="PEM file of CAs to trust for the registry."
    ),
]
DockerConfig = Annotated[
    str | None,
    typer.Option(
        "--docker-config",
        envvar="DOCKER_CONFIG",
        help="docker config.json (or its dir) with registry credentials.",
    ),
]


def _store_options(
    plain_http: bool, insecure: bool, ca_file: str | None, docker_config: str | None
) -> StoreOptions:
    return StoreOptions(
        plain_http=plain_http, insecure=insecure, ca_file=ca_file, docker_config=docker_config
    )


@app.command()
def build(
    source: Annotated[
        str, typer.Argument(metavar="SOURCE", help="A local directory or file:///dir.")
    ],
    target: Annotated[
        str,
        typer.Argument(
            metavar="TARGET",
            help="HOST[:PORT]/REPO[:TAG] (a registry) or oci:PATH[:TAG] (an OCI layout dir).",
        ),
    ],
    base: Annotated[
        str | None,
        typer.Option(
            help="Base image REF (registry or oci:), 'scratch' for weights only. "
            "Default: a static busybox base, so KServe's modelcar commands run."
        ),
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            "--include", help="Only package files matching GLOB (repeatable).", metavar="GLOB"
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            help="Skip files matching GLOB; 'dir/' skips a directory (repeatable).",
            metavar="GLOB",
        ),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Also tag the image TAG (repeatable).")
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the build record as one JSON line before the reference."
        ),
    ] = False,
    jobs: Annotated[
        int, typer.Option(min=1, max=64, help="Layers hashed/uploaded in parallel.")
    ] = 4,
    max_layers: Annotated[
        int,
        typer.Option(min=2, max=127, help="At most this many layers; small neighbours are merged."),
    ] = 100,
    large_file_threshold: Annotated[
        str, typer.Option(help="Files this large get a layer of their own.")
    ] = "64MiB",
    max_layer_size: Annotated[
        str | None, typer.Option(help="Fail before upload if a layer exceeds SIZE (ECR: 52000MiB).")
    ] = None,
    stat_cache: Annotated[
        bool, typer.Option(help="Remember digests of unchanged files between builds.")
    ] = True,
    source_uri: Annotated[
        str | None,
        typer.Option(
            help="Provenance to record for a local SOURCE, e.g. a git URL@commit "
            "(default: file:<dirname>)."
        ),
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(envvar="MODELCAR_API", help="modelcar API to register the version with."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    plain_http: PlainHttp = False,
    insecure: Insecure = False,
    ca_file: CaFile = None,
    docker_config: DockerConfig = None,
) -> None:
    """Package SOURCE into a modelcar image at TARGET; print the pinned reference last.

    Model files go under /models/ (one layer per large file, small files grouped),
    over a base with sh/ls/ln/sleep. The build is reproducible: the same files and
    options give the same digest, in a registry or an oci: layout. Tags move only
    after every blob and the manifest are in place.
    """
    from builder.build import Builder, BuildOptions
    from builder.progress import Progress
    from builder.sources.base import Selection
    from builder.sources.local import LocalSource

    target_ref = parse_ref(target)
    if target_ref.digest:
        raise UsageError(
            "a build target cannot name a digest",
            subject=target,
            hint="give a tag or none; the digest is printed",
        )
    layer_limit = parse_size(max_layer_size) if max_layer_size else None
    if layer_limit is None and ".dkr.ecr." in str(target_ref):
        layer_limit = 52000 << 20  # ECR private caps a layer at 52,000 MiB
    options = BuildOptions(
        base=base,
        tags=tag or [],
        jobs=jobs,
        max_layers=max_layers,
        large_file_threshold=parse_size(large_file_threshold),
        max_layer_size=layer_limit,
        stat_cache=stat_cache,
        store=_store_options(plain_http, insecure, ca_file, docker_config),
    )
    src = LocalSource(
        source, Selection(include=include or (), exclude=exclude or ()), uri=source_uri
    )
    progress = Progress(quiet=quiet)
    try:
        record = Builder(src, target_ref, options, progress).run()
    finally:
        progress.close()
    if api:
        progress.log("--api: registration arrives with the API; nothing was registered")
    if not quiet:
        mib = 1 << 20
        progress.log(
            f"built {record.digest} in {record.seconds:.1f}s: "
            f"{record.bytes_uploaded / mib:.1f} MiB sent, "
            f"{record.bytes_skipped / mib:.1f} MiB already there"
        )
    if json_out:
        typer.echo(record.model_dump_json())
    typer.echo(record.reference)


@base_app.command("create")
def base_create(
    target: Annotated[
        str, typer.Argument(metavar="TARGET", help="HOST/REPO[:TAG] or oci:PATH[:TAG].")
    ],
    busybox: Annotated[
        str | None,
        typer.Option(
            envvar="MODELCAR_BUSYBOX", help="Static busybox binary (default /bin/busybox)."
        ),
    ] = None,
    plain_http: PlainHttp = False,
    insecure: Insecure = False,
    ca_file: CaFile = None,
    docker_config: DockerConfig = None,
) -> None:
    """Write the default base image (static busybox) to TARGET; print its pinned reference."""
    from builder.base import busybox_base
    from modelcar import mediatypes as mt
    from modelcar.reference import DEFAULT_TAG
    from modelcar.store import open_store

    ref = parse_ref(target)
    img = busybox_base(busybox)
    store = open_store(
        ref, _store_options(plain_http, insecure, ca_file, docker_config), create=True
    )
    for digest, data in img.blobs.items():
        if not store.has_blob(digest):
            store.put_blob(digest, len(data), lambda d=data: [d])
    assert img.manifest_bytes is not None
    digest = store.put_manifest(img.manifest_bytes, mt.OCI_MANIFEST, img.digest or "")
    store.put_manifest(img.manifest_bytes, mt.OCI_MANIFEST, ref.tag or DEFAULT_TAG)
    typer.echo(str(ref.pinned(digest)))


@app.command()
def inspect(
    ref: Annotated[
        str, typer.Argument(metavar="REF", help="An image reference, registry or oci:.")
    ],
    json_out: Annotated[
        bool, typer.Option("--json", help="Manifest, config summary and file index as JSON.")
    ] = False,
    plain_http: PlainHttp = False,
    insecure: Insecure = False,
    ca_file: CaFile = None,
    docker_config: DockerConfig = None,
) -> None:
    """Show a modelcar's manifest summary and file index."""
    from builder.inspect import describe, render

    info = describe(parse_ref(ref), _store_options(plain_http, insecure, ca_file, docker_config))
    typer.echo(info.model_dump_json(indent=2) if json_out else render(info))


@app.command()
def verify(
    ref: Annotated[
        str, typer.Argument(metavar="REF", help="An image reference, registry or oci:.")
    ],
    plain_http: PlainHttp = False,
    insecure: Insecure = False,
    ca_file: CaFile = None,
    docker_config: DockerConfig = None,
) -> None:
    """Download every blob again and check each layer digest and each file's sha256."""
    from builder.inspect import verify_image

    n_layers, n_files = verify_image(
        parse_ref(ref), _store_options(plain_http, insecure, ca_file, docker_config)
    )
    typer.echo(f"ok: {n_layers} layers and {n_files} files verified")


def run_cli(application: typer.Typer, prog: str, argv: list[str] | None = None) -> None:
    """Run a typer app; expected failures become one line on stderr and a non-zero exit.

    Usage errors are typer's own (standalone mode, exit 2).
    """
    try:
        application(args=argv, prog_name=prog)
    except ModelcarError as e:
        print(f"{prog}: error: {e.one_line()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"{prog}: error: {e.strerror or e}{where}", file=sys.stderr)
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    run_cli(app, "modelcar", argv)


if __name__ == "__main__":  # pragma: no cover
    main()
