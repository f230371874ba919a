"""``modelcar-api``: serve the catalog API, migrate its database, create tokens.

Settings come from flags, ``MODELCAR_API_*`` env vars, or a YAML file
(``--config`` / ``MODELCAR_API_CONFIG``), flags winning.
"""

from __future__ import annotations

import gc
import json
import os
from typing import Annotated, Any

import typer

from modelcar.api.settings import Settings, load_settings
from modelcar.cliutil import new_app, run_cli
from modelcar.contract.wire import ROLES, TokenCreate
from modelcar.errors import UsageError
from modelcar.oci.manifest import error_at

app = new_app(
    "modelcar-api",
    "The modelcar API: model names, versions and aliases to pinned images and mounts.",
)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
token_app = typer.Typer(help="Bearer tokens (work on the database directly).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")

ConfigFile = Annotated[
    str | None,
    typer.Option("--config", help="YAML file of settings (env: MODELCAR_API_CONFIG)."),
]
DbUrl = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL: sqlite:///PATH (default sqlite:///./modelcar.db) or "
        "postgresql://USER:PASS@HOST/DB (env: MODELCAR_API_DB).",
    ),
]
SETTINGS_ENV = "MODELCAR_API_SETTINGS_JSON"


def _database(config: str | None, db: str | None) -> Any:
    from modelcar.api.db.engine import Database

    settings = load_settings(config, db=db)
    return Database(settings.db, pool_size=2)


def app_from_env() -> Any:
    """uvicorn factory for ``--workers`` > 1: each worker builds the app from the env."""
    from modelcar.api.app import create_app

    app = create_app(Settings.model_validate_json(os.environ[SETTINGS_ENV]))
    gc.freeze()
    return app


@app.command()
def serve(
    config: ConfigFile = None,
    db: DbUrl = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [8080].")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes [1].")] = None,
    open_reads: Annotated[
        bool | None,
        typer.Option("--open-reads/--closed-reads", help="Serve reads without a token [closed]."),
    ] = None,
    stale_after: Annotated[
        float | None, typer.Option(help="Seconds before a silent node counts as stale [120].")
    ] = None,
    cache_root: Annotated[
        str | None, typer.Option(help="The cache daemons' cache dir [/var/lib/modelcar].")
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
    secure_cookies: Annotated[
        bool | None,
        typer.Option(
            "--secure-cookies/--plain-cookies",
            help="Mark the web UI's session cookie Secure: set it when the API is reached "
            "over HTTPS (an ingress that terminates TLS) [plain, unless the request is https].",
        ),
    ] = None,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            metavar="IPS",
            help="Proxies whose X-Forwarded-Proto/-For are believed, comma-separated "
            "or * [127.0.0.1].",
        ),
    ] = None,
    webhook_port: Annotated[
        int | None,
        typer.Option(
            help="Also serve the admission webhooks (/mutate, /validate, /record) over TLS "
            "on this port, and nothing else there."
        ),
    ] = None,
    webhook_cert: Annotated[
        str | None, typer.Option(metavar="PEM", help="The webhooks' serving certificate.")
    ] = None,
    webhook_key: Annotated[str | None, typer.Option(metavar="PEM", help="Its key.")] = None,
    webhook_client_ca: Annotated[
        str | None,
        typer.Option(
            metavar="PEM",
            help="Require a client certificate signed by this CA "
            "(the apiserver's, from its AdmissionConfiguration kubeconfig).",
        ),
    ] = None,
) -> None:
    """Serve the API (OpenAPI docs at /docs). Refuses an un-migrated database. With
    --webhook-port, the admission webhooks too (TLS, on that port only)."""
    import uvicorn

    from modelcar.api.app import create_app
    from modelcar.api.db.engine import Database, redact
    from modelcar.api.httpserver import uvicorn_options

    settings = load_settings(
        config,
        db=db,
        host=host,
        port=port,
        workers=workers,
        open_reads=open_reads,
        secure_cookies=secure_cookies,
        forwarded_allow_ips=forwarded_allow_ips,
        stale_after=stale_after,
        cache_root=cache_root,
        webhook_port=webhook_port,
        webhook_cert=webhook_cert,
        webhook_key=webhook_key,
        webhook_client_ca=webhook_client_ca,
    )
    if settings.webhook_port and not (settings.webhook_cert and settings.webhook_key):
        raise UsageError(
            "--webhook-port needs --webhook-cert and --webhook-key",
            hint="the apiserver calls webhooks over TLS only",
        )
    for path in (settings.webhook_cert, settings.webhook_key, settings.webhook_client_ca):
        if path and not os.path.isfile(path):
            raise UsageError("cannot read the webhook's TLS file", subject=path)
    database = Database(settings.db, pool_size=settings.pool_size)
    database.check_migrated()
    typer.echo(
        f"modelcar-api: serving on http://{settings.host}:{settings.port} "
        f"(database {redact(settings.db)}, reads {'open' if settings.open_reads else 'closed'})",
        err=True,
    )
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": access_log,
        **uvicorn_options(settings.forwarded_allow_ips),
    }
    if settings.webhook_port:
        from modelcar.api.webhook import serve_webhooks

        serve_webhooks(
            settings,
            database,
            log_level=settings.log_level,
            access_log=access_log,
            server_header=False,
        )
        typer.echo(
            f"modelcar-api: admission webhooks on https://{settings.host}:{settings.webhook_port}",
            err=True,
        )
    if settings.workers > 1:
        database.dispose()
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        uvicorn.run(
            "modelcar.api.cli:app_from_env", factory=True, workers=settings.workers, **common
        )
    else:
        app = create_app(settings, database)
        gc.freeze()  # the app's long-lived objects leave the collector's young generations
        uvicorn.run(app, **common)


