"""`modelcar`: build, inspect, verify and resolve modelcars.

Installed with ``modelcar[builder]``.

This package imports the core (``modelcar.*`` outside the apps), never another app.
"""

from __future__ import annotations

from modelcar.cliutil import launch

#: Third-party packages this app needs beyond the base install.
NEEDS = frozenset({"huggingface_hub", "boto3", "botocore", "mlflow"})


def main() -> None:
    """The ``modelcar`` console script: says which extra to install if one is missing."""
    launch("modelcar.builder.cli", "modelcar", "builder", NEEDS)
