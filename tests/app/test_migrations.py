"""The feedback store's schema migrations (feedback_app.migrations, Alembic): a store written before Alembic (the
committed tests/data/feedback_store_v6.*) is upgraded in place with its data whole and its schema exactly today's
metadata; the revisions from an empty database make that schema too; a revision added later runs once, data and
all, however many processes open the store together; opening a current store only reads; ``align app db``.

Every test runs on SQLite and, when ALIGN_TEST_POSTGRES_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.engine import Engine

from alignment.cli import main
from feedback_app import migrations
from feedback_app.migrations import schema6
from feedback_app.store import SCHEMA_VERSION, Judgment, Store, StoreError, database_url, metadata
from tests.app.test_feedback_store import _postgres_url
from tests.conftest import downgrade_store, open_store_concurrently

DATA = Path(__file__).resolve().parents[1] / "data"
BACKENDS = ["sqlite", "postgresql"]


def _old_store(kind: str, tmp_path: Path) -> str:
    """A store as the feedback store of schema_version 6 (before Alembic) wrote it: the committed SQLite file,
    copied, or the committed PostgreSQL statements loaded into a fresh database. Its URL."""
    if kind == "sqlite":
        path = tmp_path / "old.db"
        shutil.copy(DATA / "feedback_store_v6.db", path)
        return database_url(path)
    url = _postgres_url()
    engine = create_engine(url)
    with engine.begin() as c:
        for statement in (DATA / "feedback_store_v6.postgresql.sql").read_text(encoding="utf-8").split(";\n\n"):
            if statement.strip():
                c.exec_driver_sql(statement)
    engine.dispose()
    return url


def _empty(kind: str, tmp_path: Path) -> str:
    return database_url(tmp_path / "empty.db") if kind == "sqlite" else _postgres_url()


def _rows(url: str) -> dict[str, list[tuple]]:
    """Every row of every schema-6 table, by primary key, in the schema-6 columns."""
    engine = create_engine(url)
    with engine.connect() as c:
        rows = {t.name: [tuple(r) for r in c.execute(select(t).order_by(*t.primary_key.columns))]
                for t in schema6.metadata.sorted_tables}
    engine.dispose()
    return rows


def _inspect(url: str) -> tuple[str | None, list]:
    """(the store's revision, its schema's differences from today's metadata, as Alembic's autogenerate sees
    them: none when the schema is exactly what a new store gets)."""
    engine = create_engine(url)
    with engine.connect() as c:
        ctx = MigrationContext.configure(c)
        found = ctx.get_current_revision(), compare_metadata(ctx, metadata)
    engine.dispose()
    return found


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


# ------------------------------------------------------------------------------------------------ the baseline


def test_the_fixture_is_a_store_from_before_alembic(kind, tmp_path):
    url = _old_store(kind, tmp_path)
    engine = create_engine(url)
    with engine.connect() as c:
        assert migrations.current(c) is None and migrations.legacy_version(c) == "6"
    engine.dispose()
    rows = _rows(url)
    assert {t: len(r) for t, r in rows.items() if t in ("users", "projects", "items", "judgments")} == {
        "users": 4, "projects": 2, "items": 5, "judgments": 3}


def test_a_store_made_before_alembic_is_upgraded_in_place(kind, tmp_path):
    url = _old_store(kind, tmp_path)
    before = _rows(url)
    store = Store(url, create=False)  # what any command opens: upgraded as it opens
    try:
        revision, differences = _inspect(url)
        assert revision == migrations.head()
        assert differences == []  # the upgraded schema is exactly what a new store gets
        assert _rows(url) == before  # every row of every table, every column
        with store.read() as c:
            assert c.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar() == SCHEMA_VERSION
        # The data reads as it was written.
        assert store.authenticate("ann", "password-ann") and store.authenticate("boss", "password-boss")
        assert not store.get_user("carl").active
        p = store.project("support")
        assert (p.overlap, p.assign_batch, p.claim_ttl_minutes, p.uncertain_first) == (2, 1, 60, True)
        assert p.tags == ("wrong", "rude", "other") and p.guidelines.endswith("Ünïcode kept: ✓")
        latest = store.latest_judgments(p.id)
        assert len(latest) == 2 and store.count_judgment_rows() == 3
        revised = next(j for j in latest if j.revision == 2)
        assert (revised.judgment.correction, revised.judgment.note) == ("Better.", "revised")
        assert len(store.gold(p.id)) == 1 and store.score_summary(p.id) is not None
        assert store.remembered_project(store.get_user("ann").id) == p
        h2h = store.project("eval")
        assert h2h.is_head_to_head and (h2h.baseline, h2h.challenger) == ("sft-v1", "dpo-v2")
        assert store.integrity_problems() == []
        # And takes new writes: ids continue after the old rows (PostgreSQL's sequences included).
        dana = store.add_user("dana", "annotator", "password-dana")
        assert dana.id == 5
        item_id = store.next_item(dana, p)
        item = store.item(item_id)
        store.submit(dana, item_id, Judgment(ranks={c.id: r + 1 for r, c in enumerate(item.candidates)}), "dana-1")
        assert store.integrity_problems() == []
    finally:
        store.close()


def test_a_new_store_is_todays_schema_at_the_head(kind, tmp_path):
    url = _empty(kind, tmp_path)
    Store(url).close()
    assert _inspect(url) == (migrations.head(), [])
    store = Store(url, create=False)
    assert len(store.secret()) == 32  # made with the store
    with store.read() as c:
        assert c.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar() == SCHEMA_VERSION
    store.close()


def test_the_revisions_from_an_empty_database_make_todays_schema(kind, tmp_path):
    # A new store is made from today's metadata and stamped with the head: that is only right while the revisions
    # make the same schema. A revision that changes the schema without today's metadata (or the reverse) fails here.
    url = _empty(kind, tmp_path)
    engine = create_engine(url)
    with engine.begin() as c:
        command.upgrade(migrations.config(c), "head")
    engine.dispose()
    assert _inspect(url) == (migrations.head(), [])


# ------------------------------------------------------------------------------------------------ a later revision

# A revision after the head, in a folder of the test's own: a column added, filled from other tables, and a
# constraint SQLite can only add by copying the table (Alembic's batch mode) -- the projects table, which items
# and jobs reference. Its meta row is inserted once: a second run would break the primary key.
LATER = '''
import sqlalchemy as sa
from alembic import op

revision = "test_priority"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("projects", sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE projects SET priority = (SELECT count(*) FROM items WHERE items.project_id = projects.id)")
    with op.batch_alter_table("projects") as b:
        b.create_check_constraint("ck_projects_priority", "priority >= 0")
    op.execute("INSERT INTO meta (key, value) VALUES ('test_priority_applied', 'once')")


def downgrade():
    op.execute("DELETE FROM meta WHERE key = 'test_priority_applied'")
    with op.batch_alter_table("projects") as b:
        b.drop_constraint("ck_projects_priority", type_="check")
        b.drop_column("priority")
'''


@pytest.fixture
def later_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    folder = tmp_path / "later revisions"  # a space in the path: the locations are split on os.pathsep only
    folder.mkdir()
    (folder / "0002_test_priority.py").write_text(LATER.format(down=migrations.head()), encoding="utf-8")
    monkeypatch.setattr(migrations, "VERSION_LOCATIONS", (*migrations.VERSION_LOCATIONS, str(folder)))
    assert migrations.head() == "test_priority"
    return "test_priority"


def _priorities(url: str) -> tuple[dict[str, int], list[str]]:
    engine = create_engine(url)
    with engine.connect() as c:
        found = (dict(c.execute(text("SELECT name, priority FROM projects")).all()),
                 list(c.execute(text("SELECT value FROM meta WHERE key = 'test_priority_applied'")).scalars()))
    engine.dispose()
    return found


def test_a_later_revision_runs_once_when_concurrent_openers_upgrade_an_old_store(kind, tmp_path, later_revision):
    url = _old_store(kind, tmp_path)
    before = _rows(url)
    errors = open_store_concurrently(url)  # the server and CLI commands starting together: legacy, baseline, later
    assert not errors, errors
    store = Store(url)  # and once more, after: nothing left to do
    try:
        revision, differences = _inspect(url)
        assert revision == later_revision
        assert [d[0] for d in differences] == ["remove_column"] and differences[0][2] == "projects"  # the new column
        assert _priorities(url) == ({"support": 3, "eval": 2}, ["once"])  # the data moved, the revision ran once
        after = _rows(url)
        # Every row survived, the copied projects table's too.
        assert {t: r for t, r in after.items() if t != "meta"} == {t: r for t, r in before.items() if t != "meta"}
        assert set(after["meta"]) - set(before["meta"]) == {("test_priority_applied", "once")}
        if kind == "sqlite":
            with store.read() as c:
                assert c.exec_driver_sql("PRAGMA foreign_key_check").all() == []  # items and jobs still point home
        with pytest.raises(Exception, match="ck_projects_priority|CHECK constraint"), store.write() as c:
            c.execute(text("UPDATE projects SET priority = -1"))  # the constraint the copy added is there
        assert store.project("support").overlap == 2 and store.integrity_problems() == []
        # The revision's downgrade works too: back to a store of schema 3 before Alembic, and up again.
        downgrade_store(store, "3")
    finally:
        store.close()
    Store(url, create=False).close()
    assert _inspect(url)[0] == later_revision and _priorities(url) == ({"support": 3, "eval": 2}, ["once"])


def test_a_store_at_an_older_revision_gets_only_the_later_ones(kind, tmp_path, monkeypatch):
    url = _empty(kind, tmp_path)
    Store(url).close()  # at the baseline
    folder = tmp_path / "later"
    folder.mkdir()
    (folder / "0002_test_priority.py").write_text(LATER.format(down=migrations.head()), encoding="utf-8")
    monkeypatch.setattr(migrations, "VERSION_LOCATIONS", (*migrations.VERSION_LOCATIONS, str(folder)))
    store = Store(url)
    store.ensure_project("p")
    store.close()
    assert _inspect(url)[0] == "test_priority" and _priorities(url) == ({"p": 0}, ["once"])


def test_a_store_of_a_newer_release_is_refused(kind, tmp_path):
    url = _empty(kind, tmp_path)
    store = Store(url)
    with store.write() as c:
        c.execute(text("UPDATE alembic_version SET version_num = 'from_a_newer_release'"))
    store.close()
    with pytest.raises(StoreError, match="from_a_newer_release, which this version .* a newer release upgraded it"):
        Store(url, create=False)


# ------------------------------------------------------------------------------------------------ opening


def test_opening_a_current_store_only_reads(kind, tmp_path):
    url = _empty(kind, tmp_path)
    Store(url).close()
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ARG001
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        Store(url).close()  # create=True, as the server opens it
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    writes = [s for s in statements
              if re.match(r"\s*(BEGIN IMMEDIATE|CREATE|ALTER|INSERT|UPDATE|DELETE|DROP)", s, re.IGNORECASE)
              or "advisory" in s]
    assert statements and not writes, statements


# ------------------------------------------------------------------------------------------------ the CLI


def test_db_current_reads_and_db_upgrade_upgrades(kind, tmp_path, capsys):
    url = _old_store(kind, tmp_path)
    where = str(tmp_path / "old.db") if kind == "sqlite" else url
    assert main(["app", "--store", where, "db", "current"]) == 0
    assert "made before Alembic, schema_version 6" in capsys.readouterr().out
    assert _inspect(url)[0] is None  # current changed nothing
    assert main(["app", "--store", where, "db", "upgrade"]) == 0  # --store before the subcommands ...
    out = capsys.readouterr().out
    assert f"upgraded from schema_version 6 (before Alembic) to revision {migrations.head()} (head)" in out
    assert _inspect(url) == (migrations.head(), [])
    assert main(["app", "db", "upgrade", "--store", where]) == 0  # ... or after them
    assert f"already at revision {migrations.head()} (head)" in capsys.readouterr().out
    assert main(["app", "db", "--store", where, "current"]) == 0  # ... or between them
    assert f"revision {migrations.head()} (head)" in capsys.readouterr().out
    assert main(["app", "db", "current", "--store", str(tmp_path / "none.db")]) == 2
    assert "no feedback store here" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
