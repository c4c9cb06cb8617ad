"""The feedback store and its export: accounts, assignment with overlap, judgments (validated, idempotent,
append-only), export rows with provenance, the store as RM/DPO data, candidate import/generation, CLI."""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import pytest

from alignment.cli import main
from alignment.errors import AlignError
from feedback_app.export import export_store, materialise, preference_examples, write_export
from feedback_app.store import Judgment, Progress, Store, StoreError, display_order
from tests.conftest import run_at_once, write_jsonl


def _prompt(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _postgres_url() -> str:
    """A fresh database on the PostgreSQL server named by ALIGN_TEST_POSTGRES_URL (.ci/run starts one)."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = os.environ.get("ALIGN_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("ALIGN_TEST_POSTGRES_URL is not set (.ci/run sets it after starting a PostgreSQL server)")
    name = f"feedback_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(base).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Every store test runs on SQLite and on PostgreSQL: the store promises both."""
    s = Store(tmp_path / "feedback.db" if request.param == "sqlite" else _postgres_url())
    yield s
    s.close()


def _fill(store: Store, n_items: int, k: int = 3, project: str = "default"):
    p = store.ensure_project(project)
    store.add_prompts(p.id, [_prompt(f"{project} question {i}") for i in range(n_items)])
    for item_id, prompt, missing in store.items_short_of_candidates(p.id, k):
        store.add_candidates(item_id, [(f"answer {j} to {prompt[0]['content']}", f"model-{j % 2}",
                                        {"temperature": 0.8, "seed": j}) for j in range(missing)])
    return p


def _users(store: Store, n: int, role: str = "annotator"):
    return [store.add_user(f"{role}{i}", role, f"password-{i}") for i in range(n)]


def _rank_all(item, order: list[int]) -> Judgment:
    """Rank candidates in the given order of candidate positions (order[0] is best)."""
    return Judgment(ranks={item.candidates[pos].id: r + 1 for r, pos in enumerate(order)})


# ------------------------------------------------------------------------------------------------ accounts


def test_passwords_are_salted_slow_hashes_and_checked(store):
    a = store.add_user("ann", "annotator", "same-password")
    store.add_user("bob", "admin", "same-password")
    from sqlalchemy import select

    from feedback_app.store import users

    with store.read() as c:
        hashes = dict(c.execute(select(users.c.name, users.c.pw_hash)).all())
    assert hashes["ann"] != hashes["bob"] and hashes["ann"].startswith("scrypt$32768$")
    assert "same-password" not in hashes["ann"]
    assert store.authenticate("ann", "same-password") == a
    assert store.authenticate("ann", "wrong-password") is None
    assert store.authenticate("nobody", "same-password") is None
    with pytest.raises(StoreError, match="already exists"):
        store.add_user("ann", "annotator", "another-password")
    with pytest.raises(StoreError, match="role"):
        store.add_user("cat", "owner", "password-x")
    with pytest.raises(StoreError, match="8 characters"):
        store.add_user("dan", "annotator", "short")
    store.set_active("ann", False)
    assert store.authenticate("ann", "same-password") is None
    epoch = store.get_user("bob").session_epoch
    store.set_password("bob", "a-new-password")
    assert store.get_user("bob").session_epoch == epoch + 1
    assert store.authenticate("bob", "a-new-password") is not None


def test_installation_secret_is_random_and_persistent(tmp_path):
    a, b = Store(tmp_path / "a.db"), Store(tmp_path / "b.db")
    assert len(a.secret()) == 32 and a.secret() != b.secret()
    assert Store(tmp_path / "a.db").secret() == a.secret()


def test_session_cookie_signed_expiring_and_revocable(store):
    import time

    from feedback_app.auth import Sessions, make_cookie, read_cookie

    user = store.add_user("ann", "annotator", "password-1")
    cookie = make_cookie(store.secret(), user)
    assert read_cookie(store.secret(), cookie) == ("ann", 0)
    assert read_cookie(b"another secret", cookie) is None
    body, sig = cookie.rsplit(".", 1)
    assert read_cookie(store.secret(), body + "." + sig[::-1]) is None
    assert read_cookie(store.secret(), make_cookie(store.secret(), user, now=time.time() - 13 * 3600)) is None
    sessions = Sessions(store)
    assert sessions.user(cookie).name == "ann"
    store.end_sessions(user.id)  # logout: every cookie issued before is dead
    sessions.forget("ann")
    assert sessions.user(cookie) is None


# ------------------------------------------------------------------------------------------------ assignment


def test_each_item_goes_to_overlap_distinct_annotators(store):
    p = _fill(store, 6)
    p = store.update_project(p.id, overlap=2, assign_batch=2)
    annotators = _users(store, 4)
    seen: dict[int, list[int]] = {}
    for _ in range(10):  # every annotator keeps taking and submitting work until none is left
        for u in annotators:
            item_id = store.next_item(u, p)
            if item_id is None:
                continue
            assert u.id not in seen.setdefault(item_id, [])  # never the same item twice
            seen[item_id].append(u.id)
            item = store.item(item_id)
            store.submit(u, item_id, _rank_all(item, [0, 1, 2]), f"{u.id}-{item_id}")
    assert sorted(seen) == [i for i, _, _ in store.items_short_of_candidates(p.id, 99)]
    assert all(len(v) == 2 for v in seen.values())  # 6 items x overlap 2 = 12 judgments
    assert sum(store.progress(u, p).done for u in annotators) == 12
    assert store.integrity_problems() == []


def test_progress_counts_claimed_batch(store):
    p = store.update_project(_fill(store, 5).id, assign_batch=3, overlap=1)
    u = _users(store, 1)[0]
    first = store.next_item(u, p)
    assert store.progress(u, p) == Progress(done=0, assigned=3, available=2)
    assert store.next_item(u, p) == first  # the open assignment, not a new claim
    store.submit(u, first, _rank_all(store.item(first), [2, 1, 0]), "k1")
    assert store.progress(u, p).done == 1


def test_items_need_two_candidates(store):
    p = store.ensure_project()
    store.add_prompts(p.id, [_prompt("one answer only")])
    item_id = store.item_id_for_prompt(p.id, _prompt("one answer only"))
    store.add_candidates(item_id, [("only", "m", {}), ("only ", "m", {}), ("   ", "m", {})])  # dup + blank skipped
    assert len(store.item(item_id).candidates) == 1
    assert store.next_item(_users(store, 1)[0], p) is None


def test_concurrent_claims_never_exceed_overlap(store):
    p = store.update_project(_fill(store, 10).id, overlap=3, assign_batch=4)
    annotators = _users(store, 8)
    errors = run_at_once([lambda u=u: store.next_item(u, p) for u in annotators])
    assert not errors
    assert store.integrity_problems() == []  # n_assigned matches the assignment rows
    from sqlalchemy import func, select

    from feedback_app.store import assignments

    with store.read() as c:
        per_item = dict(c.execute(select(assignments.c.item_id, func.count()).group_by(assignments.c.item_id)).all())
    assert max(per_item.values()) <= 3
    # Claims fill the most-annotated items first, whatever the thread order: annotators 1-3 take items
    # 1-4, annotators 4-6 items 5-8, annotators 7-8 the two items left: 12 + 12 + 4 = 28 of 30 slots.
    assert sorted(per_item.values()) == [2, 2] + [3] * 8


def test_one_annotator_claims_one_batch_when_asking_many_times_at_once(store):
    p = store.update_project(_fill(store, 20).id, overlap=3, assign_batch=5)
    u = _users(store, 1)[0]
    got: list[int | None] = []
    errors = run_at_once([lambda: got.append(store.next_item(u, p))] * 8)
    assert not errors
    assert store.progress(u, p).assigned == 5  # one batch, not one per call
    assert len(set(got)) == 1 and got[0] is not None  # every call answers with the same first item
    assert store.integrity_problems() == []


def test_last_project_is_remembered_per_user(store, tmp_path):
    a, b = store.ensure_project("a"), store.ensure_project("b")
    u, v = _users(store, 2)
    assert store.remembered_project(u.id) is None
    store.remember_project(u.id, b.id)
    store.remember_project(v.id, a.id)
    store.remember_project(u.id, b.id)  # the same choice again: an update, not a second row
    assert store.remembered_project(u.id) == b and store.remembered_project(v.id) == a
    store.remember_project(u.id, a.id)
    assert store.remembered_project(u.id) == a
    if store.is_sqlite:  # a restart: a new Store on the same file
        assert Store(tmp_path / "feedback.db").remembered_project(u.id) == a
    store.remember_project(u.id, 999)  # a project that is gone: no choice
    assert store.remembered_project(u.id) is None


def test_work_left_counts_open_and_claimable_prompts(store):
    p = store.update_project(_fill(store, 4, project="full").id, overlap=1, assign_batch=2)
    empty = store.ensure_project("empty")
    u, other = _users(store, 2)
    assert store.work_left(u, p) == 4 and store.work_left(u, empty) == 0
    item_id = store.next_item(u, p)  # claims 2
    store.submit(u, item_id, _rank_all(store.item(item_id), [0, 1, 2]), "k1")
    assert store.work_left(u, p) == 3  # one open, two claimable
    assert store.work_left(other, p) == 2  # overlap 1: the two u claimed are gone for others
    assert [(q.name, n) for q, n in store.projects_with_work(u)] == [("full", 3)]
    jid = store.submit(u, item_id, _rank_all(store.item(item_id), [2, 1, 0]), "k2")[0]
    assert store.revision_of(jid) == 2


def test_display_order_is_stable_per_annotator_and_differs_between_them(store):
    p = _fill(store, 1, k=6)
    item = store.item(store.items_short_of_candidates(p.id, 99)[0][0])
    orders = {u: [c.id for c in display_order(u, item)] for u in range(1, 30)}
    assert orders[1] == [c.id for c in display_order(1, item)]
    assert len({tuple(o) for o in orders.values()}) > 5
    assert all(sorted(o) == sorted(c.id for c in item.candidates) for o in orders.values())


# ------------------------------------------------------------------------------------------------ judgments


def test_judgments_are_validated(store):
    p = _fill(store, 1)
    u, other = _users(store, 2)
    item_id = store.next_item(u, p)
    item = store.item(item_id)
    a, b, c = (x.id for x in item.candidates)
    bad = [
        (Judgment(ranks={a: 1, b: 2}), "rank every response"),
        (Judgment(ranks={a: 1, b: 2, c: 4}), "ranks go from 1"),
        (Judgment(ranks={a: 1, b: 2, c: 3}, tags={a: ["rude"]}), "unknown tag"),
        (Judgment(ranks={a: 1, b: 2, c: 3}, correction="better"), "which response"),
        (Judgment(ranks={a: 1, b: 2, c: 3, 999: 1}), "not part of this item"),
        (Judgment(ranks={a: 1, b: 2, c: 3}, note="x" * 20_001), "longer than"),
    ]
    for j, message in bad:
        with pytest.raises(StoreError, match=message):
            store.submit(u, item_id, j, "key-bad")
    with pytest.raises(StoreError, match="not assigned"):
        store.submit(other, item_id, Judgment(ranks={a: 1, b: 1, c: 2}), "key-other")
    with pytest.raises(StoreError, match="not assigned"):  # nor keep a draft of someone else's item
        store.save_draft(other.id, item_id, {"ranks": {}})
    store.submit(u, item_id, Judgment(all_unacceptable=True, tags={a: ["unsafe"]}), "key-ok")  # no ranks needed
    assert store.count_judgment_rows() == 1


def test_submit_is_idempotent_and_revisions_append(store):
    p = _fill(store, 2)
    u = _users(store, 1)[0]
    item_id = store.next_item(u, p)
    item = store.item(item_id)
    first = _rank_all(item, [0, 1, 2])
    jid, fresh = store.submit(u, item_id, first, "form-1")
    assert fresh and store.submit(u, item_id, first, "form-1") == (jid, False)  # double click: stored once
    store.save_draft(u.id, item_id, {"ranks": {}})
    revised = _rank_all(item, [2, 1, 0])
    jid2, _ = store.submit(u, item_id, revised, "form-2")
    assert store.draft(u.id, item_id) is None  # a submission clears the draft
    assert store.count_judgment_rows() == 2  # append-only: the first row is kept
    latest = store.latest_judgments(p.id)
    assert [(j.id, j.revision, j.judgment.ranks) for j in latest] == [(jid2, 2, revised.ranks)]
    assert store.recent_submissions(u.id, p.id)[0].id == jid2


def test_guideline_changes_are_versioned_in_judgments(store):
    p = _fill(store, 2)
    u = _users(store, 1)[0]
    first = store.next_item(u, p)
    store.submit(u, first, _rank_all(store.item(first), [0, 1, 2]), "a")
    p = store.update_project(p.id, guidelines="New rules: be strict.")
    assert p.guideline_version == 2
    assert store.update_project(p.id, guidelines="New rules: be strict.  ").guideline_version == 2  # no change
    second = store.next_item(u, p)
    store.submit(u, second, _rank_all(store.item(second), [0, 1, 2]), "b")
    assert sorted(j.guideline_version for j in store.latest_judgments(p.id)) == [1, 2]


# ------------------------------------------------------------------------------------------------ export


def _judge(store: Store, u, p, j_of_item) -> int:
    item_id = store.next_item(u, p)
    item = store.item(item_id)
    store.submit(u, item_id, j_of_item(item), f"{u.id}:{item_id}")
    return item_id


def test_export_rows_and_provenance(store):
    p = store.update_project(_fill(store, 4).id, overlap=1)
    u = _users(store, 1)[0]

    def ranked(item):  # A best, B and C tied: "all" gives A>B and A>C
        a, b, c = item.candidates
        return Judgment(ranks={a.id: 1, b.id: 2, c.id: 2}, tags={b.id: ["off tone"]})

    def corrected(item):  # ranking A>B>C, C corrected, plus a negative
        a, b, c = item.candidates
        return Judgment(ranks={a.id: 1, b.id: 2, c.id: 3}, correction_of=c.id, correction="The fixed answer.",
                        negative="You will certainly win your claim.")

    def unacceptable(item):
        return Judgment(all_unacceptable=True, negative="Send me your password.")

    i1 = _judge(store, u, p, ranked)
    i2 = _judge(store, u, p, corrected)
    i3 = _judge(store, u, p, unacceptable)
    out = export_store(store, pairs="all")
    by_item: dict[int, list[dict]] = {}
    for row in out.pairs:
        by_item.setdefault(row["provenance"]["item_id"], []).append(row)
    text = lambda side: side[0]["content"]  # noqa: E731
    c1, c2 = store.item(i1).candidates, store.item(i2).candidates
    assert sorted((text(r["chosen"]), text(r["rejected"])) for r in by_item[i1]) == sorted(
        [(c1[0].text, c1[1].text), (c1[0].text, c1[2].text)])
    kinds2 = sorted((r["provenance"]["kind"], text(r["chosen"]), text(r["rejected"])) for r in by_item[i2])
    assert kinds2 == sorted([
        ("ranking", c2[0].text, c2[1].text), ("ranking", c2[0].text, c2[2].text), ("ranking", c2[1].text, c2[2].text),
        ("correction", "The fixed answer.", c2[2].text),
        ("negative", "The fixed answer.", "You will certainly win your claim."),  # the correction is the good answer
    ])
    assert i3 not in by_item  # all unacceptable, no correction: nothing to prefer
    unpaired = sorted((r["provenance"]["kind"], text(r["completion"]), r["label"]) for r in out.unpaired)
    c3 = store.item(i3).candidates
    assert unpaired == sorted(
        [("correction", "The fixed answer.", True), ("negative", "You will certainly win your claim.", False),
         ("negative", "Send me your password.", False)] + [("unacceptable", c.text, False) for c in c3])
    row = next(r for r in by_item[i1])
    prov = row["provenance"]
    assert prov["annotator"] == u.name and prov["guideline_version"] == 1 and prov["revision"] == 1
    assert prov["annotated_at"].endswith("+00:00") and prov["project"] == "default"
    assert prov["chosen_model"] == c1[0].model and json.loads(prov["chosen_generation"]) == c1[0].generation
    corr = next(r for r in by_item[i2] if r["provenance"]["kind"] == "correction")
    assert corr["provenance"]["chosen_model"] == f"annotator:{u.name}"
    assert out.by_kind["negative without a good answer"] == 1
    best = export_store(store, pairs="best-vs-rest")
    assert sum(1 for r in best.pairs if r["provenance"]["item_id"] == i2 and r["provenance"]["kind"] == "ranking") == 2
    with pytest.raises(StoreError, match="pairs"):
        export_store(store, pairs="some")
    with pytest.raises(StoreError, match="no project 'x'"):
        export_store(store, project="x")


def test_negative_pairs_with_top_ranked_when_no_correction(store):
    p = store.update_project(_fill(store, 1).id, overlap=1)
    u = _users(store, 1)[0]
    item_id = _judge(store, u, p, lambda it: Judgment(
        ranks={it.candidates[0].id: 2, it.candidates[1].id: 1, it.candidates[2].id: 1}, negative="Bad idea."))
    item = store.item(item_id)
    neg = [r for r in export_store(store).pairs if r["provenance"]["kind"] == "negative"]
    assert sorted(r["chosen"][0]["content"] for r in neg) == sorted([item.candidates[1].text, item.candidates[2].text])
    assert all(r["rejected"][0]["content"] == "Bad idea." for r in neg)


def test_export_files_load_as_training_data(store, tmp_path):
    from alignment.data import load_dataset_file
    from alignment.data.preferences import load_preference_examples

    p = store.update_project(_fill(store, 6).id, overlap=2)
    for u in _users(store, 2):
        for _ in range(6):
            _judge(store, u, p, lambda it: Judgment(
                ranks={c.id: r + 1 for r, c in enumerate(it.candidates)}, correction_of=it.candidates[2].id,
                correction=f"Corrected {it.id}", negative=f"Never say this {it.id}"))
    exported = export_store(store)
    pairs_path, unpaired_path = write_export(exported, tmp_path / "out" / "prefs.jsonl")
    assert unpaired_path.name == "prefs.unpaired.jsonl"
    examples, info = load_preference_examples(str(pairs_path))
    assert info.kind == "preference" and len(examples) == len(exported.pairs) - info.duplicates_removed
    ds, uinfo = load_dataset_file(unpaired_path, "unpaired")
    assert len(ds) == len(exported.unpaired) and uinfo.kind == "unpaired"
    # The store itself is data for the RM and DPO recipes: same pairs as the export, written by the top layer
    # into the run folder (materialise); the library reads files only and says so when handed a store
    db = str(store.url.removeprefix("sqlite:///"))
    direct, dinfo = preference_examples(db)
    assert dinfo["kind"] == "feedback" and len(direct) == len(exported.pairs)
    assert len(preference_examples(db + "#default")[0]) == len(direct)
    with pytest.raises(AlignError, match="no project 'other'"):
        materialise(db + "#other", tmp_path / "run" / "data" / "train.jsonl")
    materialise(db + "#default", tmp_path / "run" / "data" / "train.jsonl")
    loaded, linfo = load_preference_examples(str(tmp_path / "run" / "data" / "train.jsonl"), dedup="none")
    assert linfo.kind == "preference" and _as_rows(loaded) == _as_rows(direct)
    for spec in (db, db + "#default"):
        with pytest.raises(AlignError, match="is a feedback store, not a data file") as e:
            load_preference_examples(spec)
        assert e.value.file == spec


def _as_rows(examples) -> list[list]:
    return [[e.prompt, e.chosen, e.rejected, e.margin] for e in examples]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_materialise_writes_the_exact_pairs_with_provenance(tmp_path):
    """The rows a phase trains on are the store's preference_examples, unchanged, in the preference format;
    beside them what they came from. Unchanged pairs leave both files alone; new judgments rewrite them."""
    from alignment.data.fingerprint import source_digest
    from alignment.data.preferences import load_preference_examples

    store = Store(tmp_path / "feedback.db")
    p = store.update_project(_fill(store, 6).id, overlap=2)
    users = _users(store, 2)
    for _ in range(2):  # both annotators judge two items alike: duplicate pairs, which the store keeps
        for u in users:
            _judge(store, u, p, lambda it: Judgment(ranks={c.id: r + 1 for r, c in enumerate(it.candidates)},
                                                    correction_of=it.candidates[2].id, correction=f"Fixed {it.id}"))
    spec = f"{tmp_path / 'feedback.db'}#default"
    out = tmp_path / "run" / "data" / "train.jsonl"
    examples, info = preference_examples(spec, "adjacent")
    prov = materialise(spec, out, "adjacent")
    rows = _rows(out)
    assert [[r["prompt"], r["chosen"], r["rejected"], r.get("margin")] for r in rows] == _as_rows(examples)
    assert all(set(r) <= {"prompt", "chosen", "rejected", "margin"} for r in rows)
    assert any("margin" not in r for r in rows) and any(r.get("margin") == 1.0 for r in rows)  # corrections, ranks
    saved = json.loads((out.parent / "train.provenance.json").read_text())
    assert saved == prov
    assert prov["source"] == spec and prov["project"] == "default" and prov["pair_policy"] == "adjacent"
    assert prov["pairs"] == len(examples) and prov["judgments"] == info["rows"] == 4
    assert prov["format"] == "preference" and prov["file"] == "train.jsonl" and prov["exported_at"]
    assert prov["by_kind"]["ranking"] + prov["by_kind"]["correction"] == len(examples)
    # what the RM/DPO loaders read from it: the same pairs (duplicates kept with dedup none, as from the store)
    loaded, linfo = load_preference_examples(str(out), dedup="none")
    assert _as_rows(loaded) == _as_rows(examples) and linfo.kind == "preference"
    assert load_preference_examples(str(out))[1].duplicates_removed > 0  # there were duplicates to keep

    before, stamp = source_digest(str(out)), out.stat().st_mtime_ns
    assert materialise(spec, out, "adjacent") == prov and out.stat().st_mtime_ns == stamp
    u = store.add_user("carl", "annotator", "password-carl")
    _judge(store, u, p, lambda it: _rank_all(it, [2, 1, 0]))
    newer = materialise(spec, out, "adjacent")
    assert source_digest(str(out)) != before and newer["pairs"] > prov["pairs"]
    assert _as_rows(preference_examples(spec, "adjacent")[0]) == [
        [r["prompt"], r["chosen"], r["rejected"], r.get("margin")] for r in _rows(out)]
    store.close()


def test_an_empty_store_is_refused_with_the_same_message(tmp_path, capsys):
    store = Store(tmp_path / "feedback.db")
    _fill(store, 3)
    store.close()
    with pytest.raises(AlignError, match="the feedback store holds no judgments that make preference pairs yet"):
        materialise(str(tmp_path / "feedback.db"), tmp_path / "out.jsonl")
    recipe = {"phase": "rm", "model": "smollm2-135m-instruct", "output_dir": str(tmp_path / "rm"),
              "data": {"train": str(tmp_path / "feedback.db")}}
    path = tmp_path / "rm.yaml"
    path.write_text(json.dumps(recipe))
    assert main(["rm", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: {tmp_path / 'feedback.db'}: the feedback store holds no judgments that make "
                           "preference pairs yet")
    assert not (tmp_path / "rm" / "data" / "train.jsonl").exists()


@pytest.mark.parametrize("phase", ["rm", "dpo"])
def test_recipes_train_from_the_store(tmp_path, tiny_model_dir, phase):
    store = Store(tmp_path / "feedback.db")
    p = store.update_project(_fill(store, 24).id, overlap=1, assign_batch=24)
    u = _users(store, 1)[0]
    for _ in range(24):
        _judge(store, u, p, lambda it: _rank_all(it, [0, 1, 2]))
    recipe = {"phase": phase, "model": str(tiny_model_dir), "output_dir": str(tmp_path / phase),
              "data": {"train": str(tmp_path / "feedback.db"), "max_length": 64,
                       "split": {"train": 0.75, "validation": 0.25}},
              "train": {"max_steps": 2, "batch_size": 4, "bf16": "false", "eval_every": 2, "save_every": 2},
              "tracking": {"backends": ["none"]}}
    path = tmp_path / f"{phase}.yaml"
    path.write_text(json.dumps(recipe))
    assert main([phase, "--config", str(path)]) == 0
    assert (tmp_path / phase / "model" / "config.json").exists()
    # it trained on the store's pairs, exported beside the model with where they came from
    data = tmp_path / phase / "data"
    assert sorted(f.name for f in data.iterdir()) == ["pii.json", "train.jsonl", "train.provenance.json"]
    # the privacy scan read the exported pairs, the file the phase trained on
    assert [f["file"] for f in json.loads((data / "pii.json").read_text())["files"]] == [str(data / "train.jsonl")]
    examples, _ = preference_examples(str(tmp_path / "feedback.db"))
    assert [[r["prompt"], r["chosen"], r["rejected"], r.get("margin")] for r in _rows(data / "train.jsonl")] == \
        _as_rows(examples)
    assert json.loads((data / "train.provenance.json").read_text())["pairs"] == len(examples)
    import yaml

    ran = yaml.safe_load((tmp_path / phase / "config.yaml").read_text())["data"]
    assert ran["train"] == str(data / "train.jsonl") and ran["dedup"] == "none"


# ------------------------------------------------------------------------------------------------ candidates


def test_import_candidates_with_models_and_errors(store, tmp_path):
    from feedback_app.candidates import import_candidates

    p = store.ensure_project()
    good = write_jsonl(tmp_path / "cands.jsonl", [
        {"prompt": "Q1", "responses": ["a1", "b1", "a1"], "model": ["m-a", "m-b", "m-a"],
         "generation": {"temperature": 0.7}},
        {"prompt": "Q2", "responses": ["a2", "b2"], "model": ["m-c", "m-c"], "generation": {"temperature": 0.7}},
    ])
    assert import_candidates(store, p.id, good) == (2, 4)  # the repeated "a1" is skipped
    chat = write_jsonl(tmp_path / "chat.jsonl", [  # message lists, one model name for every response
        {"messages": [{"role": "user", "content": "Q3"}],
         "responses": [[{"role": "assistant", "content": "a3"}], [{"role": "assistant", "content": "b3"}]],
         "model": "m-d"}])
    assert import_candidates(store, p.id, chat) == (1, 2)
    assert [c.model for c in store.item(store.item_id_for_prompt(p.id, _prompt("Q3"))).candidates] == ["m-d"] * 2
    item = store.item(store.item_id_for_prompt(p.id, _prompt("Q1")))
    assert [(c.text, c.model, c.generation) for c in item.candidates] == [
        ("a1", "m-a", {"temperature": 0.7}), ("b1", "m-b", {"temperature": 0.7})]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q3", "responses": ["x", "y"], "model": ["only-one"]}])
    with pytest.raises(AlignError) as e:
        import_candidates(store, p.id, bad)
    assert e.value.line == 1 and e.value.field == "model" and "bad.jsonl" in str(e.value)


def test_no_item_gets_more_candidates_than_the_page_has_answer_slots(store, tmp_path):
    """8 answer slots on the annotation page: a 9th candidate could never be ranked."""
    from feedback_app.candidates import import_candidates
    from feedback_app.store import MAX_CANDIDATES_PER_ITEM

    assert MAX_CANDIDATES_PER_ITEM == 8
    p = store.ensure_project()
    with pytest.raises(StoreError, match="up to 8"):
        store.update_project(p.id, candidates_per_item=9)
    assert store.update_project(p.id, candidates_per_item=8).candidates_per_item == 8
    nine = write_jsonl(tmp_path / "nine.jsonl", [{"prompt": "Q1", "responses": [f"answer {i}" for i in range(9)]},
                                                 {"prompt": "Q2", "responses": ["a", "b"]}])
    with pytest.raises(AlignError) as e:
        import_candidates(store, p.id, nine)
    assert (e.value.line, e.value.field) == (1, "responses") and "9 distinct responses" in str(e.value)
    skipped: list[str] = []
    assert import_candidates(store, p.id, nine, skipped) == (1, 2)  # Q2 only
    assert skipped == ["line 1 (responses): has 9 distinct responses; at most 8 fit on the annotation page"]
    item_id = store.item_id_for_prompt(p.id, _prompt("Q2"))
    assert store.add_candidates(item_id, [(f"more {i}", "m", {}) for i in range(6)]) == 6  # 8 in all
    with pytest.raises(StoreError, match="more than 8"):
        store.add_candidates(item_id, [("a ninth", "m", {}), ("a tenth", "m", {})])
    assert len(store.item(item_id).candidates) == 8  # the refused call added nothing


def test_rows_that_cannot_be_ranked_are_refused_or_skipped(store, tmp_path):
    from feedback_app.candidates import import_candidates, load_prompts

    p = store.ensure_project()
    cands = write_jsonl(tmp_path / "cands.jsonl", [
        {"prompt": "Q1", "responses": ["a", "b"]},
        {"prompt": "Q2", "responses": ["only"]},
        {"prompt": "  ", "responses": ["a", "b"]},
        {"prompt": "Q4", "responses": ["same", "same ", ""]},
    ])
    with pytest.raises(AlignError) as e:  # refused: the first bad row in file order, nothing stored
        import_candidates(store, p.id, cands)
    assert (e.value.line, e.value.field) == (2, "responses") and "cands.jsonl" in str(e.value)
    assert "one response (at least 2 needed)" in str(e.value)
    assert store.counts(p.id)["prompts"] == 0
    skipped: list[str] = []
    assert import_candidates(store, p.id, cands, skipped) == (1, 2)  # or imported, bad rows described
    assert skipped == ["line 2 (responses): has one response (at least 2 needed)",
                       "line 3 (prompt): the prompt is empty",
                       "line 4 (responses): has one response (after dropping empty and repeated ones) "
                       "(at least 2 needed)"]
    per_answer = write_jsonl(tmp_path / "answers.jsonl", [  # one row per answer: counted per prompt
        {"prompt": "Q5", "completion": "x"}, {"prompt": "Q6", "completion": "y"}, {"prompt": "Q5", "completion": "z"}])
    skipped = []
    assert import_candidates(store, p.id, per_answer, skipped) == (1, 2)
    assert skipped == ["line 2 (completion): has one response (at least 2 needed)"]

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "P1"}, {"prompt": ""}, {"prompt": "P3"}])
    with pytest.raises(AlignError) as e:
        load_prompts(prompts)
    assert (e.value.line, e.value.field) == (2, "prompt") and "empty" in str(e.value)
    skipped = []
    assert load_prompts(prompts, skipped) == [_prompt("P1"), _prompt("P3")]
    assert skipped == ["line 2 (prompt): the prompt is empty"]


