"""node_blobs: what each node serves to its peers, and where

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("serve_url", sa.String(length=512), nullable=True))
    op.create_table(
        "node_blobs",
        sa.Column("node_name", sa.String(length=253), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("ready", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["node_name"], ["nodes.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("node_name", "digest"),
    )
    with op.batch_alter_table("node_blobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_node_blobs_digest"), ["digest"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("node_blobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_node_blobs_digest"))
    op.drop_table("node_blobs")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("serve_url")
