"""The feedback store's schema 6, frozen: the last schema of the scheme before Alembic, and Alembic's baseline.

Two things need the tables exactly as they were at schema 6, whatever ``feedback_app.store.metadata`` says by
now: the baseline revision (``versions/0001_schema6.py``, which creates them on an empty database), and the
upgrade of a store written before Alembic (:func:`upgrade_legacy`: a store of ``schema_version`` 1 to 6 gets the
tables and columns it lacks, then is stamped with the baseline). Created from today's metadata instead, a
table added after the baseline would exist before the revision that adds it runs. So this is a copy, never
edited: a schema change is a new revision, and ``feedback_app.store.metadata`` follows it.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    inspect,
    text,
)
from sqlalchemy.engine import Connection

VERSION = "6"  # meta.schema_version of a store at this schema; the versions 1-6 are all upgraded by upgrade_legacy
LEGACY_VERSIONS = ("1", "2", "3", "4", "5", "6")

metadata = MetaData()

Table("meta", metadata, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False))

Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("pw_hash", String(256), nullable=False),
    Column("session_epoch", Integer, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
)

Table(
    "projects", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("guidelines", Text, nullable=False),
    Column("guideline_version", Integer, nullable=False),
    Column("tags", Text, nullable=False),
    Column("candidates_per_item", Integer, nullable=False),
    Column("overlap", Integer, nullable=False),
    Column("assign_batch", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("claim_ttl_minutes", Integer, nullable=False, server_default=text("1440")),
    Column("uncertain_first", Boolean, nullable=False, server_default=false()),
    Column("task", String(16), nullable=False, server_default=text("'rank'")),
    Column("baseline", String(512), nullable=False, server_default=text("''")),
    Column("challenger", String(512), nullable=False, server_default=text("''")),
)

Table(
    "items", metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("prompt_hash", String(64), nullable=False),
    Column("source", String(256), nullable=False),
    Column("n_assigned", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("project_id", "prompt_hash"),
)

Table(
    "candidates", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False, index=True),
    Column("text", Text, nullable=False),
    Column("text_hash", String(64), nullable=False),
    Column("model", String(512), nullable=False),
    Column("generation", Text, nullable=False),
    Column("source", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("model_path", Text, nullable=False, server_default=text("''")),
    Column("model_sha256", String(64), nullable=False, server_default=text("''")),
    UniqueConstraint("item_id", "text_hash"),
)

Table(
    "assignments", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("assigned_at", Float, nullable=False),
    UniqueConstraint("item_id", "user_id"),
)

Table(
    "released_claims", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("assigned_at", Float, nullable=False),
    Column("released_at", Float, nullable=False),
    Column("reason", String(16), nullable=False),
    UniqueConstraint("item_id", "user_id"),
)

Table(
    "gold_items", metadata,
    Column("item_id", Integer, ForeignKey("items.id"), primary_key=True),
    Column("ordering", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

Table(
    "candidate_scores", metadata,
    Column("candidate_id", Integer, ForeignKey("candidates.id"), primary_key=True),
    Column("score", Float, nullable=False),
    Column("reward_model", Text, nullable=False),
    Column("weights_sha256", String(64), nullable=False),
    Column("scored_at", Float, nullable=False),
)

Table(
    "judgments", metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("payload", Text, nullable=False),
    Column("guideline_version", Integer, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("submission_key", String(64), nullable=False, unique=True),
    UniqueConstraint("user_id", "item_id", "revision"),
    Index("ix_judgments_item", "item_id"),
)

Table(
    "drafts", metadata,
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("item_id", Integer, ForeignKey("items.id"), primary_key=True),
    Column("payload", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

Table(
    "jobs", metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("params", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("done", Integer, nullable=False),
    Column("total", Integer, nullable=False),
    Column("message", Text, nullable=False),
    Column("created_by", Integer, ForeignKey("users.id"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Columns schema versions 2 to 6 added to tables that existed before them, as (table, column, SQL type and
# default): rows that existed take the default. FALSE, not 0: PostgreSQL refuses an integer default for a
# boolean (SQLite reads FALSE as 0 since 3.23).
ADDED_COLUMNS = (
    ("projects", "claim_ttl_minutes", "INTEGER NOT NULL DEFAULT 1440"),  # 2
    ("projects", "uncertain_first", "BOOLEAN NOT NULL DEFAULT FALSE"),  # 4
    ("candidates", "model_path", "TEXT NOT NULL DEFAULT ''"),  # 5
    ("candidates", "model_sha256", "VARCHAR(64) NOT NULL DEFAULT ''"),  # 5
    ("projects", "task", "VARCHAR(16) NOT NULL DEFAULT 'rank'"),  # 6
    ("projects", "baseline", "VARCHAR(512) NOT NULL DEFAULT ''"),  # 6
    ("projects", "challenger", "VARCHAR(512) NOT NULL DEFAULT ''"),  # 6
)


def upgrade_legacy(c: Connection) -> None:
    """Bring a store of ``schema_version`` 1 to 6 to schema 6: the tables it lacks, then the columns. What every
    open did before Alembic; inside the caller's transaction and schema lock."""
    metadata.create_all(c)  # checks first: only the tables this store lacks
    inspector = inspect(c)
    for table, column, ddl in ADDED_COLUMNS:
        if column not in {col["name"] for col in inspector.get_columns(table)}:
            c.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
    c.exec_driver_sql(f"UPDATE meta SET value = '{VERSION}' WHERE key = 'schema_version'")
