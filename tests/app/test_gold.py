"""Gold items: an admin marks items with a known ordering (by hand or from a JSONL file, all or nothing),
annotators are served them like any other item, and the dashboard scores each annotator's latest judgments
of them by pairwise agreement. A store made before gold items is upgraded when opened.

Every store test runs on SQLite and, when ALIGN_TEST_POSTGRES_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from alignment.cli import main
from feedback_app.store import (
    SCHEMA_VERSION,
    GoldScore,
    Judgment,
    Store,
    StoredJudgment,
    StoreError,
    gold_accuracy,
    gold_agreement,
    meta,
)
from tests.app.test_feedback_store import _fill, _postgres_url, _prompt, _rank_all, _users
from tests.conftest import app_login, call_api, downgrade_store, open_store_concurrently


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "feedback.db" if request.param == "sqlite" else _postgres_url())
    yield s
    s.close()


def _ids(store: Store, item_id: int) -> list[int]:
    """The item's candidate ids in stored order: what letters A, B, C... and indices 0, 1, 2... name."""
    return [c.id for c in store.item(item_id).candidates]


def _item_ids(store: Store, project_id: int) -> list[int]:
    return [store.item_id_for_prompt(project_id, _prompt(f"default question {i}")) for i in range(3)]


def _sj(user: str, item_id: int, ranks: dict[int, int], unacceptable: bool = False) -> StoredJudgment:
    return StoredJudgment(0, item_id, 0, user, 0.0, Judgment(ranks=ranks, all_unacceptable=unacceptable), 1, 1)


# ------------------------------------------------------------------------------------------------ the measure


@pytest.mark.parametrize("ranks, expected", [
    ({1: 1, 2: 2, 3: 3}, 1.0),  # the gold order
    ({1: 3, 2: 2, 3: 1}, 0.0),  # reversed: every pair wrong
    ({1: 1, 2: 1, 3: 2}, 2.5 / 3),  # (1,2) tied: 1/2; (1,3) and (2,3) right
    ({1: 2, 2: 1, 3: 3}, 2 / 3),  # (1,2) swapped; (1,3) and (2,3) right
    ({1: 1, 2: 1, 3: 1}, 0.5),  # all tied: half of every pair
    ({1: 1, 3: 2}, 1.0),  # 2 not ranked: the one pair left, (1,3), is right
    ({1: 1}, None),  # no pair
])
def test_pairwise_agreement_with_a_gold_ordering(ranks, expected):
    got = gold_agreement([1, 2, 3], ranks)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_pairwise_agreement_on_four_candidates():
    # gold 10 > 20 > 30 > 40; the ranking swaps 20 and 30 and ties 30 with 40:
    # (10,20) 1, (10,30) 1, (10,40) 1, (20,30) 0, (20,40) 1, (30,40) 1/2  ->  4.5 / 6
    assert gold_agreement([10, 20, 30, 40], {10: 1, 30: 2, 20: 3, 40: 3}) == pytest.approx(0.75)
    assert gold_agreement([10, 20, 30, 40], {10: 1, 20: 2, 30: 3, 40: 4, 99: 5}) == 1.0  # 99 is not in gold


def test_gold_accuracy_per_annotator():
    gold = {1: [11, 12, 13], 2: [23, 21, 22]}
    latest = [
        _sj("u", 1, {11: 1, 12: 2, 13: 3}),  # 1
        _sj("u", 2, {21: 1, 22: 2, 23: 3}),  # (23,21) 0, (23,22) 0, (21,22) 1 -> 1/3
        _sj("u", 3, {31: 1, 32: 2}),  # not a gold item: not counted
        _sj("v", 1, {11: 1, 12: 1, 13: 2}),  # 2.5/3
        _sj("v", 2, {}, unacceptable=True),  # judged, not scored
        _sj("w", 2, {21: 1, 22: 2, 23: 3}, unacceptable=True),  # ranks ignored when all unacceptable
        _sj("x", 3, {31: 1, 32: 2}),  # no gold judgment: not listed
    ]
    scores = gold_accuracy(latest, gold)
    assert set(scores) == {"u", "v", "w"}
    assert scores["u"].judged == 2 and scores["u"].scored == 2 and scores["u"].accuracy == pytest.approx(2 / 3)
    assert scores["v"].judged == 2 and scores["v"].scored == 1 and scores["v"].accuracy == pytest.approx(2.5 / 3)
    assert scores["w"] == GoldScore(1, 0, None)
    assert gold_accuracy(latest, {}) == {}


