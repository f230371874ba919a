"""``modelcar``: build, inspect and verify modelcar images.

Every failure a user can cause ends in one line on stderr and a non-zero
exit; the last line on stdout of ``build`` is always the pinned reference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from modelcar.cliutil import (
    CaFile,
    DockerConfigs,
    Insecure,
    PlainHttp,
    new_app,
    parse_size,
    run_cli,
    store_options,
)
from modelcar.contract.client import API_ENV, TOKEN_ENV, ApiClient
from modelcar.errors import ModelcarError, UsageError
from modelcar.oci.platform import parse_platform
from modelcar.oci.reference import parse_ref

if TYPE_CHECKING:
    from modelcar.builder.progress import Progress
    from modelcar.builder.sources.base import Source
    from modelcar.contract.build import BuildRecord
    from modelcar.trust.cosign import Signature

app = new_app(
    "modelcar",
    "Package model weights as digest-pinned OCI images (modelcars), inspect them, and "
    "resolve model names through the modelcar API.",
)
base_app = typer.Typer(
    help="The minimal busybox base image under model layers.", no_args_is_help=True
)
app.add_typer(base_app, name="base")


Api = Annotated[
    str | None,
    typer.Option("--api", envvar=API_ENV, help="modelcar API URL, e.g. http://modelcar-api:8080."),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token", envvar=TOKEN_ENV, help="API bearer token (better set in the environment)."
    ),
]


@app.command()
def build(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="A local directory (or file:///dir); hf://ORG/NAME[@REVISION] "
            "(HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE apply); models:/NAME/VERSION, "
            "models:/NAME@ALIAS or mlflow://NAME@ALIAS (MLFLOW_TRACKING_URI; artifacts stream "
            "from the server's proxy, S3 or a path, other stores are downloaded by MLflow to a "
            "temp dir first); s3://BUCKET/PREFIX (AWS credential chain, AWS_ENDPOINT_URL).",
        ),
    ],
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="TARGET",
            help="HOST[:PORT]/REPO[:TAG] (a registry) or oci:PATH[:TAG] (an OCI layout dir).",
        ),
    ] = None,
    s3_endpoint: Annotated[
        str | None,
        typer.Option(help="S3-compatible endpoint URL for s3:// sources (else AWS_ENDPOINT_URL)."),
    ] = None,
    list_only: Annotated[
        bool,
        typer.Option("--list", help="Show what would be packaged, and its size; build nothing."),
    ] = False,
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
    platform: Annotated[
        list[str] | None,
        typer.Option(
            "--platform",
            metavar="OS/ARCH",
            help="Build for these of the base's platforms (repeatable; default: all of a "
            "multi-platform base's). More than one gives an image index.",
        ),
    ] = None,
    sign_key: Annotated[
        str | None,
        typer.Option(
            metavar="KEY",
            help="Sign the image (cosign's layout) with this private key: a PEM file or env://VAR.",
        ),
    ] = None,
    image_format: Annotated[
        str,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="modelcar (default); modelpack: a CNCF ModelPack artifact, one raw layer per "
            "file; both: the modelcar, and the ModelPack as its referrer tagged TAG-modelpack "
            "(the source is read once).",
        ),
    ] = "modelcar",
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
    api: Api = None,
    token: Token = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model name to register under (default: the repository's last part)."),
    ] = None,
    alias: Annotated[
        str | None,
        typer.Option(help="With --api: point this alias (e.g. prod) at the new version."),
    ] = None,
    reason: Annotated[str, typer.Option(help="With --alias: why, kept in its history.")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")] = False,
    plain_http: PlainHttp = False,
    insecure: Insecure = False,
    ca_file: CaFile = None,
    docker_config: DockerConfigs = None,
) -> None:
    """Package SOURCE into a modelcar image at TARGET; print the pinned reference last.

    Model files go under /models/ (one layer per large file, small files grouped),
    over a base with sh/ls/ln/sleep. The build is reproducible: the same files and
    options give the same digest, in a registry or an oci: layout. Tags move only
    after every blob and the manifest are in place.
    """
    from modelcar.builder import service
    from modelcar.builder.build import BuildOptions
    from modelcar.builder.progress import Progress
    from modelcar.builder.register import check_names, default_model_name
    from modelcar.builder.sources import open_source
    from modelcar.builder.sources.base import Selection

    if target is None and not list_only:
        raise UsageError("missing TARGET", hint="give HOST/REPO[:TAG] or oci:PATH, or use --list")
    target_ref = parse_ref(target or "oci:.")
    if target_ref.digest:
        raise UsageError(
            "a build target cannot name a digest",
            subject=target,
            hint="give a tag or none; the digest is printed",
        )
    if (model or alias) and not api:
        raise UsageError("--model and --alias need --api URL (or MODELCAR_API)")
    model_name = model or (default_model_name(target_ref) if api else "")
    if api:
        check_names(model_name, alias)
    service.check_format(
        image_format, signing=bool(sign_key), platforms=bool(platform), base=bool(base)
    )
    options = BuildOptions(
        base=base,
        tags=tag or [],
        jobs=jobs,
        max_layers=max_layers,
        large_file_threshold=parse_size(large_file_threshold),
        max_layer_size=service.layer_limit(
            target_ref, parse_size(max_layer_size) if max_layer_size else None
        ),
        stat_cache=stat_cache,
        store=store_options(
            plain_http=plain_http, insecure=insecure, ca_file=ca_file, docker_config=docker_config
        ),
        platforms=[parse_platform(p) for p in platform] if platform else None,
    )
    private = None
    if sign_key:  # a bad key fails before anything is built
        from modelcar.trust import keys

        private = keys.load_private_key(sign_key)
    progress = Progress(quiet=quiet)
    selection = Selection(include=include or (), exclude=exclude or ())
    src = open_source(
        source, selection, uri=source_uri, on_wait=progress.log, s3_endpoint=s3_endpoint
    )
    if list_only:
        _list_files(src)
        return
    record, signature = service.build(
        image_format, src, target_ref, options, progress, key=private, selection=selection
    )
    if json_out:
        typer.echo(record.model_dump_json())
    if api:
        _register(api, token, record, model_name, alias, reason, progress, signature)
    typer.echo(record.reference)


def _list_files(src: Source) -> None:
    files = src.files()
    for f in files:
        typer.echo(f"{f.size:>14}  {f.sha256 or '':71}  {f.path}")
    total = sum(f.size for f in files)
    typer.echo(f"{len(files)} files, {total} bytes ({total / (1 << 30):.2f} GiB) from {src.uri}")


def _register(
    api: str,
    token: str | None,
    record: BuildRecord,
    model: str,
    alias: str | None,
    reason: str,
    progress: Progress,
    signature: Signature | None = None,
) -> None:
    from modelcar.builder.register import register

    try:
        with ApiClient(api, token) as client:
            version, created = register(client, record, model, alias, reason, signature)
    except ModelcarError as e:
        # The image is built and pushed: say so, then fail with the API's reason.
        typer.echo(record.reference)
        e.hint = (e.hint + "; " if e.hint else "") + (
            "the image is pushed; run the same build again to register it (nothing is re-sent)"
        )
        raise
    what = "registered" if created else "already registered as"
    moved = f", {alias} -> {version.version}" if alias else ""
    signed = f", signed by {', '.join(version.signed_by)}" if version.signed_by else ""
    progress.log(f"{what} {model}:{version.version}{moved}{signed}")


@base_app.command("create")
def base_create(
    target: Annotated[
        str, typer.Argument(metavar="TARGET", help="HOST/REPO[:TAG] or oci:PATH[:TAG].")
    ],
    platform: Annotated[
        list[str] | None,
        typer.Option(
            "--platform",
            metavar="OS/ARCH",
            help="Make a multi-platform base (an image index) for these platforms "
            "(repeatable); each needs its busybox (--busybox OS/ARCH=PATH).",
        ),
    ] = None,
    busybox: Annotated[
        list[str] | None,
        typer.Option(
            envvar="MODELCAR_BUSYBOX",
            metavar="[OS/ARCH=]PATH",
            help="Static busybox binary (default /bin/busybox): PATH for this machine's "
            "platform, OS/ARCH=PATH for another (repeatable).",
        ),
    ] = None,
    plain_http: PlainHttp = False,
    insecure: Insecure = False,
    ca_file: CaFile = None,
    docker_config: DockerConfigs = None,
) -> None:
    """Write the default base image (static busybox) to TARGET; print its pinned reference.

    With --platform (once per platform), an image index over one busybox image per
    platform: `modelcar build --base` on it builds every platform over the same model
    layers. Each binary's ELF machine must match its platform. Reproducible: the same
    binaries give the same digests.
    """
    from modelcar.builder import service

    options = store_options(
        plain_http=plain_http, insecure=insecure, ca_file=ca_file, docker_config=docker_config
    )
    platforms = [parse_platform(p) for p in platform or []]
    typer.echo(service.create_base(parse_ref(target), options, platforms, busybox or []))


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
    docker_config: DockerConfigs = None,
) -> None:
    """Show a modelcar's manifest summary and file index."""
    from modelcar.builder.inspect import describe, render

    info = describe(
        parse_ref(ref),
        store_options(
            plain_http=plain_http, insecure=insecure, ca_file=ca_file, docker_config=docker_config
        ),
    )
    typer.echo(info.model_dump_json(indent=2) if json_out else render(info))


