"""The catalog's tables (SQLAlchemy 2). Migrations in ``migrations/`` create them.

Every write to a model's versions or aliases first locks the model's row, so
version numbers come out gap-free and alias history in order under concurrency.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way out, on SQLite (which stores naive text) too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        int: Integer,
    }


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(256), default="")
    created: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")
    #: The highest version number ever assigned; numbers are never reused.
    last_version: Mapped[int] = mapped_column(default=0)

    versions: Mapped[list[Version]] = relationship(
        back_populates="model", order_by="Version.number", cascade="all, delete-orphan"
    )
    aliases: Mapped[list[Alias]] = relationship(
        back_populates="model", order_by="Alias.name", cascade="all, delete-orphan"
    )


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("model_id", "number", name="uq_versions_model_number"),
        UniqueConstraint("model_id", "digest", name="uq_versions_model_digest"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    number: Mapped[int]
    digest: Mapped[str] = mapped_column(String(71), index=True)
    repository: Mapped[str] = mapped_column(String(512))
    source_uri: Mapped[str] = mapped_column(String(2048), default="")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    file_count: Mapped[int] = mapped_column(BigInteger, default=0)
    index_digest: Mapped[str | None] = mapped_column(String(71))
    #: The same model as a CNCF ModelPack artifact (`build --format both|modelpack`).
    modelpack_digest: Mapped[str | None] = mapped_column(String(71))
    build: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")

    model: Mapped[Model] = relationship(back_populates="versions")


class Alias(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "name", name="uq_aliases_model_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    # RESTRICT: a version an alias points at cannot be deleted.
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="RESTRICT"))
    updated: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128), default="")

    model: Mapped[Model] = relationship(back_populates="aliases")
    version: Mapped[Version] = relationship()


class AliasEvent(Base):
    """One move of an alias; ``from_number``/``to_number`` are null at creation/deletion."""

    __tablename__ = "alias_events"
    __table_args__ = (Index("ix_alias_events_model_alias", "model_id", "alias", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(63))
    from_number: Mapped[int | None]
    to_number: Mapped[int | None]
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(Text, default="")


class Policy(Base):
    __tablename__ = "policies"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    node_selector: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    description: Mapped[str] = mapped_column(Text, default="")
    #: What nodes check before publishing (wire.Verification), or null.
    verification: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: ``{origin_concurrency, wave_timeout}``: rollout waves for the models it assigns.
    rollout: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    updated: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128), default="")


class TrustedKey(Base):
    """A public key whose signatures count (admin-managed)."""

    __tablename__ = "trusted_keys"

    key_id: Mapped[str] = mapped_column(String(71), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    pem: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")


class ImageSignature(Base):
    """A cosign signature of a registered digest by a trusted key (one per key); it
    stops counting when its key is no longer trusted."""

    __tablename__ = "image_signatures"

    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(71), index=True)
    #: sha256 of payload and signature: the same signature is kept once.
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    payload: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(String(1024))
    created: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128), default="")


class Workload(Base):
    """A Kubernetes object admitted with a version pinned (who runs what)."""

    __tablename__ = "workloads"
    __table_args__ = (
        UniqueConstraint("kind", "namespace", "name", "version_id", name="uq_workloads_object"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(63))
    namespace: Mapped[str] = mapped_column(String(253))
    name: Mapped[str] = mapped_column(String(253))
    uid: Mapped[str] = mapped_column(String(128), default="")
    operation: Mapped[str] = mapped_column(String(16))
    updated: Mapped[datetime] = mapped_column(default=utcnow)


class Node(Base):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    cache_root: Mapped[str | None] = mapped_column(String(1024))
    disk: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    #: Where the node's daemon serves what it holds to its peers (None: it does not).
    serve_url: Mapped[str | None] = mapped_column(String(512))

    models: Mapped[list[NodeModel]] = relationship(
        order_by="NodeModel.digest", cascade="all, delete-orphan"
    )


class NodeBlob(Base):
    """A blob a node serves now (from its last report): how peers find one another."""

    __tablename__ = "node_blobs"

    node_name: Mapped[str] = mapped_column(
        ForeignKey("nodes.name", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(String(71), primary_key=True, index=True)
    #: True if a ready model holds it; False if only a pull in progress does.
    ready: Mapped[bool] = mapped_column(default=False)


class NodeModel(Base):
    __tablename__ = "node_models"

    node_name: Mapped[str] = mapped_column(
        ForeignKey("nodes.name", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(String(71), primary_key=True, index=True)
    state: Mapped[str] = mapped_column(String(16))
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    updated: Mapped[datetime] = mapped_column(default=utcnow)
    #: Layer bytes of the node's pull by source (origin, spegel, …).
    sources: Mapped[dict[str, int] | None] = mapped_column(JSON)


class OriginLease(Base):
    """A node allowed to fetch a digest's layers from the origin now. One row per slot
    (``0 .. origin_concurrency-1``): the primary key makes a grant race-free."""

    __tablename__ = "origin_leases"
    __table_args__ = (UniqueConstraint("digest", "node_name", name="uq_origin_leases_node"),)

    digest: Mapped[str] = mapped_column(String(71), primary_key=True)
    slot: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    node_name: Mapped[str] = mapped_column(ForeignKey("nodes.name", ondelete="CASCADE"), index=True)
    granted: Mapped[datetime] = mapped_column(default=utcnow)
    expires: Mapped[datetime] = mapped_column()
    #: seconds a report of "still pulling" extends it by (the rollout's wave_timeout)
    ttl: Mapped[int] = mapped_column()


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    node: Mapped[str | None] = mapped_column(String(253))
    #: sha256 of the secret; the secret itself is never stored.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class UiSession(Base):
    """A web UI sign-in: the cookie holds a random session id, of which only the sha256
    is kept; revoking its token (CASCADE) or signing out ends it."""

    __tablename__ = "ui_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), index=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    expires: Mapped[datetime] = mapped_column(index=True)