# ------------------------------------------------------------------------------------------------ marking gold


def test_an_admin_marks_changes_and_clears_gold(store):
    p = _fill(store, 3)
    a, b, c = _item_ids(store, p.id)
    ids = _ids(store, a)
    store.set_gold(p.id, a, [ids[2], ids[0], ids[1]])
    store.set_gold(p.id, b, _ids(store, b))
    assert store.gold(p.id) == {a: [ids[2], ids[0], ids[1]], b: _ids(store, b)}
    store.set_gold(p.id, a, ids)  # a new ordering replaces the old one
    store.set_gold(p.id, b, None)
    store.set_gold(p.id, c, None)  # clearing an item that is not gold: nothing to do
    assert store.gold(p.id) == {a: ids}

    other = _fill(store, 1, project="other")
    elsewhere = store.item_id_for_prompt(other.id, _prompt("other question 0"))
    bad = {
        "no item": (p.id, 10_000, ids),
        "another project's item": (p.id, elsewhere, _ids(store, elsewhere)),
        "a response missing": (p.id, a, ids[:2]),
        "a response twice": (p.id, a, [ids[0], ids[0], ids[1]]),
        "another item's response": (p.id, a, [ids[0], ids[1], _ids(store, b)[0]]),
        "not ids": (p.id, a, [True, ids[1], ids[2]]),
    }
    for what, (project_id, item_id, ordering) in bad.items():
        with pytest.raises(StoreError):
            store.set_gold(project_id, item_id, ordering)
        assert store.gold(p.id) == {a: ids}, what
    store.add_prompts(p.id, [_prompt("no answers yet")])
    with pytest.raises(StoreError, match="2 or more responses"):
        store.set_gold(p.id, store.item_id_for_prompt(p.id, _prompt("no answers yet")), [])
    assert store.gold(other.id) == {}
    assert store.integrity_problems() == []


def test_gold_items_are_served_like_any_other(store):
    p = store.update_project(_fill(store, 3).id, overlap=1, assign_batch=2)
    a, b, c = _item_ids(store, p.id)
    before = {i: store.item(i) for i in (a, b, c)}
    store.set_gold(p.id, b, list(reversed(_ids(store, b))))
    store.set_gold(p.id, c, _ids(store, c))
    assert {i: store.item(i) for i in (a, b, c)} == before  # what an annotator is shown: unchanged
    u, v = _users(store, 2)
    assert store.next_item(u, p) == a  # claimed in the usual order: gold is neither skipped nor favoured
    assert store.progress(u, p).assigned == 2  # a and b
    store.submit(u, a, _rank_all(store.item(a), [0, 1, 2]), "u-a")
    assert store.next_item(u, p) == b
    store.submit(u, b, _rank_all(store.item(b), [0, 1, 2]), "u-b")
    assert store.next_item(v, p) == c
    assert store.integrity_problems() == []


# ------------------------------------------------------------------------------------------------ the file


def _gold_file(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in lines),
                    encoding="utf-8")
    return path


def test_import_gold_by_id_or_prompt_with_letters_or_indices(store, tmp_path):
    p = _fill(store, 3)
    a, b, c = _item_ids(store, p.id)
    store.set_gold(p.id, c, _ids(store, c))
    path = _gold_file(tmp_path / "gold.jsonl", [
        {"item_id": a, "ordering": ["C", "a", "B"]},
        "",  # blank lines are skipped
        {"prompt": "default question 1", "ordering": [1, 2, 0]},
        {"prompt": [{"role": "user", "content": "default question 2"}], "ordering": None},  # clears
    ])
    assert store.import_gold(p.id, path) == (2, 1)
    ia, ib = _ids(store, a), _ids(store, b)
    assert store.gold(p.id) == {a: [ia[2], ia[0], ia[1]], b: [ib[1], ib[2], ib[0]]}
    # item_id and prompt together must agree
    _gold_file(path, [{"item_id": c, "prompt": "default question 2", "ordering": [0, 1, 2]}])
    assert store.import_gold(p.id, path) == (1, 0) and store.gold(p.id)[c] == _ids(store, c)