@app.command()
def verify(
    ref: Annotated[
        str, typer.Argument(metavar="REF", help="An image reference, registry or oci:.")
    ],
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            metavar="PUB",
            help="Also require a signature by this public key (PEM file or env://VAR; "
            "repeatable: any one of them), and check the attestations it signed.",
        ),
    ] = None,
    require_source: Annotated[
        str | None,
        typer.Option(
            "--require-provenance-source",
            metavar="PREFIX",
            help="Require SLSA provenance, signed by --key, naming a source under PREFIX "
            "(e.g. hf://acme/).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="What was checked, as JSON.")] = False,
    plain_http: PlainHttp = False,
    insecure: Insecure = False,
    ca_file: CaFile = None,
    docker_config: DockerConfigs = None,
) -> None:
    """Download every blob again and check each layer digest and each file's sha256;
    with --key, first the image's cosign signature and its signed attestations
    (SLSA provenance, the model-signing bundle)."""
    import json

    from modelcar.builder import service
    from modelcar.trust import keys

    options = store_options(
        plain_http=plain_http, insecure=insecure, ca_file=ca_file, docker_config=docker_config
    )
    public = [keys.load_public_key(k) for k in key or []]
    checked = service.verify(parse_ref(ref), options, public, require_source)
    checked.reference = ref
    typer.echo(json.dumps(checked.as_dict()) if json_out else checked.line())


@app.command()
def sign(
    ref: Annotated[str, typer.Argument(metavar="REF", help="The image: REPO:TAG or REPO@sha256:…")],
    key: Annotated[
        str,
        typer.Option(
            "--key",
            metavar="KEY",
            help="ECDSA P-256 private key: a PEM file or env://VAR (encrypted: "
            "$MODELCAR_KEY_PASSWORD).",
        ),
    ],
    plain_http: PlainHttp = False,
    insecure: Insecure = False,
    ca_file: CaFile = None,
    docker_config: DockerConfigs = None,
    api: Api = None,
    token: Token = None,
) -> None:
    """Sign an image the way cosign does (tag sha256-<hex>.sig in its repository), so
    `cosign verify --key` and `modelcar verify --key` accept it, and attach a
    model-signing bundle of its files; print it pinned. (Provenance is attached by
    `build --sign-key`, which knows how the image was made.) With --api, the API
    records the signature too, for the versions with this digest."""
    from modelcar.builder import service
    from modelcar.trust import keys

    private = keys.load_private_key(key)
    image_ref = parse_ref(ref)
    options = store_options(
        plain_http=plain_http, insecure=insecure, ca_file=ca_file, docker_config=docker_config
    )
    digest, signature = service.sign(image_ref, options, private)
    typer.echo(f"signed with {keys.key_id(private)}", err=True)
    if api:
        from modelcar.builder.register import record_signature

        with ApiClient(api, token) as client:
            signed_by = record_signature(client, digest, signature)
        trusted = ", ".join(signed_by) or "no trusted key"
        typer.echo(f"recorded by the API; signed by {trusted}", err=True)
    typer.echo(str(image_ref.pinned(digest)))


@app.command()
def keygen(
    prefix: Annotated[
        str, typer.Argument(metavar="PREFIX", help="Writes PREFIX.key and PREFIX.pub.")
    ] = "modelcar",
) -> None:
    """Write an ECDSA P-256 key pair for `sign` and `build --sign-key` (PEM, as cosign's);
    the private key is encrypted with $MODELCAR_KEY_PASSWORD when it is set."""
    import os
    from pathlib import Path

    from modelcar.trust import keys

    private_path, public_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (private_path, public_path):
        if path.exists():
            raise UsageError("will not overwrite a key file", subject=str(path))
    private, public = keys.generate(os.environ.get(keys.PASSWORD_ENV) or None)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    public_path.write_bytes(public)
    typer.echo(f"private key {private_path} (mode 0600), public key {public_path}", err=True)
    typer.echo(str(public_path))


@app.command()
def resolve(
    ref: Annotated[
        str, typer.Argument(metavar="REF", help="NAME@ALIAS, NAME:VERSION or NAME@sha256:HEX.")
    ],
    api: Api = None,
    token: Token = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the answer as one JSON line first.")
    ] = False,
    kserve: Annotated[
        bool, typer.Option("--kserve", help="Print a KServe InferenceService (JSON) instead.")
    ] = False,
    mode: Annotated[
        str | None,
        typer.Option(
            help="How the pod reads the model: oci (the image), hostpath (the node cache) or "
            "stream (vLLM --load-format runai_streamer from its node's S3 endpoint)."
        ),
    ] = None,
) -> None:
    """Ask the API which image a model reference means; print the pinned image last."""
    import json

    from modelcar.contract.modelref import parse_model_ref

    parse_model_ref(ref)
    if mode not in (None, "oci", "hostpath", "stream"):
        raise UsageError("invalid --mode", subject=mode, hint="use oci, hostpath or stream")
    with ApiClient(api, token) as client:
        if kserve:
            typer.echo(json.dumps(client.resolve_kserve(ref, mode=mode), indent=2))
            return
        answer = client.resolve(ref, mode=mode)
    if json_out:
        typer.echo(answer.model_dump_json())
    else:
        ready = ", ".join(answer.nodes_ready) or "none yet"
        typer.echo(f"{answer.name}:{answer.version} ready on: {ready}", err=True)
    typer.echo(answer.image)


@app.command("alias")
def alias_cmd(
    ref: Annotated[str, typer.Argument(metavar="NAME@ALIAS", help="The alias to move.")],
    version: Annotated[int, typer.Argument(metavar="VERSION", min=1, help="Version to point at.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the alias's history).")] = "",
    api: Api = None,
    token: Token = None,
) -> None:
    """Point an alias at a version (a rollback is a move back); print the pinned image."""
    from modelcar.contract.modelref import parse_model_ref

    parsed = parse_model_ref(ref)
    if not parsed.alias:
        raise UsageError("give the alias as NAME@ALIAS", subject=ref)
    with ApiClient(api, token) as client:
        moved = client.move_alias(parsed.name, parsed.alias, version, reason)
        answer = client.resolve(ref)
    typer.echo(f"{ref} -> {parsed.name}:{moved.version}", err=True)
    typer.echo(answer.image)


def main(argv: list[str] | None = None) -> None:
    run_cli(app, "modelcar", argv)


if __name__ == "__main__":  # pragma: no cover
    main()
