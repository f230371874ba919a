"""`modelcar-cache`: the node daemon that keeps assigned modelcars unpacked and verified.

Installed with ``modelcar[cache]``.

This package imports the core (``modelcar.*`` outside the apps), never another app.
"""

from __future__ import annotations

from modelcar.cliutil import launch

#: Third-party packages this app needs beyond the base install.
NEEDS = frozenset({"prometheus_client", "kubernetes", "grpc"})


def main() -> None:
    """The ``modelcar-cache`` console script: says which extra to install if one is missing."""
    launch("modelcar.cache_daemon.cli", "modelcar-cache", "cache", NEEDS)
