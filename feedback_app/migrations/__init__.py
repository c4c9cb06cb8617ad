"""Schema migrations of the feedback store, with Alembic.

The revisions are package data (``versions/``, beside ``env.py``), found from this file, so an installed wheel
migrates as a checkout does; Alembic is configured here in code, with no ``alembic.ini``. What opening a store
does (:meth:`feedback_app.store.Store`, through :func:`upgrade`):

- a store at the head revision: nothing but the read of ``alembic_version`` (:func:`current`);
- a new store (an empty database, opened to create): today's tables, stamped with the head;
- a store made before Alembic (``meta.schema_version`` 1 to 6, no ``alembic_version``): brought to schema 6 as
  every open did before (:func:`feedback_app.migrations.schema6.upgrade_legacy`: missing tables and columns),
  stamped with the baseline revision (schema 6), then upgraded like any store;
- a store at an older revision: every later revision, in order, once.

All of it runs inside the caller's write transaction (:meth:`feedback_app.store.Store.schema_write`), after its
schema lock: concurrent openers queue and the later ones find the store current; a revision that fails rolls
everything back.

``meta.schema_version`` is retired: it stays "6" for good, written into new stores too, and only tells a store
made before Alembic (which has no ``alembic_version``) which legacy version it is at. Kept rather than deleted so
that a release older than Alembic, opened on a newer store (a rollback), finds a version it knows is current and
issues no DDL of its own; ``alembic_version`` is the schema's version from schema 6 on.

A schema change is a revision in ``versions/`` (upgrade and downgrade: the tests' ``downgrade_store`` undoes
the revisions after the baseline with their downgrades) together with the same change to
``feedback_app.store.metadata``; tests/app/test_migrations.py fails while the two disagree. Alembic's commands
take :func:`config`; e.g. a draft from the difference between the metadata and a store at the head::

    python -c "from alembic import command; from feedback_app.migrations import config; \\
               command.revision(config(url='sqlite:///feedback.db'), 'add x', autogenerate=True)"
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from feedback_app.migrations import schema6

MIGRATIONS_DIR = Path(__file__).resolve().parent
# Where revisions are looked for. A module constant so that a test can add a folder of its own revisions.
VERSION_LOCATIONS: tuple[str, ...] = (str(MIGRATIONS_DIR / "versions"),)
BASELINE = "schema6"  # the revision that is schema 6, the last schema before Alembic
# Alembic's running context (``alembic.context``, ``alembic.op``) is one global of the process: two stores
# upgraded at once by two threads would run their revisions in each other's. Taken after a store's schema lock,
# and nothing else is waited for while it is held, so it cannot deadlock with those locks.
_ALEMBIC = threading.Lock()


def config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Alembic's configuration for the feedback store: the scripts here, the revisions of VERSION_LOCATIONS, and
    the connection to migrate (a store being opened) or the URL to open (a developer's command)."""
    return _config(VERSION_LOCATIONS, connection, url)


def _config(locations: tuple[str, ...], connection: Connection | None, url: str | None) -> Config:
    cfg = Config()
    # Config options are interpolated (ConfigParser): a % in a path or URL is written %%.
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")  # version_locations split on os.pathsep: a path may hold spaces
    cfg.set_main_option("version_locations", os.pathsep.join(locations).replace("%", "%%"))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


@functools.lru_cache(maxsize=8)
def _script(locations: tuple[str, ...]) -> ScriptDirectory:
    # Keyed by the locations: a test that adds a folder gets its own; every open of a process shares one, so
    # only the first parses the revision files.
    return ScriptDirectory.from_config(_config(locations, None, None))


def script() -> ScriptDirectory:
    """The revisions this code knows."""
    return _script(VERSION_LOCATIONS)


def head() -> str:
    """The newest revision: what every store is upgraded to. One head only (two would be an unmerged branch,
    which Alembic refuses here)."""
    h = script().get_current_head()
    assert h is not None, "no revisions in " + os.pathsep.join(VERSION_LOCATIONS)
    return h


def current(c: Connection) -> str | None:
    """The store's revision; None when it has none (a new database, or a store made before Alembic)."""
    return MigrationContext.configure(c).get_current_revision()


def legacy_version(c: Connection) -> str | None:
    """``meta.schema_version`` of a store made before Alembic; None where there is no ``meta`` table."""
    if not inspect(c).has_table("meta"):
        return None
    return c.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()


def describe(c: Connection) -> str:
    """Where the store at ``c`` stands, in words (``align app db current``); reads only."""
    rev = current(c)
    if rev is not None:
        known = _known(rev)
        if rev == head():
            return f"revision {rev} (head)"
        if known:
            return f"revision {rev}; head is {head()}: opening the store (or `db upgrade`) upgrades it"
        return f"revision {rev}, unknown to this version (a newer release's): this version cannot use the store"
    version = legacy_version(c)
    if version is None:
        return "no feedback store here"
    return (f"made before Alembic, schema_version {version}: opening the store (or `db upgrade`) brings it to "
            f"revision {head()}")


def _known(rev: str) -> bool:
    try:
        return script().get_revision(rev) is not None
    except Exception:  # Alembic's ResolutionError/CommandError: a revision of another (newer) release
        return False


def upgrade(c: Connection, *, create: bool) -> str | None:
    """Bring the store at ``c`` to the head revision, inside the caller's transaction and schema lock (checked
    again here: another opener may have upgraded it while this one waited). Returns the revision it was at
    before ("" for a store made before Alembic, "created" for a new store), or None when there was nothing to
    do: already at the head, or no store and ``create`` false.

    Raises StoreError for a store this code cannot upgrade: a revision it does not know (a newer release
    upgraded it) or a ``schema_version`` that is not 1 to 6."""
    from feedback_app.store import StoreError, metadata

    ctx = MigrationContext.configure(c)
    rev = ctx.get_current_revision()
    was = rev
    if rev is None:
        version = legacy_version(c)
        if version is None:  # an empty database
            if not create:
                return None
            # A new store: today's tables at once rather than every revision in turn, stamped with the head.
            # tests/app/test_migrations.py checks that the revisions from the baseline make the same schema.
            metadata.create_all(c)
            c.execute(text("INSERT INTO meta (key, value) VALUES ('schema_version', :v)"), {"v": schema6.VERSION})
            ctx.stamp(script(), head())
            return "created"
        if version not in schema6.LEGACY_VERSIONS:
            raise StoreError(f"the store's schema_version is {version!r}, which no release of the feedback store "
                             f"wrote (1 to {schema6.VERSION}, then Alembic's alembic_version)")
        schema6.upgrade_legacy(c)
        ctx.stamp(script(), BASELINE)
        rev, was = BASELINE, ""
    if rev == head():
        return None if was == rev else was
    if not _known(rev):
        raise StoreError(f"the store is at schema revision {rev}, which this version of the feedback store does "
                         f"not know (its newest is {head()}): a newer release upgraded it; use that release")
    with _ALEMBIC:
        command.upgrade(config(c), "head")
    if c.dialect.name == "sqlite":
        # The revisions ran with foreign keys off (Store.schema_write): every reference must hold before the
        # commit, or the whole upgrade is rolled back.
        broken = c.exec_driver_sql("PRAGMA foreign_key_check").all()
        if broken:
            raise StoreError(f"the schema upgrade to {head()} would break {len(broken)} reference(s), e.g. "
                             f"{tuple(broken[0])}: nothing was changed")
    return was
