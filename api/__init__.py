"""`modelcar-api`: the catalog service.

Installed with ``modelcar[api]``.

This package imports the core (``modelcar.*`` outside the apps), never another app.
"""

from __future__ import annotations

from modelcar.cliutil import launch

#: Third-party packages this app needs beyond the base install.
NEEDS = frozenset(
    {
        "fastapi",
        "starlette",
        "uvicorn",
        "sqlalchemy",
        "alembic",
        "prometheus_client",
        "uvloop",
        "httptools",
    }
)


def main() -> None:
    """The ``modelcar-api`` console script: says which extra to install if one is missing."""
    launch("modelcar.api.cli", "modelcar-api", "api", NEEDS)
