"""The API's wire contract: request and response bodies, shared by the API and its clients.

The builder and the cache daemon speak to ``modelcar-api`` with these models,
so a field renamed here is renamed on both sides at once.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

from modelcar.contract.modelref import ALIAS_RE, MODEL_NAME_RE
from modelcar.errors import InvalidReference
from modelcar.oci.reference import parse_ref

Role = Literal["read", "publish", "admin", "node"]
ROLES: tuple[Role, ...] = ("read", "publish", "admin", "node")
ModelState = Literal["pending", "pulling", "ready", "failed", "evicted"]
MountMode = Literal["oci", "hostpath", "stream"]

DigestStr = Annotated[str, StringConstraints(pattern=r"^sha256:[a-f0-9]{64}$")]
#: Free text: anything but NUL (which PostgreSQL text cannot hold).
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, StringConstraints(max_length=1024, pattern=NO_NUL)]


def _json_integer(value: Any) -> Any:
    """A JSON integer (``3`` or ``3.0``), never ``true`` or ``"3"``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON integer")
    return value


#: JSON-safe (exact in a double): up to 8 PiB.
Count = Annotated[int, Field(ge=0, le=2**53 - 1), BeforeValidator(_json_integer)]
VersionNumber = Annotated[int, Field(ge=1, le=10**9), BeforeValidator(_json_integer)]

# The patterns below are what the schema publishes; each is exact or a subset of
# what the code accepts, so a request the schema allows is never refused as invalid.
_DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_LABEL_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY_PATTERN = rf"^(?:{_DNS_LABEL}(?:\.{_DNS_LABEL}){{0,2}}/)?{_LABEL_NAME}$"
LABEL_VALUE_PATTERN = rf"^(?:{_LABEL_NAME})?$"
LABELS_QUERY_PATTERN = (
    rf"^(?:{LABEL_KEY_PATTERN[1:-1]}=(?:{_LABEL_NAME})?"
    rf"(?:,{LABEL_KEY_PATTERN[1:-1]}=(?:{_LABEL_NAME})?)*)?$"
)
NODE_NAME_PATTERN = rf"^{_DNS_LABEL}(?:\.{_DNS_LABEL})*$"
NODE_NAME_RE = re.compile(NODE_NAME_PATTERN)
MODEL_NAME_PATTERN = MODEL_NAME_RE.pattern
ALIAS_PATTERN = ALIAS_RE.pattern
MODEL_REF_PATTERN = (
    rf"^{MODEL_NAME_PATTERN[1:-1]}(?:@{ALIAS_PATTERN[1:-1]}|@sha256:[a-f0-9]{{64}}"
    r"|:[1-9][0-9]{0,8})$"
)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = (
    rf"(?:{_DNS_LABEL}(?:\.{_DNS_LABEL})+(?::[0-9]{{1,5}})?|{_DNS_LABEL}:[0-9]{{1,5}}|localhost)"
)
REPOSITORY_PATTERN = rf"^(?:oci:[^@:\s]+|{_HOST}/{_COMPONENT}(?:/{_COMPONENT})*)$"

#: What each published pattern means, for error messages people can read.
PATTERN_HELP = {
    MODEL_REF_PATTERN: "a model reference: NAME@ALIAS, NAME:VERSION or NAME@sha256:HEX "
    "(NAME: lowercase letters, digits, '-')",
    MODEL_NAME_PATTERN: "a name: a DNS label of lowercase letters, digits and '-'",
    ALIAS_PATTERN: "an alias: a letter, then lowercase letters, digits and '-'",
    NODE_NAME_PATTERN: "a Kubernetes node name",
    LABEL_KEY_PATTERN: "a Kubernetes label key",
    LABEL_VALUE_PATTERN: "a Kubernetes label value",
    LABELS_QUERY_PATTERN: "labels as k=v,k2=v2",
    REPOSITORY_PATTERN: "a repository: HOST[:PORT]/PATH (no tag or digest) or oci:PATH",
    r"^sha256:[a-f0-9]{64}$": "a digest: sha256: and 64 lowercase hex characters",
    NO_NUL: "text without NUL characters",
    r"^[a-z]+(?:-[0-9]+)?$": "a source name: a kind, optionally -N",
}


LabelKey = Annotated[str, StringConstraints(max_length=255, pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE_PATTERN)]
Labels = Annotated[
    dict[LabelKey, LabelValue],
    Field(max_length=64),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": 64,
            "propertyNames": {"pattern": LABEL_KEY_PATTERN, "maxLength": 255},
            "additionalProperties": {
                "type": "string",
                "pattern": LABEL_VALUE_PATTERN,
                "maxLength": 63,
            },
        }
    ),
]