@db_app.command("upgrade")
def db_upgrade(config: ConfigFile = None, db: DbUrl = None) -> None:
    """Create or migrate the database schema to this release's revision."""
    from modelcar.api.db.engine import redact

    database = _database(config, db)
    before, after = database.upgrade()
    if before == after:
        typer.echo(f"{redact(database.url)}: already at {after}", err=True)
    else:
        typer.echo(f"{redact(database.url)}: upgraded {before or 'empty'} -> {after}", err=True)


@db_app.command("current")
def db_current(config: ConfigFile = None, db: DbUrl = None) -> None:
    """Print the schema revision of the database and of this release."""
    database = _database(config, db)
    typer.echo(f"database: {database.current() or 'empty'}\nrelease:  {database.head()}")


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help=f"One of: {', '.join(ROLES)}.")],
    name: Annotated[str, typer.Option(help="Who holds it (for role node: the node name).")],
    node: Annotated[
        str | None,
        typer.Option(
            help="For role node: the node if not the same as --name; '*' for every node "
            "(one token for a whole DaemonSet, still limited to node endpoints)."
        ),
    ] = None,
    config: ConfigFile = None,
    db: DbUrl = None,
) -> None:
    """Create a token and print it (only it, once) on stdout."""
    from pydantic import TypeAdapter, ValidationError

    from modelcar.api.tokens import create_token

    fields = {"name": name, "role": role}
    if role == "node":
        fields["node"] = node or name
    elif node:
        raise UsageError("--node is for node tokens only", hint="drop --node or use --role node")
    try:
        body = TypeAdapter(TokenCreate).validate_python(fields)
    except ValidationError as e:
        loc, msg = error_at(e)
        where = next((p for p in reversed(loc.split(".")) if p in ("name", "role", "node")), "role")
        raise UsageError(
            f"invalid --{where}: {msg}",
            hint=f"roles: {', '.join(ROLES)}; a node token's --node (default --name) is the "
            "Kubernetes node name",
        ) from None
    database = _database(config, db)
    database.check_migrated()
    with database.writing() as s:
        _, secret = create_token(s, body)
    typer.echo(secret)


@token_app.command("list")
def token_list(config: ConfigFile = None, db: DbUrl = None) -> None:
    """List tokens as JSON lines (never the secrets)."""
    from modelcar.api.tokens import list_tokens, token_out

    database = _database(config, db)
    database.check_migrated()
    with database.reading() as s:
        for t in list_tokens(s):
            typer.echo(json.dumps(token_out(t).model_dump(mode="json")))


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(metavar="ID", help="The id from `token list`.")],
    config: ConfigFile = None,
    db: DbUrl = None,
) -> None:
    """Revoke a token; running servers refuse it within 5 seconds."""
    from modelcar.api.tokens import revoke_token

    database = _database(config, db)
    database.check_migrated()
    with database.writing() as s:
        t = revoke_token(s, token_id)
    typer.echo(f"revoked token {t.id} ({t.name}, {t.role})", err=True)


def main(argv: list[str] | None = None) -> None:
    run_cli(app, "modelcar-api", argv)


if __name__ == "__main__":  # pragma: no cover
    main()