BAD_ROWS = [
    ("not json", None, "not valid JSON"),
    ("[1, 2]", None, "each line is a JSON object"),
    ({"ordering": ["A", "B", "C"]}, "item_id", "name the item by 'item_id' or 'prompt'"),
    ({"item_id": "2", "ordering": ["A", "B", "C"]}, "item_id", "must be an integer item id"),
    ({"item_id": 10_000, "ordering": ["A", "B", "C"]}, "item_id", "no item 10000 in this project"),
    ({"prompt": "no such question", "ordering": ["A", "B", "C"]}, "prompt", "no prompt with this text"),
    ({"prompt": 5, "ordering": ["A", "B", "C"]}, "prompt", "must be the prompt's text or a list of messages"),
    ({"item_id": "B_ID", "prompt": "default question 0", "ordering": [0, 1, 2]}, "prompt", "is the prompt of item"),
    ({"item_id": "A_ID", "ordering": [0, 1, 2]}, "item_id", "names the same item as line 1"),
    ({"item_id": "B_ID"}, "ordering", "missing"),
    ({"item_id": "B_ID", "ordering": "ABC"}, "ordering", "must be a list"),
    ({"item_id": "B_ID", "ordering": ["A", "D", "B"]}, "ordering[1]", "'D' is not one of the item's 3 responses"),
    ({"item_id": "B_ID", "ordering": [0, True, 2]}, "ordering[1]", "is not one of the item's 3 responses"),
    ({"item_id": "B_ID", "ordering": [0, 3, 1]}, "ordering[1]", "indices 0-2"),
    ({"item_id": "B_ID", "ordering": ["B", "b", "A"]}, "ordering[1]", "names response B a second time"),
    ({"item_id": "B_ID", "ordering": [2, 0]}, "ordering", "names 2 of the item's 3 responses (missing: B)"),
    ({"item_id": "OTHER_ID", "ordering": [0, 1, 2]}, "item_id", "in this project"),
]


@pytest.mark.parametrize("row, field, message", BAD_ROWS, ids=[m for _, _, m in BAD_ROWS])
def test_a_bad_gold_row_names_file_line_and_field_and_nothing_is_written(store, tmp_path, row, field, message):
    p = _fill(store, 3)
    other = _fill(store, 1, project="other")
    a, b, c = _item_ids(store, p.id)
    store.set_gold(p.id, c, _ids(store, c))
    before = store.gold(p.id)
    names = {"A_ID": a, "B_ID": b, "OTHER_ID": store.item_id_for_prompt(other.id, _prompt("other question 0"))}
    if isinstance(row, dict) and row.get("item_id") in names:
        row = {**row, "item_id": names[row["item_id"]]}
    # line 1 is good and line 3 clears c: neither may be stored when line 2 is refused
    path = _gold_file(tmp_path / "gold.jsonl", [{"item_id": a, "ordering": [0, 1, 2]}, row,
                                                {"item_id": c, "ordering": None}])
    with pytest.raises(StoreError) as e:
        store.import_gold(p.id, path, source="gold.jsonl")
    where = "gold.jsonl:2" + (f", field '{field}'" if field else "") + ": "
    assert str(e.value).startswith(where), str(e.value)
    assert message in str(e.value)
    assert store.gold(p.id) == before


