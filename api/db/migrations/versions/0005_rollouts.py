"""rollouts: origin leases, a policy's rollout, bytes by source per node and model

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "origin_leases",
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("node_name", sa.String(length=253), nullable=False),
        sa.Column("granted", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ttl", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["node_name"], ["nodes.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("digest", "slot"),
        sa.UniqueConstraint("digest", "node_name", name="uq_origin_leases_node"),
    )
    with op.batch_alter_table("origin_leases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_origin_leases_node_name"), ["node_name"], unique=False)
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rollout", sa.JSON(), nullable=True))
    with op.batch_alter_table("node_models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sources", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("node_models", schema=None) as batch_op:
        batch_op.drop_column("sources")
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.drop_column("rollout")
    with op.batch_alter_table("origin_leases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_origin_leases_node_name"))
    op.drop_table("origin_leases")