def _repository(value: str) -> str:
    try:
        ref = parse_ref(value)
    except InvalidReference as e:
        raise ValueError(e.one_line()) from None
    if ref.tag or ref.digest:
        raise ValueError("a repository has no tag or digest; the digest is a field of its own")
    return ref.name


DURATION_PATTERN = r"^(?:[1-9][0-9]{0,4}s|[1-9][0-9]{0,3}m|[1-9][0-9]?h)$"
_UNITS = {"s": 1, "m": 60, "h": 3600}


def _duration(value: Any) -> Any:
    """Seconds: a JSON integer, or text such as ``90s``, ``10m``, ``2h``."""
    if isinstance(value, str):
        if not re.match(DURATION_PATTERN, value):
            raise ValueError("a duration is whole seconds or NUMBER followed by s, m or h")
        return int(value[:-1]) * _UNITS[value[-1]]
    return _json_integer(value)


#: Up to a week.
Seconds = Annotated[
    int,
    Field(ge=1, le=7 * 86400),
    BeforeValidator(_duration),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": 7 * 86400},
                {"type": "string", "pattern": DURATION_PATTERN},
            ],
            "description": "seconds, or e.g. 90s, 10m, 2h",
        }
    ),
]

ModelRefStr = Annotated[str, StringConstraints(max_length=200, pattern=MODEL_REF_PATTERN)]
Repository = Annotated[
    str,
    StringConstraints(max_length=255, pattern=REPOSITORY_PATTERN),
    AfterValidator(_repository),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- requests --------------------------------------------------------------


class ModelUpdate(_Request):
    """Create a model or change its description and owner."""

    description: Text | None = None
    owner: Annotated[str, StringConstraints(max_length=256, pattern=NO_NUL)] | None = None


class VersionCreate(_Request):
    """Register a built image as the model's next version (idempotent by digest)."""

    digest: DigestStr
    repository: Repository = Field(
        description="Image repository without tag or digest, e.g. registry:5000/team/llama "
        "or oci:/srv/layout"
    )
    source_uri: Annotated[str, StringConstraints(max_length=2048, pattern=NO_NUL)] = ""
    size: Count = 0
    file_count: Count = 0
    index_digest: DigestStr | None = None
    modelpack_digest: DigestStr | None = Field(
        None, description="The same model as a CNCF ModelPack artifact, in the same repository"
    )
    build: dict[str, Any] = Field(default_factory=dict, description="The builder's build record")
    version: VersionNumber | None = Field(
        None,
        description="Expected version number: the next one, or an existing one "
        "holding the same digest",
    )


class AliasMove(_Request):
    version: VersionNumber
    reason: Text = ""


KeyId = Annotated[str, StringConstraints(pattern=r"^sha256:[a-f0-9]{64}$")]
Pem = Annotated[str, StringConstraints(max_length=4096, pattern=NO_NUL)]


class Verification(_Request):
    """What a node checks before it publishes a model a policy assigns."""

    keys: Annotated[list[KeyId], Field(min_length=1, max_length=16)] = Field(
        description="Trusted key ids (GET /v1/keys); a cosign signature by any one of them"
    )
    require: bool = Field(
        True, description="Refuse (state failed) what does not verify; false: only report it"
    )
    source_prefix: Annotated[str, StringConstraints(max_length=512, pattern=NO_NUL)] | None = Field(
        None, description="Also require SLSA provenance naming a source under this prefix"
    )


class Rollout(_Request):
    """Rollout waves: at most ``origin_concurrency`` nodes pull a model's layers from
    the origin at once; the others take them from peers, or wait for an origin lease."""

    origin_concurrency: Annotated[int, Field(ge=1, le=10000), BeforeValidator(_json_integer)] = (
        Field(description="Nodes that may hold an origin lease for a digest at once")
    )
    wave_timeout: Seconds = Field(
        600,
        description="How long a node waits for peers or a lease per pass; also how long "
        "a lease lives without a report from its node that it is still pulling",
    )


class PolicyPut(_Request):
    """Which models nodes matching ``node_selector`` (all labels equal) keep warm."""

    models: Annotated[list[ModelRefStr], Field(max_length=1000)]
    node_selector: Labels = Field(default_factory=dict)
    description: Text = ""
    verification: Verification | None = None
    rollout: Rollout | None = None


class KeyCreate(_Request):
    """A public key to trust: ECDSA P-256, PEM (the .pub of `modelcar keygen`)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
    pem: Pem


class SignatureCreate(_Request):
    """A cosign signature of an image: its simple-signing payload and the base64 signature."""

    digest: DigestStr
    payload: Annotated[str, StringConstraints(max_length=65536, pattern=NO_NUL)]
    signature: Annotated[str, StringConstraints(max_length=1024, pattern=r"^[A-Za-z0-9+/=]+$")]


SOURCE_NAME_PATTERN = r"^[a-z]+(?:-[0-9]+)?$"
SourceName = Annotated[str, StringConstraints(pattern=SOURCE_NAME_PATTERN, max_length=32)]
SourceBytes = Annotated[
    dict[SourceName, Count],
    Field(max_length=32),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": 32,
            "propertyNames": {"pattern": SOURCE_NAME_PATTERN, "maxLength": 32},
            "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 2**53 - 1},
        }
    ),
]


class NodeModelStatus(_Request):
    digest: DigestStr
    state: ModelState
    bytes_done: Count = 0
    bytes_total: Count = 0
    error: Annotated[str, StringConstraints(max_length=2048, pattern=NO_NUL)] | None = None
    sources: SourceBytes = Field(
        default_factory=dict, description="Layer bytes by source (origin, spegel, …)"
    )
    blobs: Annotated[list[DigestStr], Field(max_length=10000)] = Field(
        default_factory=list,
        description="The blobs of this model the node serves now, verified (manifests, "
        "configs, finished layers)",
    )


ServeUrl = Annotated[str, StringConstraints(max_length=512, pattern=r"^https?://[^/\s]+/?$")]


class DiskUsage(_Request):
    used_bytes: Count = 0
    capacity_bytes: Count = 0
    budget_bytes: Count | None = None


class NodeStatusPut(_Request):
    """A node's full report: every model it holds or works on replaces the last report."""

    models: Annotated[list[NodeModelStatus], Field(max_length=10000)] = Field(default_factory=list)
    disk: DiskUsage | None = None
    labels: Labels = Field(default_factory=dict)
    cache_root: Text | None = None
    serve_url: ServeUrl | None = Field(
        None, description="Where the node serves what it holds to its peers (http(s)://HOST:PORT)"
    )


TokenName = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
]


