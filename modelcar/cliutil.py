"""What the three command-line tools share: size parsing and the error wrapper."""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Annotated

import typer

from modelcar.errors import ModelcarError, UsageError
from modelcar.http.body import DEFAULT_STALL_RULE, StallRule
from modelcar.oci.store import StoreOptions
from modelcar.version import describe

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.I)
_UNITS = {"": 1, "B": 1}
for _i, _p in enumerate("KMGT", start=1):
    _UNITS |= {_p: 1000**_i, f"{_p}B": 1000**_i, f"{_p}I": 1024**_i, f"{_p}IB": 1024**_i}


def human(n: float) -> str:
    """A byte count for people: ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def parse_size(text: str) -> int:
    """``64MiB`` → 67108864; ``2G`` → 2000000000; a bare number is bytes."""
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError("invalid size", subject=text, hint="use e.g. 64MiB, 52000MiB, 2GiB")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


def new_app(name: str, help: str) -> typer.Typer:
    """A typer app with the settings all three CLIs share: plain help, ``--version``,
    shell completion (``--install-completion [bash|zsh|fish]``), and no rich tracebacks
    (expected failures are one line, see run_cli)."""
    app = typer.Typer(
        name=name,
        help=help,
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )

    def show_version(value: bool) -> None:
        if value:
            typer.echo(describe(name))
            raise typer.Exit()

    @app.callback()
    def _root(
        version: bool = typer.Option(
            False,
            "--version",
            is_eager=True,
            callback=show_version,
            help="Print the version (and the source revision, when known) and exit.",
        ),
    ) -> None:
        pass

    _root.__doc__ = help
    return app


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


def launch(module: str, prog: str, extra: str, needs: frozenset[str]) -> None:
    """Start a CLI whose code needs an extra: if one of its packages (``needs``) is not
    installed, say which extra brings it, in one line, instead of a traceback."""
    try:
        importlib.import_module(module).main()  # some commands import their packages late
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in needs:
            raise
        print(
            f"{prog}: error: {prog} needs the '{extra}' extra, which is not installed "
            f"(no module {top!r}) (pip install 'modelcar[{extra}]')",
            file=sys.stderr,
        )
        sys.exit(2)


# --- the registry options every CLI shares (one spelling, one help) -----------------

PlainHttp = Annotated[
    bool,
    typer.Option(
        "--plain-http",
        envvar="MODELCAR_PLAIN_HTTP",
        help="Talk HTTP, not HTTPS, to registries and mirrors.",
    ),
]
Insecure = Annotated[
    bool, typer.Option("--insecure", help="Do not verify registries' TLS certificates.")
]
CaFile = Annotated[
    str | None,
    typer.Option(
        "--ca-file",
        envvar="MODELCAR_CA_FILE",
        help="PEM file of CAs to trust for registries and mirrors, besides the system's.",
    ),
]
DockerConfigs = Annotated[
    list[str] | None,
    typer.Option(
        "--docker-config",
        metavar="PATH",
        help="Registry credentials: a docker config.json or a dir holding one (repeatable; "
        "merged, later ones win). Default: $DOCKER_CONFIG, ~/.docker/config.json, "
        "$REGISTRY_AUTH_FILE. Re-read when a file changes.",
    ),
]


def store_options(
    *,
    plain_http: bool,
    insecure: bool,
    ca_file: str | None,
    docker_config: list[str] | None,
    stall: StallRule | None = DEFAULT_STALL_RULE,
) -> StoreOptions:
    """The registry options a command was given, as the stores take them."""
    configs = os.pathsep.join(docker_config) if docker_config else None
    return StoreOptions(
        plain_http=plain_http,
        insecure=insecure,
        ca_file=ca_file,
        docker_config=configs,
        stall=stall,
    )