def test_an_unreadable_gold_file_is_refused(store, tmp_path):
    p = _fill(store, 1)
    with pytest.raises(StoreError, match="gold.jsonl: cannot read the file"):
        store.import_gold(p.id, tmp_path / "nowhere" / "gold.jsonl", source="gold.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(StoreError, match="latin1.jsonl: not UTF-8 text"):
        store.import_gold(p.id, tmp_path / "latin1.jsonl", source="latin1.jsonl")
    with pytest.raises(StoreError, match="no project"):
        store.import_gold(10_000, _gold_file(tmp_path / "g.jsonl", []))


def test_cli_imports_gold(tmp_path, capsys):
    db = tmp_path / "f.db"
    store = Store(db)
    p = _fill(store, 2)
    a, b = _item_ids(store, p.id)[:2]
    path = _gold_file(tmp_path / "gold.jsonl", [{"item_id": a, "ordering": "ABC"}])
    assert main(["feedback", "gold", str(path), "--store", str(db)]) == 2
    assert f"{path}:1, field 'ordering': must be a list" in capsys.readouterr().err
    _gold_file(path, [{"item_id": a, "ordering": ["B", "A", "C"]}, {"item_id": b, "ordering": [0, 1, 2]}])
    assert main(["feedback", "gold", str(path), "--store", str(db), "--project", "default"]) == 0
    assert "2 item(s) marked gold, 0 cleared; project default has 2 gold item(s)" in capsys.readouterr().out
    ia = _ids(store, a)
    assert store.gold(p.id)[a] == [ia[1], ia[0], ia[2]]
    assert main(["feedback", "gold", str(path), "--store", str(db), "--project", "nope"]) == 2
    assert "no project 'nope'" in capsys.readouterr().err
    store.close()


# ------------------------------------------------------------------------------------------------ the dashboard


def _judge_all(store: Store) -> tuple[object, list[int]]:
    """u and v judge the three items; a and b are gold. Returns the project and the item ids."""
    p = store.update_project(_fill(store, 3).id, overlap=2, assign_batch=3)
    a, b, c = _item_ids(store, p.id)
    ia, ib = _ids(store, a), _ids(store, b)
    store.set_gold(p.id, a, ia)  # A > B > C
    store.set_gold(p.id, b, [ib[2], ib[0], ib[1]])  # C > A > B
    u = store.add_user("u", "annotator", "password-u")
    v = store.add_user("v", "annotator", "password-v")
    for user in (u, v):
        store.next_item(user, p)
    store.submit(u, a, _rank_all(store.item(a), [2, 1, 0]), "u-a-1")  # reversed: 0 ...
    store.submit(u, a, _rank_all(store.item(a), [0, 1, 2]), "u-a-2")  # ... revised to the gold order: 1
    store.submit(u, b, _rank_all(store.item(b), [0, 1, 2]), "u-b")  # 1/3
    store.submit(u, c, _rank_all(store.item(c), [2, 1, 0]), "u-c")  # not gold
    store.submit(v, a, Judgment(ranks={ia[0]: 1, ia[1]: 1, ia[2]: 2}), "v-a")  # 2.5/3
    store.submit(v, b, Judgment(all_unacceptable=True), "v-b")  # judged, not scored
    return p, [a, b, c]


def test_the_dashboard_shows_gold_accuracy_per_annotator(tmp_path):
    from feedback_app.dashboard import annotator_table, dashboard_values

    store = Store(tmp_path / "feedback.db")
    p, _ = _judge_all(store)
    rows = annotator_table(store, p)
    assert [(r[0], r[1], r[2], r[6], r[7]) for r in rows] == [
        ("u", 3, 1, 2, f"{(1 + 1 / 3) / 2:.3f}"),  # the latest revision counts: (1 + 1/3) / 2
        ("v", 2, 0, 2, f"{2.5 / 3:.3f} (1 all unacceptable)"),
    ]
    summary, table, *_ = dashboard_values(store, p)
    assert table == rows and "**2** gold items" in summary
    store.set_gold(p.id, _item_ids(store, p.id)[1], None)
    assert [(r[6], r[7]) for r in annotator_table(store, p)] == [(1, "1.000"), (1, f"{2.5 / 3:.3f}")]
    store.close()


def test_gold_is_for_admins_only_and_invisible_on_the_annotate_page(tmp_path):
    from fastapi.testclient import TestClient

    from feedback_app.server import create_app

    store = Store(tmp_path / "feedback.db")
    p = store.update_project(_fill(store, 2).id, overlap=1, assign_batch=1)
    a, b = _item_ids(store, p.id)[:2]
    store.add_user("root", "admin", "root-password")
    store.add_user("ann", "annotator", "ann-password")

    with TestClient(create_app(store, upload_dir=tmp_path / "uploads")) as client:
        def login(user: str, password: str) -> None:
            app_login(client, user, password)

        def call(api: str, data: list) -> str:
            return call_api(client, api, data)

        def page() -> str:
            """The annotate page's load event as the annotator gets it, the per-form random key blanked."""
            result = call("load", [])
            assert "event: complete" in result, result
            return re.sub(r"[0-9a-f]{32}", "KEY", result)

        login("ann", "ann-password")
        shown = page()  # claims a
        store.set_gold(p.id, a, list(reversed(_ids(store, a))))
        assert page() == shown  # nothing on the page changes when its item becomes gold
        assert "gold" not in shown.lower()
        # an annotator calling the admin endpoints directly: the handlers' role check refuses
        for api, data in (("admin_import_gold", [None, None]), ("admin_dashboard", [None])):
            result = call(api, data)
            assert "event: error" in result and "admin role" in result, (api, result)
        # and a file reference from an annotator is refused before any handler runs
        gold_file = _gold_file(tmp_path / "g.jsonl", [{"item_id": b, "ordering": [0, 1, 2]}])
        r = client.post("/gradio_api/call/admin_import_gold",
                        json={"data": [None, {"path": str(gold_file), "meta": {"_type": "gradio.FileData"}}]})
        assert r.status_code == 403, r.text
        assert list(store.gold(p.id)) == [a]

        def import_gold(name: str, rows: list[object]) -> str:
            """Upload a gold file as the admin, then import it through the dashboard's handler."""
            content = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
            up = client.post("/gradio_api/upload", files={"files": (name, content)})
            assert up.status_code == 200, up.text
            return call("admin_import_gold", [None, {"path": up.json()[0], "meta": {"_type": "gradio.FileData"}}])

        login("root", "root-password")
        result = import_gold("bad.jsonl", [{"item_id": b, "ordering": [0]}])
        assert "Not imported:** bad.jsonl:1, field &#x27;ordering&#x27;: names 1 of the item&#x27;s 3" in result
        assert str(tmp_path) not in result  # the message names the file, not the server's folders
        assert list(store.gold(p.id)) == [a]
        result = import_gold("gold.jsonl", [{"item_id": b, "ordering": ["C", "B", "A"]}, {"item_id": a, "ordering": 1}])
        assert "Not imported:** gold.jsonl:2, field &#x27;ordering&#x27;: must be a list" in result, result
        assert list(store.gold(p.id)) == [a]  # line 1 was good, and was not stored either
        result = import_gold("gold.jsonl", [{"item_id": b, "ordering": ["C", "B", "A"]}])
        assert "1 item marked gold. Project **default** has 2 gold items." in result, result
        table = json.loads(result.split("data:", 1)[1].strip().splitlines()[0])[1]  # the refreshed table
        assert table["headers"][-2:] == ["gold judged", "gold accuracy"]
        assert [row[-2:] for row in table["data"]] == [[0, ""]]  # ann has not submitted a gold item yet
        assert store.gold(p.id)[b] == list(reversed(_ids(store, b)))
        assert "Choose a gold orderings file first" in call("admin_import_gold", [None, None])
    store.close()


# ------------------------------------------------------------------------------------------------ migration


@pytest.mark.parametrize("version", ["2", "1"])
def test_an_old_store_is_upgraded_when_opened(store, version):
    assert SCHEMA_VERSION == "6"  # downgrade_store undoes 6, 5, 4 and 3 (and 2)
    p = store.update_project(_fill(store, 2).id, overlap=1, assign_batch=1)
    u = _users(store, 1)[0]
    a = store.next_item(u, p)
    store.submit(u, a, _rank_all(store.item(a), [0, 1, 2]), "u-a")
    downgrade_store(store, version)
    store.close()
    checker = Store(store.url, create=False)  # what an export or `align feedback gold` opens: upgraded too
    with checker.read() as c:
        assert "gold_items" in inspect(c).get_table_names()
        assert c.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar() == SCHEMA_VERSION
    checker.close()
    store = Store(store.url)
    assert store.gold(p.id) == {} and len(store.latest_judgments(p.id)) == 1  # the judgments are kept
    store.set_gold(p.id, a, _ids(store, a))
    assert store.gold(p.id) == {a: _ids(store, a)}
    assert store.integrity_problems() == []
    store.close()


def test_concurrent_opens_upgrade_an_old_store_once(store):
    _fill(store, 1)
    downgrade_store(store, "2")
    store.close()
    errors = open_store_concurrently(store.url)  # the server and CLI commands starting together
    assert not errors, errors
    reopened = Store(store.url)
    assert reopened.gold(reopened.project("default").id) == {}
    reopened.close()
