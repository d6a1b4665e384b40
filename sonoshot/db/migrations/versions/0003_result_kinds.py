"""results of two kinds: scored (with a key image) and "not analysed" (no score, a reason)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NULLABLE_WITHOUT_SCORE = [("score", sa.Float()), ("verdict", sa.String(16)), ("threshold", sa.Float())]


def upgrade() -> None:
    with op.batch_alter_table("results") as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="scored"))
        batch_op.add_column(sa.Column("reason", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("key_image_sop_instance_uid", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("key_image_path", sa.String(300), nullable=True))
        for column, type_ in NULLABLE_WITHOUT_SCORE:
            batch_op.alter_column(column, existing_type=type_, nullable=True)
        batch_op.create_index(batch_op.f("ix_results_kind"), ["kind"], unique=False)


def downgrade() -> None:
    op.execute("DELETE FROM deliveries WHERE result_id IN (SELECT id FROM results WHERE kind <> 'scored')")
    op.execute("DELETE FROM results WHERE kind <> 'scored'")
    with op.batch_alter_table("results") as batch_op:
        batch_op.drop_index(batch_op.f("ix_results_kind"))
        for column, type_ in NULLABLE_WITHOUT_SCORE:
            batch_op.alter_column(column, existing_type=type_, nullable=False)
        for column in ("key_image_path", "key_image_sop_instance_uid", "reason", "kind"):
            batch_op.drop_column(column)
