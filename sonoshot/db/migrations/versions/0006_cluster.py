"""cluster mode: stage leases (fencing), lanes, upload state, working-copy keys, receiver nodes

Revision ID: 0006 (after 0005; no 0004 was ever released)
Revises: 0005
Create Date: 2026-12-02

Studies get ``lease`` (raised at each stage claim; a stage's writes must carry it), ``lane``
(live or archive) and ``timings`` (seconds per finished stage of this generation); instances
``work_path`` (the de-identified working copy's key) and ``pending_upload`` (the receiver node
whose local spool holds the only copy until the object store has it) and ``not_analysed_reason``
(the coded reason it was left out, for the detect stage's report); associations ``node``;
results ``attempt`` (the lease that made them); deliveries ``lease``; a table ``periodic_runs``
(the last period each periodic job ran for, so a period runs once). Studies that waited for a
detector go back to ``complete``: the detector no longer gates de-identification. SR paths
become keys of the reports store (the ``.reports/`` spool prefix is the folder store's root).
"""
import sqlalchemy as sa
from alembic import op

import sonoshot.db.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

REPORTS_PREFIX = ".reports/"


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.add_column(sa.Column("lane", sa.String(16), nullable=False, server_default="live"))
        batch_op.add_column(sa.Column("lease", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("timings", sa.JSON(), nullable=True))
    with op.batch_alter_table("instances") as batch_op:
        batch_op.add_column(sa.Column("work_path", sa.String(300), nullable=True))
        batch_op.add_column(sa.Column("not_analysed_reason", sa.String(32), nullable=True))
        batch_op.add_column(sa.Column("pending_upload", sa.String(64), nullable=True))
        batch_op.create_index(batch_op.f("ix_instances_pending_upload"), ["pending_upload"], unique=False)
    with op.batch_alter_table("associations") as batch_op:
        batch_op.add_column(sa.Column("node", sa.String(64), nullable=True))
    with op.batch_alter_table("results") as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.add_column(sa.Column("lease", sa.Integer(), nullable=False, server_default="0"))
    op.create_table("periodic_runs",
                    sa.Column("name", sa.String(64), nullable=False),
                    sa.Column("last_timestamp", sa.BigInteger(), nullable=False),
                    sa.Column("runs", sa.Integer(), nullable=False),
                    sa.Column("last_run_at", sonoshot.db.models.UTCDateTime(), nullable=False),
                    sa.PrimaryKeyConstraint("name"))
    op.execute("UPDATE studies SET state = 'complete' WHERE state = 'awaiting-detector'")
    op.execute(f"UPDATE results SET sr_path = substr(sr_path, {len(REPORTS_PREFIX) + 1}) "
               f"WHERE sr_path LIKE '{REPORTS_PREFIX}%'")


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+): a copied table could not be swapped in while
    # other tables' foreign keys point at it.
    op.execute(f"UPDATE results SET sr_path = '{REPORTS_PREFIX}' || sr_path")
    op.execute("UPDATE studies SET state = 'complete' WHERE state IN ('deidentified', 'detecting')")
    op.drop_table("periodic_runs")
    with op.batch_alter_table("deliveries", recreate="never") as batch_op:
        batch_op.drop_column("lease")
    with op.batch_alter_table("results", recreate="never") as batch_op:
        batch_op.drop_column("attempt")
    with op.batch_alter_table("associations", recreate="never") as batch_op:
        batch_op.drop_column("node")
    with op.batch_alter_table("instances", recreate="never") as batch_op:
        batch_op.drop_index(batch_op.f("ix_instances_pending_upload"))
        batch_op.drop_column("pending_upload")
        batch_op.drop_column("not_analysed_reason")
        batch_op.drop_column("work_path")
    with op.batch_alter_table("studies", recreate="never") as batch_op:
        batch_op.drop_column("timings")
        batch_op.drop_column("lease")
        batch_op.drop_column("lane")