class UserTokenCreate(_Request):
    name: TokenName
    role: Literal["read", "publish", "admin"]


class NodeTokenCreate(_Request):
    name: TokenName
    role: Literal["node"]
    node: Annotated[
        str, StringConstraints(max_length=253, pattern=rf"^(\*|{NODE_NAME_PATTERN[1:-1]})$")
    ] = Field(description="The node this token speaks for; * for every node (a DaemonSet's)")


TokenCreate = Annotated[UserTokenCreate | NodeTokenCreate, Field(discriminator="role")]


# --- responses -------------------------------------------------------------


class VersionOut(_Response):
    model: str
    version: int
    digest: str
    repository: str
    image: str
    source_uri: str
    size: int
    file_count: int
    index_digest: str | None
    modelpack_digest: str | None = None
    build: dict[str, Any]
    created: datetime
    created_by: str
    aliases: list[str] = Field(default_factory=list)
    nodes_ready: list[str] = Field(default_factory=list)
    signed_by: list[str] = Field(
        default_factory=list, description="Trusted keys (ids) with a valid signature of the digest"
    )
    usage: int = Field(0, description="Admitted Kubernetes objects that pin this version")


class WorkloadOut(_Response):
    """A Kubernetes object admitted with this version pinned."""

    kind: str
    namespace: str
    name: str
    uid: str
    operation: str
    updated: datetime


class AliasOut(_Response):
    model: str
    alias: str
    version: int
    digest: str
    updated: datetime
    updated_by: str


class AliasEvent(_Response):
    model: str
    alias: str
    from_version: int | None
    to_version: int | None
    actor: str
    at: datetime
    reason: str


class ModelOut(_Response):
    name: str
    description: str
    owner: str
    created: datetime
    latest_version: int | None
    aliases: dict[str, int] = Field(default_factory=dict)


class ModelDetail(ModelOut):
    versions: list[VersionOut] = Field(default_factory=list)


