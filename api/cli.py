"""``modelcar-api``: the model registry API (arrives with its own issue)."""

import sys


def main() -> None:
    print("modelcar-api: not implemented yet", file=sys.stderr)
    sys.exit(1)
