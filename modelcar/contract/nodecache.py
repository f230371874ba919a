"""Names shared by the cache daemon, the API and the chart: where a model lives on
a node, and the Node label that says it is ready there."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from modelcar.oci.digest import hex_of

#: The directory serving platforms (KServe) load weights from.
MOUNT_PATH = "/mnt/models"
#: The cache daemon's default cache root on a node.
DEFAULT_CACHE_ROOT = "/var/lib/modelcar"
#: The label prefix the daemon sets on its Node for every ready model.
LABEL_PREFIX = "modelcar.dev"
#: The value of a model's Node label when the model is ready there.
LABEL_READY = "ready"


def model_dir_name(digest: str) -> str:
    """``sha256-<hex>``: the published directory of a model under ``<root>/models/``."""
    return f"sha256-{hex_of(digest)}"


_DIR_NAME = re.compile(r"sha256-([0-9a-f]{64})")


def digest_of_dir_name(name: str) -> str | None:
    """The digest a ``sha256-<hex>`` directory holds; None for any other name (a pull's
    ``….journal`` beside it, a stray file)."""
    m = _DIR_NAME.fullmatch(name)
    return f"sha256:{m.group(1)}" if m else None


def host_path(cache_root: str, digest: str) -> str:
    """The node-local directory holding a model's files at its top (like /mnt/models)."""
    return str(PurePosixPath(cache_root) / "models" / model_dir_name(digest))


def node_label_key(digest: str) -> str:
    """``modelcar.dev/sha256-<first 20 hex>``: a valid label key (name part ≤ 63)."""
    return f"{LABEL_PREFIX}/sha256-{hex_of(digest)[:20]}"
