"""Settings of ``modelcar-api``: defaults < YAML file < ``MODELCAR_API_*`` env < flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelcar.contract.nodecache import DEFAULT_CACHE_ROOT
from modelcar.errors import UsageError
from modelcar.oci.manifest import error_at

ENV_PREFIX = "MODELCAR_API_"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db: str = Field("sqlite:///./modelcar.db", description="SQLAlchemy URL of the database")
    host: str = Field("127.0.0.1", description="Address to listen on")
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes")
    open_reads: bool = Field(False, description="Serve GET endpoints without a token")
    stale_after: float = Field(
        120.0, gt=0, description="Seconds after its last report that a node counts as stale"
    )
    cache_root: str = Field(
        DEFAULT_CACHE_ROOT, description="The cache daemons' cache dir, for host paths"
    )
    stream_port: int = Field(
        5050,
        ge=1,
        le=65535,
        description="The cache daemons' --serve port (hostPort), for mode=stream",
    )
    stream_secret: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        max_length=253,
        description="mode=stream: a Secret in the pod's namespace whose key `token` holds "
        "the fleet token (the S3 secret key); unset: unsigned reads (daemons need --s3-anonymous)",
    )
    pool_size: int = Field(20, ge=1, le=500, description="Database connections per worker")
    max_body_bytes: int = Field(4 << 20, ge=1024, description="Largest request body accepted")
    secure_cookies: bool = Field(
        False, description="Mark the web UI's session cookie Secure (served behind HTTPS)"
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Proxies whose X-Forwarded-Proto/For are believed (comma-separated, or *)",
    )
    ui_session_hours: float = Field(12.0, gt=0, le=24 * 30, description="A UI sign-in lasts")
    log_level: str = Field("info", pattern="^(critical|error|warning|info|debug)$")
    webhook_port: int | None = Field(
        None, ge=1, le=65535, description="Serve the admission webhooks over TLS on this port"
    )
    webhook_cert: str | None = Field(None, description="The webhook's serving certificate (PEM)")
    webhook_key: str | None = Field(None, description="Its private key (PEM)")
    webhook_client_ca: str | None = Field(
        None, description="Require client certificates signed by this CA (the apiserver's)"
    )
    webhook_require_registered: bool = Field(
        True, description="Validating webhook: refuse digests that are no registered version"
    )
    webhook_require_signed: bool = Field(
        False, description="Validating webhook: refuse digests no trusted key signed"
    )


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Merge the sources; any bad value is one :class:`UsageError` naming it."""
    data: dict[str, Any] = {}
    config_file = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG")
    if config_file:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as e:
            raise UsageError("cannot read config file", subject=str(path), hint=str(e)) from None
        except yaml.YAMLError as e:
            raise UsageError(
                "config file is not valid YAML", subject=str(path), hint=" ".join(str(e).split())
            ) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UsageError("config file must be a mapping of settings", subject=str(path))
        data.update(loaded or {})
    for field in Settings.model_fields:
        value = os.environ.get(ENV_PREFIX + field.upper())
        if value is not None:
            data[field] = value
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        where, msg = error_at(e)
        where = where or "settings"
        raise UsageError(
            f"invalid setting {where}: {msg}",
            hint=f"set it with --{where.replace('_', '-')}, {ENV_PREFIX}{where.upper()} "
            "or the config file",
        ) from None