class ResolveAnswer(_Response):
    name: str
    version: int
    alias: str | None
    digest: str
    repository: str
    image: str = Field(description="The pinned image reference, repository@sha256:…")
    storage_uri: str | None = Field(
        description="KServe storageUri (oci://…); null for an image in an oci: layout"
    )
    host_path: str = Field(description="Where the cache daemon publishes the model on a node")
    s3_uri: str | None = Field(
        None,
        description="The model on its node's S3 read endpoint (cache daemon --serve): "
        "s3://modelcar/sha256-<hex>/, for loaders that stream (vLLM's runai_streamer)",
    )
    node_label: str = Field(description="The Node label key set to 'ready' where the model is")
    nodes_ready: list[str]
    size: int
    file_count: int
    mode: MountMode
    pod_spec: dict[str, Any] = Field(
        description="volumes, volumeMounts (at /mnt/models) and affinity for a pod spec; "
        "mode=stream: env and args for a vLLM container, and affinity"
    )
    signed_by: list[str] | None = Field(
        None, description="With require_signed=1: the trusted keys that signed the digest"
    )
    image_format: Literal["modelcar", "modelpack"] = Field(
        "modelcar", description="What `image` is: the modelcar, or (format=modelpack) the ModelPack"
    )


class VerificationRule(_Response):
    """One policy's verification, with its keys' PEM, for the node to apply."""

    policy: str
    keys: list[str]
    require: bool
    source_prefix: str | None = None


class RolloutRule(_Response):
    origin_concurrency: int
    wave_timeout: int


class Assignment(_Response):
    digest: str
    image: str
    repository: str
    name: str
    version: int
    size: int
    refs: list[str]
    policies: list[str]
    verification: list[VerificationRule] = Field(default_factory=list)
    rollout: RolloutRule | None = Field(
        None, description="The strictest rollout of the policies that assign it"
    )


class Unresolved(_Response):
    policy: str
    ref: str
    error: str


class Assignments(_Response):
    node: str
    labels: dict[str, str]
    models: list[Assignment]
    unresolved: list[Unresolved] = Field(default_factory=list)


class NodeModelOut(_Response):
    digest: str
    state: ModelState
    bytes_done: int
    bytes_total: int
    error: str | None
    updated: datetime
    sources: dict[str, int] = Field(default_factory=dict)


class NodeOut(_Response):
    name: str
    labels: dict[str, str]
    cache_root: str | None
    last_seen: datetime
    stale: bool
    disk: DiskUsage | None
    ready: int
    models: list[NodeModelOut] = Field(default_factory=list)


class PolicyOut(_Response):
    name: str
    models: list[str]
    node_selector: dict[str, str]
    description: str
    verification: dict[str, Any] | None = None
    rollout: dict[str, Any] | None = None
    updated: datetime
    updated_by: str


class LeaseRequest(_Request):
    digest: DigestStr


class LeaseOut(_Response):
    digest: str
    node: str
    granted: bool = Field(description="True: this node may fetch the layers from the origin")
    limit: int | None = Field(description="origin_concurrency, or null where no rollout applies")
    holders: list[str] = Field(description="Nodes holding an origin lease for the digest now")
    expires: datetime | None = None
    retry_after: float = Field(5.0, description="Seconds before asking again when not granted")


class BlobHolder(_Response):
    node: str
    url: str = Field(description="The node's serving endpoint")
    ready: bool = Field(description="True: a ready model holds it; false: a pull in progress")
    labels: dict[str, str] = Field(default_factory=dict)


class HoldersOut(_Response):
    digest: str
    holders: list[BlobHolder]


class LeaseHolder(_Response):
    node: str
    granted: datetime
    expires: datetime


class RolloutOut(_Response):
    model: str
    version: int
    digest: str
    origin_concurrency: int | None = Field(description="From the policies assigning it")
    wave_timeout: int | None
    leases: list[LeaseHolder]
    nodes: int = Field(description="Fresh nodes that report the digest")
    ready: int
    pulling: int
    failed: int
    bytes_from_origin: int
    bytes_from_peers: int = Field(description="Every source but the origin")
    bytes_by_source: dict[str, int]


class KeyOut(_Response):
    key_id: str = Field(description="sha256 of the key's DER SubjectPublicKeyInfo")
    name: str
    pem: str
    created: datetime
    created_by: str


class SignatureOut(_Response):
    digest: str
    signed_by: list[str]


class TokenOut(_Response):
    id: int
    name: str
    role: Role
    node: str | None
    created: datetime


class TokenCreated(TokenOut):
    token: str = Field(description="The secret; shown once, stored only as a hash")


class ErrorDetail(_Response):
    code: str
    message: str
    subject: str | None = None
    hint: str | None = None


class ErrorBody(_Response):
    error: ErrorDetail
