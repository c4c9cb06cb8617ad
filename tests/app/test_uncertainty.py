"""Serving uncertain items first: reward-model scores per candidate (``align feedback score``), and a project
setting under which items are claimed smallest gap between their two best-scored candidates first, unscored
items after them, with overlap and claims unchanged. A store made before scores (schema 3) is upgraded when
opened; only admins may change the setting from the app.

Every store test runs on SQLite and, when ALIGN_TEST_POSTGRES_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from alignment.cli import main
from feedback_app import migrations
from feedback_app.store import SCHEMA_VERSION, Store, StoreError, assignments, meta
from tests.app.test_feedback_store import _fill, _postgres_url, _prompt, _rank_all, _users
from tests.conftest import app_login, call_api, downgrade_store, open_store_concurrently, run_at_once

SHA = "0" * 64  # a weights hash for hand-made scores


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "feedback.db" if request.param == "sqlite" else _postgres_url())
    yield s
    s.close()


def _items(store: Store, project, n: int) -> list[int]:
    return [store.item_id_for_prompt(project.id, _prompt(f"{project.name} question {i}")) for i in range(n)]


def _score(store: Store, project, by_item: dict[int, list[float | None]], model: str = "/models/rm") -> None:
    """Hand-made scores: per item, one score per candidate in stored order (None: that candidate unscored)."""
    scores = {}
    for item_id, values in by_item.items():
        for cand, value in zip(store.item(item_id).candidates, values, strict=True):
            if value is not None:
                scores[cand.id] = value
    store.replace_scores(project.id, scores, reward_model=model, weights_sha256=SHA)


def _serve_all(store: Store, project, user) -> list[int]:
    """The items one annotator is served, one at a time, submitting each: the claim order."""
    order = []
    while (item_id := store.next_item(user, project)) is not None:
        order.append(item_id)
        store.submit(user, item_id, _rank_all(store.item(item_id), [0, 1, 2]), f"{user.id}-{item_id}")
    return order


# ------------------------------------------------------------------------------------------------ the order


def test_uncertain_first_orders_by_the_gap_between_the_two_best_scores(store):
    p = store.update_project(_fill(store, 7).id, overlap=2, assign_batch=1)
    a, b, c, d, e, f, g = _items(store, p, 7)
    _score(store, p, {a: [9.0, 0.0, 0.0], b: [9.0, 0.0, 0.0]})  # replaced below: b ends up unscored
    _score(store, p, {
        a: [0.5, 0.0, -0.5],  # gap 0.5
        # b: no scores
        c: [2.0, 1.0, 2.0],  # the two best tie: gap 0, the least sure
        d: [1.0, 0.5, 0.49],  # gap 0.5, a tie with a (that its two worst are close does not count)
        e: [-1.0, -0.75, -3.0],  # gap 0.25 (negative scores are scores)
        f: [0.0, 0.125, None],  # a candidate without a score: the item counts as unscored
        g: [4.0, 3.875, 0.0],  # gap 0.125
    })
    assert store.uncertainty(p.id) == {a: 0.5, c: 0.0, d: 0.5, e: 0.25, g: 0.125}
    assert len(store.scores(p.id)) == 17  # the second run replaced the first: nothing of b is left

    u, v = _users(store, 2)
    assert not p.uncertain_first  # off by default: the usual order, scores or not
    assert _serve_all(store, p, u) == [a, b, c, d, e, f, g]

    p = store.update_project(p.id, uncertain_first=True)
    assert store.project(p.id).uncertain_first
    # the smallest gap first; a tie (a, d) in the usual order; unscored items (b, f) last, in the usual order
    assert _serve_all(store, p, v) == [c, g, e, a, d, b, f]
    assert store.integrity_problems() == []


def test_a_batch_claims_the_least_sure_items(store):
    p = store.update_project(_fill(store, 5).id, overlap=1, assign_batch=2, uncertain_first=True)
    a, b, c, d, e = _items(store, p, 5)
    _score(store, p, {a: [1, 0, 0], b: [1, 0.75, 0], c: [5, 5, 5], d: [0, 2, 1]})  # gaps 1, .25, 0, 1; e unscored
    u, v, w = _users(store, 3)
    store.next_item(u, p)
    store.next_item(v, p)
    store.next_item(w, p)
    with store.read() as conn:
        held = dict(conn.execute(select(assignments.c.item_id, assignments.c.user_id)).all())
    assert held == {c: u.id, b: u.id, a: v.id, d: v.id, e: w.id}
    assert store.progress(w, p).available == 0


def test_overlap_and_started_items_under_uncertain_first(store):
    """Overlap > 1: an item is handed out until its overlap is full, and the gap goes before the usual order's
    preference for items others have started; among unscored items that preference still orders."""
    p = store.update_project(_fill(store, 4).id, overlap=2, assign_batch=4)
    a, b, c, d = _items(store, p, 4)
    first, u, v, w, x, y = _users(store, 6)
    store.next_item(first, p)  # claims all four; b and c are released again: a and d are started
    assert store.release_claims(p.id, item_id=b) == 1 and store.release_claims(p.id, item_id=c) == 1
    _score(store, p, {a: [1.0, 0.0, 0.0], b: [0.5, 0.25, 0.0]})  # a gap 1, b gap 0.25; c and d unscored
    p = store.update_project(p.id, assign_batch=1)
    assert store.next_item(u, p) == a  # off: the started item first, scores or not
    store.release_claims(p.id, user_id=u.id)

    p = store.update_project(p.id, uncertain_first=True)
    assert [store.next_item(user, p) for user in (u, v)] == [b, b]  # less sure than a, which was started
    assert store.next_item(w, p) == a  # b is full: the next least sure
    assert store.next_item(x, p) == d  # a is full too; unscored, the usual order: started d before c
    assert store.next_item(y, p) == c
    with store.read() as conn:
        counts = Counter(conn.execute(select(assignments.c.item_id)).scalars())
    assert counts == {a: 2, b: 2, c: 1, d: 2}
    assert store.integrity_problems() == []


def test_concurrent_claimers_fill_the_least_sure_items_first(store):
    """Claims at once: the overlap holds, and a slot further down the order is taken only when every item before
    it is full (on SQLite, where claims queue, exactly the least sure items are taken)."""
    p = store.update_project(_fill(store, 10).id, overlap=2, assign_batch=1, uncertain_first=True)
    ids = _items(store, p, 10)
    gaps = [0.5, 0.0625, 1.0, 0.25, 0.125, 2.0, 0.375, 0.03125, 4.0, 0.75]
    _score(store, p, {item: [gap, 0.0, -1.0] for item, gap in zip(ids, gaps)})
    order = [item for _, item in sorted(zip(gaps, ids))]
    claimers = _users(store, 7)
    errors = run_at_once([lambda u=u: store.next_item(u, p) for u in claimers])
    assert not errors, errors
    assert store.integrity_problems() == []
    with store.read() as conn:
        counts = Counter(conn.execute(select(assignments.c.item_id)).scalars())
    assert max(counts.values()) <= 2
    for pos, item in enumerate(order):
        if counts[item]:
            assert all(counts[before] == 2 for before in order[:pos]), (counts, order)
    if store.is_sqlite:
        assert counts == {order[0]: 2, order[1]: 2, order[2]: 2, order[3]: 1}


def test_scores_are_checked_and_replaced_per_project(store):
    p = _fill(store, 2)
    other = _fill(store, 1, project="other")
    a, b = _items(store, p, 2)
    elsewhere = store.item(_items(store, other, 1)[0]).candidates[0].id
    _score(store, other, {_items(store, other, 1)[0]: [1.0, 2.0, 3.0]}, model="/models/other")
    cand = store.item(a).candidates[0].id
    for scores, kwargs, message in (
        ({cand: float("nan")}, {}, "score is nan"),
        ({cand: float("inf")}, {}, "score is inf"),
        ({elsewhere: 1.0}, {}, f"candidate {elsewhere} is not in project {p.id}"),
        ({cand: 1.0}, {"weights_sha256": "abc"}, "weights_sha256"),
        ({cand: 1.0}, {"reward_model": " "}, "name the reward model"),
    ):
        with pytest.raises(StoreError, match=message):
            store.replace_scores(p.id, scores, **{"reward_model": "/m", "weights_sha256": SHA, **kwargs})
    with pytest.raises(StoreError, match="no project"):
        store.replace_scores(10_000, {}, reward_model="/m", weights_sha256=SHA)
    assert store.scores(p.id) == {} and store.score_summary(p.id) is None
    _score(store, p, {a: [1.0, 0.0, 0.5], b: [0.0, 0.0, None]})
    summary = store.score_summary(p.id)
    assert (summary.candidates, summary.items, summary.reward_models) == (5, 1, (("/models/rm", SHA),))
    assert store.replace_scores(p.id, {cand: 3.0}, reward_model="/models/rm2", weights_sha256="1" * 64) == 1
    assert {cid: s.score for cid, s in store.scores(p.id).items()} == {cand: 3.0}
    assert store.scores(p.id)[cand].reward_model == "/models/rm2" and store.uncertainty(p.id) == {}
    assert len(store.scores(other.id)) == 3  # another project's scores are untouched
    with pytest.raises(StoreError, match="true or false"):
        store.update_project(p.id, uncertain_first="false")


# ------------------------------------------------------------------------------------------------ migration


def test_a_schema_3_store_is_upgraded_when_opened(store):
    assert SCHEMA_VERSION == "6"  # downgrade_store(store, "3") undoes 6, 5 and 4
    p = store.update_project(_fill(store, 3).id, overlap=1, assign_batch=1, uncertain_first=True)
    a, b, c = _items(store, p, 3)
    u, v = _users(store, 2)
    assert store.next_item(u, p) == a
    store.submit(u, a, _rank_all(store.item(a), [0, 1, 2]), "u-a")
    store.set_gold(p.id, b, [x.id for x in store.item(b).candidates])
    downgrade_store(store, "3")
    store.close()
    checker = Store(store.url, create=False)  # what `align feedback score` opens: upgraded as well
    with checker.read() as conn:
        assert "candidate_scores" in inspect(conn).get_table_names()
        assert "uncertain_first" in {col["name"] for col in inspect(conn).get_columns("projects")}
        assert conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar() == SCHEMA_VERSION
        assert migrations.current(conn) == migrations.head()  # legacy upgrade, then Alembic's baseline and later
    checker.close()
    store = Store(store.url)
    p = store.project(p.id)
    assert not p.uncertain_first and (p.overlap, p.assign_batch) == (1, 1)  # the setting's default: off
    assert len(store.latest_judgments(p.id)) == 1 and list(store.gold(p.id)) == [b]  # kept
    assert store.scores(p.id) == {} and store.score_summary(p.id) is None
    _score(store, p, {b: [1.0, 0.0, 0.0], c: [0.5, 0.5, 0.0]})
    p = store.update_project(p.id, uncertain_first=True)
    assert store.next_item(v, p) == c  # the upgraded store orders by uncertainty
    assert store.integrity_problems() == []
    store.close()


def test_concurrent_opens_upgrade_a_schema_3_store_once(store):
    _fill(store, 1)
    downgrade_store(store, "3")
    store.close()
    errors = open_store_concurrently(store.url)  # the server and CLI commands starting together
    assert not errors, errors
    reopened = Store(store.url)
    assert reopened.project("default").uncertain_first is False
    reopened.close()


# ------------------------------------------------------------------------------------------------ the app


def test_the_serving_order_setting_is_for_admins_only(tmp_path):
    from fastapi.testclient import TestClient

    from feedback_app.server import create_app

    store = Store(tmp_path / "feedback.db")
    p = store.update_project(_fill(store, 2).id, overlap=1, assign_batch=1)
    a, b = _items(store, p, 2)
    store.add_user("root", "admin", "root-password")
    store.add_user("ann", "annotator", "ann-password")

    with TestClient(create_app(store, upload_dir=tmp_path / "uploads")) as client:
        def call(user: str, password: str, api: str, data: list) -> str:
            app_login(client, user, password)
            return call_api(client, api, data)

        # an annotator calling the admin endpoint directly: the handler's role check refuses
        result = call("ann", "ann-password", "admin_save_uncertain_first", [None, True])
        assert "event: error" in result and "admin role" in result, result
        assert not store.project(p.id).uncertain_first

        result = call("root", "root-password", "admin_save_uncertain_first", [None, True])
        assert "serves uncertain first, but none of its prompts has reward-model scores yet" in result, result
        assert store.project(p.id).uncertain_first
        _score(store, p, {b: [1.0, 0.0, 0.0]}, model="/models/my-rm")
        result = call("root", "root-password", "admin_save_uncertain_first", [None, True])
        assert "1 prompt scored by /models/my-rm (weights 000000000000)" in result, result
        assert store.next_item(store.get_user("ann"), store.project(p.id)) == b
        # the settings an admin is shown for a project ("create" of an existing one shows its settings)
        result = call("root", "root-password", "admin_create_project", ["default"])
        assert json.loads(result.split("data:", 1)[1].strip().splitlines()[0])[-1] is True, result
        assert "usual order" in call("root", "root-password", "admin_save_uncertain_first", [None, False])
        assert not store.project(p.id).uncertain_first
    store.close()


# ------------------------------------------------------------------------------------------------ scoring


def _expected_score(model, tokenizer, prompt: list[dict[str, str]], answer: str) -> float:
    """The score read directly: the chat-template rendering, one sequence, no padding, the head at the last
    token. Independent of the batching, sorting and padding of the scoring run."""
    import torch

    rendered = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=False)
    ids = torch.tensor([tokenizer(rendered, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
        return float(model.score(hidden[0, -1])[0])


def test_scoring_stores_every_candidates_score_and_the_reward_models_identity(tmp_path, tiny_rm_dir, tiny_model_dir,
                                                                              capsys):
    import torch

    from alignment.modeling import load_reward_model, load_tokenizer
    from feedback_app.scoring import weights_sha256

    db = tmp_path / "f.db"
    store = Store(db)
    p = store.update_project(_fill(store, 4).id, overlap=1, assign_batch=1, uncertain_first=True)
    store.add_prompts(p.id, [_prompt("a prompt with one answer")])  # scored too; never claimable
    only = store.item_id_for_prompt(p.id, _prompt("a prompt with one answer"))
    store.add_candidates(only, [("the only answer", "m", {})])
    base = ["feedback", "score", "--store", str(db), "--project", "default"]

    # bad input: one line naming what is wrong, nothing stored
    for extra, message in (
        (["--reward-model", str(tmp_path / "missing")], "field '--reward-model'"),
        (["--reward-model", str(tiny_model_dir)], "not a reward model"),
        (["--reward-model", str(tiny_rm_dir), "--batch-size", "0"], "field '--batch-size'"),
    ):
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (extra, err)
    assert main(["feedback", "score", "--store", str(db), "--project", "nope", "--reward-model",
                 str(tiny_rm_dir)]) == 2
    assert "no project 'nope'" in capsys.readouterr().err
    store.ensure_project("empty")
    assert main(["feedback", "score", "--store", str(db), "--project", "empty", "--reward-model",
                 str(tiny_rm_dir)]) == 2
    assert "no candidates to score" in capsys.readouterr().err
    assert store.scores(p.id) == {}

    # batch size 2 over 13 answers: several batches, the last one short
    assert main(base + ["--reward-model", str(tiny_rm_dir), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "scored 13 candidate(s) of 5 prompt(s) in project default" in out, out
    assert "serving uncertain first: 4 prompt(s) ordered" in out, out
    scores = store.scores(p.id)
    assert len(scores) == 13 and len({round(s.score, 6) for s in scores.values()}) == 13  # random weights
    digest = weights_sha256(Path(tiny_rm_dir))
    assert {(s.reward_model, s.weights_sha256) for s in scores.values()} == {(str(Path(tiny_rm_dir).resolve()),
                                                                              digest)}
    model, tok = load_reward_model(tiny_rm_dir).eval(), load_tokenizer(tiny_rm_dir)
    for item_id in [*_items(store, p, 4), only]:
        item = store.item(item_id)
        for cand in item.candidates:  # each score is that candidate's: nothing shifted by sorting or padding
            assert scores[cand.id].score == pytest.approx(_expected_score(model, tok, item.prompt, cand.text),
                                                          abs=1e-4)

    # the same reward model negated: a reward model whose order of every item's answers the test knows
    flipped = tmp_path / "flipped-rm"
    negated = load_reward_model(tiny_rm_dir)
    with torch.no_grad():
        negated.score.weight.neg_()
    negated.save_pretrained(str(flipped))
    tok.save_pretrained(str(flipped))
    copy = shutil.copytree(tiny_rm_dir, tmp_path / "copied-rm")
    assert weights_sha256(copy) == digest and weights_sha256(flipped) != digest  # the content, not the place
    assert main(base + ["--reward-model", str(flipped)]) == 0
    rescored = store.scores(p.id)
    assert set(rescored) == set(scores)  # every score replaced, none left from the first run
    assert {(s.reward_model, s.weights_sha256) for s in rescored.values()} == {(str(flipped.resolve()),
                                                                                weights_sha256(flipped))}
    for item_id in _items(store, p, 4):
        ids = [c.id for c in store.item(item_id).candidates]
        best_before = max(ids, key=lambda cid: scores[cid].score)
        assert min(ids, key=lambda cid: rescored[cid].score) == best_before  # the best is now the worst
        assert all(rescored[cid].score == pytest.approx(-scores[cid].score, abs=1e-4) for cid in ids)

    # the claim order is the one the stored scores give
    def gap(item_id: int) -> float:
        top = sorted((rescored[c.id].score for c in store.item(item_id).candidates), reverse=True)
        return top[0] - top[1]

    expected = sorted(_items(store, p, 4), key=lambda i: (gap(i), i))
    assert store.uncertainty(p.id) == {i: pytest.approx(gap(i)) for i in expected}
    assert _serve_all(store, store.project(p.id), _users(store, 1)[0]) == expected
    store.close()
