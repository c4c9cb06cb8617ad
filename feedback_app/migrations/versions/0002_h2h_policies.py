"""A head-to-head evaluation keeps its rules: projects.policies_yaml and projects.policies_name.

Revision ID: h2h_policies
Revises: schema6

The rules judge of a head-to-head report (a policies YAML, :mod:`alignment.evaluation.rules`) was a file the
report's caller named; the dashboard named none and never showed it. The YAML's text and the name of the file it
came from are now stored with the project (``align feedback h2h create --policies``), so every report judges with
the rules the evaluation was created with, wherever it runs. Every existing project gets "" (no rules): the
reports stay as they were until rules are set.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "h2h_policies"
down_revision = "schema6"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Added NOT NULL with a constant default: both SQLite and PostgreSQL fill the existing rows in place.
    op.add_column("projects", sa.Column("policies_yaml", sa.Text(), nullable=False, server_default=sa.text("''")))
    op.add_column("projects", sa.Column("policies_name", sa.String(256), nullable=False,
                                        server_default=sa.text("''")))


def downgrade() -> None:
    # Batch mode: SQLite drops a column by copying the table (the store runs revisions with foreign keys off,
    # Store.schema_write); PostgreSQL drops it in place. The stored rules are lost, as the older schema has no
    # place for them.
    with op.batch_alter_table("projects") as b:
        b.drop_column("policies_name")
        b.drop_column("policies_yaml")
