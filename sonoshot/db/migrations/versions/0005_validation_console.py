"""shadow mode, ground truth, scanner observations and console users

Revision ID: 0005
Revises: 0002
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

import sonoshot.db.models

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None

UTC = sonoshot.db.models.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("at", UTC(), nullable=False),
        sa.Column("label", sa.String(length=16), nullable=False),
        sa.Column("finding", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=True),
        sa.Column("recorded_by", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("origin", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("feedback") as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_study_id"), ["study_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_feedback_at"), ["at"], unique=False)
    op.create_table(
        "scanners",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("manufacturer", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("software_versions", sa.String(length=64), nullable=False),
        sa.Column("probe", sa.String(length=64), nullable=False),
        sa.Column("first_seen_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("manufacturer", "model", "software_versions", "probe"),
    )
    op.create_table(
        "observations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("scanner_id", sa.Integer(), nullable=False),
        sa.Column("body_part", sa.String(length=16), nullable=False),
        sa.Column("at", UTC(), nullable=False),
        sa.Column("quarantined", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("columns", sa.Integer(), nullable=True),
        sa.Column("brightness", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"]),
        sa.ForeignKeyConstraint(["scanner_id"], ["scanners.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("observations") as batch_op:
        batch_op.create_index(batch_op.f("ix_observations_study_id"), ["study_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_observations_scanner_id"), ["scanner_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_observations_at"), ["at"], unique=False)
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", UTC(), nullable=True),
        sa.Column("last_login_at", UTC(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("users")
    with op.batch_alter_table("observations") as batch_op:
        batch_op.drop_index(batch_op.f("ix_observations_at"))
        batch_op.drop_index(batch_op.f("ix_observations_scanner_id"))
        batch_op.drop_index(batch_op.f("ix_observations_study_id"))
    op.drop_table("observations")
    op.drop_table("scanners")
    with op.batch_alter_table("feedback") as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_at"))
        batch_op.drop_index(batch_op.f("ix_feedback_study_id"))
    op.drop_table("feedback")
