"""The modelcar image contract (v1.1): its annotation keys and fixed names.

The OCI media types it uses are in :mod:`modelcar.oci.mediatypes`.
"""

import re

# modelcar's own keys (reverse-DNS under dev.modelcar.).
PREFIX = "dev.modelcar."
CONTRACT = PREFIX + "contract"  # "v1.1" ("v1": no chunk index)
SOURCE = PREFIX + "source"  # hf://org/name@<commit>, file://..., ...
SIZE = PREFIX + "size"  # total bytes of model files
FILE_COUNT = PREFIX + "file-count"
INDEX_DIGEST = PREFIX + "index.digest"  # sha256 of the canonical file index JSON
BASE_DIGEST = PREFIX + "base.digest"
BASE_NAME = PREFIX + "base.name"
SOURCE_RUN_ID = PREFIX + "source.run-id"  # MLflow: the run that logged the model
SOURCE_OBJECTS = PREFIX + "source.objects"  # config: {path: {etag, version}} for object stores
LAYER_ROLE = PREFIX + "layer.role"  # "base" | "model"
FILE_SHA256 = PREFIX + "file.sha256"  # one-file layers: that file's sha256
FILE_SIZE = PREFIX + "file.size"

CONTRACT_VERSION = "v1.1"
MODELS_DIR = "models"  # model files live under /models/ in the image
CONFIG_INDEX_KEY = "dev.modelcar.index"  # where the file index lives in the image config
#: v1.1: each file's offset in its layer and its chunks' sha256 (modelcar.format.chunks)
CONFIG_CHUNKS_KEY = "dev.modelcar.chunks"


_PINNED_HF = re.compile(r"^hf://(?P<repo>[^@]+)@(?P<commit>[0-9a-f]{40})$")


def hf_commit(source: str) -> tuple[str, str] | None:
    """A ``SOURCE`` pinned to a Hugging Face commit, ``hf://ORG/NAME@<sha>``: (the
    repository, ``ORG/NAME``, and the commit); None for any other source."""
    m = _PINNED_HF.match(source)
    return (m["repo"], m["commit"]) if m else None
