"""Alembic's environment for the feedback store: run by :mod:`feedback_app.migrations` on a store being opened,
and by ``alembic`` commands a developer runs through :func:`feedback_app.migrations.config`.

Opening a store hands its connection in (``config.attributes["connection"]``), inside the write transaction that
holds the store's schema lock: the migrations run in that transaction (Alembic sees it is already begun and does
not begin or commit one of its own), so a failed revision leaves the store as it was, and concurrent openers
queue on the lock instead of migrating twice. Without a connection (a developer's ``alembic revision
--autogenerate``), the URL of the config's ``sqlalchemy.url`` is opened.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from feedback_app.store import metadata


def _run(connection: Connection) -> None:
    # SQLite alters most things by copying the table (Alembic's batch mode); the store runs the revisions with
    # foreign keys off (Store.schema_write), as SQLite's documented procedure for such changes has it.
    sqlite = connection.dialect.name == "sqlite"
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=sqlite)
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise SystemExit("the feedback store's migrations run on a database, not as SQL (--sql)")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
    try:
        with engine.begin() as c:
            _run(c)
    finally:
        engine.dispose()


_main()
