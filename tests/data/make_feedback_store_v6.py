"""How tests/data/feedback_store_v6.db and feedback_store_v6.postgresql.sql were made: kept for the record.

They are stores written by the feedback store as it was before its schema moved to Alembic (schema_version "6",
commit 47de697), which tests/app/test_migrations.py opens with today's code. Rerunning this with today's
``feedback_app/store.py`` would not make such a store (it would already carry Alembic's version), so it takes the
old module as a file:

    git show 47de697:feedback_app/store.py > /tmp/store_v6.py
    python tests/data/make_feedback_store_v6.py /tmp/store_v6.py tests/data

The SQLite file is the store the old code wrote. The PostgreSQL file is the same store as the old code would have
written it on PostgreSQL: the DDL its ``metadata.create_all`` emits there (captured from a mock engine, statement
for statement), the SQLite file's rows as INSERTs and each id sequence moved past its rows (as a store whose rows
were inserted by the app has it). Loaded by statements, with no psql client.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PASSWORD = "password-{}"  # users' passwords: PASSWORD.format(name), checked by the test after the upgrade
SHA = "ab" * 32


class Clock:
    """A clock to expire one claim without waiting."""

    def __init__(self) -> None:
        self.now = 1_760_000_000.0

    def __call__(self) -> float:
        return self.now


def load(module_path: str):  # noqa: ANN201 - the old module, whatever it defines
    spec = importlib.util.spec_from_file_location("store_v6", module_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["store_v6"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert module.SCHEMA_VERSION == "6", module.SCHEMA_VERSION
    return module


def fill(old, path: Path) -> None:  # noqa: ANN001
    clock = Clock()
    s = old.Store(path, clock=clock)
    boss = s.add_user("boss", "admin", PASSWORD.format("boss"))
    ann, bob, _carl = (s.add_user(n, "annotator", PASSWORD.format(n)) for n in ("ann", "bob", "carl"))
    s.set_active("carl", False)
    p = s.ensure_project("support")
    s.add_prompts(p.id, [[{"role": "user", "content": f"How do I reset my password ({i})?"}] for i in range(3)],
                  source="tickets.jsonl")
    for item_id, prompt, missing in s.items_short_of_candidates(p.id, 3):
        s.add_candidates(item_id, [(f"Answer {j}: {prompt[0]['content']} Use the link.", f"sft-{j % 2}",
                                    {"temperature": 0.7, "seed": j}) for j in range(missing)],
                         model_path="/models/sft", model_sha256=SHA)
    p = s.update_project(p.id, tags=["wrong", "rude", "other"], overlap=2, assign_batch=1, claim_ttl_minutes=60,
                         uncertain_first=True, guidelines="Rank them. Ünïcode kept: ✓")
    a = s.next_item(ann, p)
    item = s.item(a)
    c = [x.id for x in item.candidates]
    s.submit(ann, a, old.Judgment(ranks={c[0]: 1, c[1]: 2, c[2]: 2}, tags={c[2]: ["rude"]}), "ann-a-1")
    s.submit(ann, a, old.Judgment(ranks={c[0]: 2, c[1]: 1, c[2]: 3}, correction_of=c[2], correction="Better.",
                                  negative="Never say this.", note="revised"), "ann-a-2")
    b = s.next_item(bob, p)
    s.submit(bob, b, old.Judgment(ranks={x.id: 1 for x in s.item(b).candidates}, all_unacceptable=True), "bob-b-1")
    b2 = s.next_item(bob, p)
    s.save_draft(bob.id, b2, {"ranks": {"1": 1}, "note": "half done"})
    clock.now += 61 * 60  # bob's second claim expires: the next claim releases it (released_claims)
    s.next_item(ann, p)
    gold_item = s.project_items(p.id)[-1]
    s.set_gold(p.id, gold_item.id, [x.id for x in gold_item.candidates])
    scores = {cid: float(k) / 10 for k, (_, _, cid, _) in enumerate(s.project_candidates(p.id))}
    s.replace_scores(p.id, scores, reward_model="/models/rm", weights_sha256=SHA)
    s.remember_project(ann.id, p.id)
    job = s.create_job(p.id, "generate", {"n": 3}, boss.id, 3)
    s.update_job(job, status="done", done=3, message="ok")
    rows = [([{"role": "user", "content": f"Held-out question {i}"}], f"old answer {i}", f"new answer {i}")
            for i in range(2)]
    s.add_head_to_head("eval", old.ModelSide("sft-v1"), old.ModelSide("dpo-v2", "/models/dpo", SHA), rows)
    assert s.integrity_problems() == []
    s.close()


def postgresql_sql(old, db: Path) -> str:  # noqa: ANN001
    from sqlalchemy import Integer, create_engine, create_mock_engine, insert, select
    from sqlalchemy.dialects import postgresql

    statements: list[str] = []
    mock = create_mock_engine("postgresql+psycopg://",
                              lambda sql, *a, **k: statements.append(str(sql.compile(dialect=mock.dialect)).strip()))
    old.metadata.create_all(mock, checkfirst=False)
    engine = create_engine(f"sqlite:///{db}")
    dialect = postgresql.dialect()
    with engine.connect() as c:
        for table in old.metadata.sorted_tables:
            rows = c.execute(select(table).order_by(*table.primary_key.columns)).mappings().all()
            for row in rows:
                statements.append(str(insert(table).values(dict(row)).compile(
                    dialect=dialect, compile_kwargs={"literal_binds": True})))
            serial = [col for col in table.primary_key.columns if isinstance(col.type, Integer)
                      and col.autoincrement in (True, "auto") and len(table.primary_key.columns) == 1
                      and not col.foreign_keys]
            if serial and rows:
                col = serial[0].name
                statements.append(f"SELECT setval(pg_get_serial_sequence('{table.name}', '{col}'), "
                                  f"(SELECT max({col}) FROM {table.name}))")
    engine.dispose()
    header = ("-- The feedback store of tests/data/feedback_store_v6.db as the store of commit 47de697 "
              "(schema_version 6,\n-- before Alembic) makes it on PostgreSQL; see make_feedback_store_v6.py. "
              "One statement per block.\n")
    return header + "\n".join(s.rstrip(";") + ";\n" for s in statements)


def main(module_path: str, out: str) -> None:
    old = load(module_path)
    out_dir = Path(out)
    db = out_dir / "feedback_store_v6.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    fill(old, db)
    import sqlite3

    con = sqlite3.connect(db)  # fold the WAL into the file and leave one self-contained file behind
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("VACUUM")
    con.close()
    (out_dir / "feedback_store_v6.postgresql.sql").write_text(postgresql_sql(old, db), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:3])
