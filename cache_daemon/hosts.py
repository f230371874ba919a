"""containerd's ``hosts.toml``: pull from the node's own endpoint first.

containerd (1.5+, ``config_path`` set, as on most distributions' and cloud images) reads
``<certs dir>/<registry host>/hosts.toml`` at each pull. The file written here lists the
node's endpoint (``modelcar-cache run --serve``) as a host with the ``pull`` capability
only, carrying the fleet credential as a header: containerd resolves tags at the
registry (``server``) and fetches every manifest and blob by digest from the node first,
the registry only for what the node does not hold. KServe's ``oci://`` modelcar, image
volumes and ``--warm-cri`` then read local disk.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from modelcar.errors import UsageError

_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]+)?$")


def server_url(registry: str, plain_http: bool = False) -> str:
    if registry in ("docker.io", "index.docker.io"):
        return "https://registry-1.docker.io"
    return f"{'http' if plain_http else 'https'}://{registry}"


def hosts_toml(registry: str, endpoint: str, token: str, *, plain_http: bool = False) -> str:
    if not _HOST.match(registry):
        raise UsageError("a registry is HOST[:PORT]", subject=registry)
    if not re.match(r"^https?://[^/\s\"]+/?$", endpoint):
        raise UsageError("the endpoint is http(s)://HOST:PORT", subject=endpoint)
    endpoint = endpoint.rstrip("/")
    return (
        "# modelcar-cache hosts-toml: blobs and manifests by digest from this node first\n"
        f'server = "{server_url(registry, plain_http)}"\n'
        "\n"
        f'[host."{endpoint}"]\n'
        '  capabilities = ["pull"]\n'
        f'  [host."{endpoint}".header]\n'
        f'    Authorization = ["Bearer {token}"]\n'
    )


def write_hosts(
    certs_dir: Path, registries: list[str], endpoint: str, token: str, *, plain_http: bool = False
) -> list[Path]:
    """One ``hosts.toml`` per registry, each replaced atomically, readable by root only
    (it holds the fleet credential)."""
    written = []
    for registry in registries:
        text = hosts_toml(registry, endpoint, token, plain_http=plain_http)
        d = certs_dir / registry
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / ".hosts.toml.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, d / "hosts.toml")
        except OSError as e:
            raise UsageError(
                f"cannot write hosts.toml ({e.strerror})", subject=str(d / "hosts.toml")
            ) from None
        written.append(d / "hosts.toml")
    return written
