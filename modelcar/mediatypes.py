"""Media types and annotation keys of the modelcar image contract, in one place."""

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
ACCEPT_MANIFESTS = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
UNCOMPRESSED_LAYERS = (OCI_LAYER_TAR, DOCKER_LAYER_TAR)

# Standard OCI annotation keys.
TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
REF_NAME = "org.opencontainers.image.ref.name"
BASE_DIGEST_OCI = "org.opencontainers.image.base.digest"
BASE_NAME_OCI = "org.opencontainers.image.base.name"

# modelcar's own keys (reverse-DNS under dev.modelcar.).
PREFIX = "dev.modelcar."
CONTRACT = PREFIX + "contract"  # "v1"
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

CONTRACT_VERSION = "v1"
MODELS_DIR = "models"  # model files live under /models/ in the image
CONFIG_INDEX_KEY = "dev.modelcar.index"  # where the file index lives in the image config
