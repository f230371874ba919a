"""``modelcar-cache``: the node cache daemon (arrives with its own issue)."""

import sys


def main() -> None:
    print("modelcar-cache: not implemented yet", file=sys.stderr)
    sys.exit(1)
