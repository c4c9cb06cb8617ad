"""Baseline: the feedback store at schema 6, the last schema before Alembic.

Revision ID: schema6
Revises: (none)

An empty database gets the schema-6 tables here. A store made before Alembic (``meta.schema_version`` 1 to 6) is
brought to schema 6 by :func:`feedback_app.migrations.schema6.upgrade_legacy` and stamped with this revision; a
new store is created from today's metadata and stamped with the head. The tables come from the frozen copy in
``schema6.py``, never from ``feedback_app.store.metadata``, which moves on with later revisions.
"""

from __future__ import annotations

from alembic import op

from feedback_app.migrations import schema6

revision = "schema6"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema6.metadata.create_all(op.get_bind())


def downgrade() -> None:
    # Undoing the baseline would drop every table and every judgment with it: a store is deleted, not downgraded.
    raise NotImplementedError("the baseline revision is not undone: delete the store instead")