def test_generation_job_fills_every_item(store, tiny_model_dir):
    from feedback_app.candidates import GenerationSettings, generate_candidates

    p = store.ensure_project()
    store.add_prompts(p.id, [_prompt(f"Tell me about item {i}") for i in range(5)])
    settings = GenerationSettings(model=str(tiny_model_dir), k=3, temperature=1.0, max_new_tokens=8, batch_size=4)
    job = store.create_job(p.id, "generate", {}, store.add_user("boss", "admin", "password-1").id, 15)
    seen: list[tuple[int, int]] = []
    stored = generate_candidates(store, p.id, settings, job, on_progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (15, 15) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    (done,) = store.jobs(p.id)
    assert done.status == "done" and done.done == 15
    assert stored == store.counts(p.id)["candidates"] and stored >= 10  # sampling may repeat a few answers
    cand = store.item(1).candidates[0]
    assert cand.model == str(tiny_model_dir) and cand.generation["temperature"] == 1.0
    assert cand.generation["max_new_tokens"] == 8


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_users_and_export(tmp_path, monkeypatch, capsys):
    db = tmp_path / "f.db"
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password\n"))
    assert main(["app", "users", "add", "boss", "--role", "admin", "--store", str(db), "--password-stdin"]) == 0
    assert main(["app", "users", "add", "ann", "--role", "annotator", "--store", str(db), "--generate"]) == 0
    printed = capsys.readouterr().out
    password = printed.split("password (shown once): ")[1].split()[0]
    store = Store(db)
    assert store.authenticate("ann", password) and store.authenticate("boss", "a-long-password")
    assert main(["app", "users", "add", "ann", "--role", "annotator", "--store", str(db), "--generate"]) == 2
    assert "already exists" in capsys.readouterr().err
    p = store.update_project(_fill(store, 2).id, overlap=1)
    _judge(store, store.get_user("ann"), p, lambda it: _rank_all(it, [0, 1, 2]))
    out = tmp_path / "export" / "data.jsonl"
    assert main(["feedback", "export", "--store", str(db), "--out", str(out), "--pairs", "adjacent"]) == 0
    assert len(out.read_text().splitlines()) == 2 and (tmp_path / "export" / "data.unpaired.jsonl").exists()
    assert "1 judgments -> 2 preference pairs" in capsys.readouterr().out
    assert main(["feedback", "check", "--store", str(db)]) == 0
    assert main(["feedback", "export", "--store", str(tmp_path / "none.db"), "--out", str(out)]) == 2
    assert "no feedback store" in capsys.readouterr().err


def test_concurrent_revisions_get_distinct_numbers(store):
    p = _fill(store, 1)
    u = _users(store, 1)[0]
    item_id = store.next_item(u, p)
    item = store.item(item_id)
    results: list[tuple[int, bool]] = []
    threads = [threading.Thread(target=lambda k=k: results.append(
        store.submit(u, item_id, _rank_all(item, [k % 3, (k + 1) % 3, (k + 2) % 3]), f"tab-{k}"))) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and all(fresh for _, fresh in results)
    from sqlalchemy import select

    from feedback_app.store import judgments

    with store.read() as c:
        revisions = sorted(c.execute(select(judgments.c.revision)).scalars())
    assert revisions == [1, 2, 3, 4, 5, 6]
    assert len(store.latest_judgments(p.id)) == 1


def test_the_launcher_exports_once_and_hands_the_file_to_every_process(tmp_path, tiny_model_dir, monkeypatch):
    """`align dpo --num-processes 2` on a store: the launcher process exports it, and the processes it starts
    are told to read that file (so they all train on the same pairs and none opens the store)."""
    from alignment import distributed
    from alignment.cli import build_parser
    from alignment.config import DPOConfig, load_config
    from alignment.pipeline import export_feedback_stores

    store = Store(tmp_path / "feedback.db")
    p = store.update_project(_fill(store, 8).id, overlap=1, assign_batch=8)
    u = _users(store, 1)[0]
    for _ in range(8):
        _judge(store, u, p, lambda it: _rank_all(it, [0, 1, 2]))
    store.close()
    recipe = {"phase": "dpo", "model": str(tiny_model_dir), "output_dir": str(tmp_path / "dpo"),
              "data": {"train": f"{tmp_path / 'feedback.db'}#default", "kind": "feedback"}}
    path = tmp_path / "dpo.yaml"
    path.write_text(json.dumps(recipe))
    launched = []
    monkeypatch.setattr(distributed, "launch", lambda argv, n, hostfile: launched.append((argv, n, hostfile)) or 0)
    assert main(["dpo", "--config", str(path), "train.max_steps=2", "--num-processes", "2"]) == 0
    [(argv, n, hostfile)] = launched
    exported = tmp_path / "dpo" / "data" / "train.jsonl"
    assert n == 2 and hostfile is None and exported.exists()
    args = build_parser().parse_args(argv)
    assert (args.command, args.config, args.num_processes) == ("dpo", str(path), 2)
    cfg = load_config(DPOConfig, args.config, args.overrides)
    assert (cfg.data.train, cfg.data.kind, cfg.data.dedup, cfg.train.max_steps) == (
        str(exported), "preference", "none", 2)
    assert export_feedback_stores("dpo", cfg) == {}  # what each started process finds: nothing left to export
