"""trusted keys, image signatures, policy verification

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trusted_keys",
        sa.Column("key_id", sa.String(length=71), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("pem", sa.Text(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("key_id"),
    )
    op.create_table(
        "image_signatures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("signature", sa.String(length=1024), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint"),
    )
    with op.batch_alter_table("image_signatures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_image_signatures_digest"), ["digest"], unique=False)
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verification", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.drop_column("verification")
    with op.batch_alter_table("image_signatures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_image_signatures_digest"))
    op.drop_table("image_signatures")
    op.drop_table("trusted_keys")
