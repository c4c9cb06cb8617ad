"""Claims that expire and claims an admin releases: the freed slot goes to one other annotator, the overlap
holds under concurrent claimers, late submissions are stored only while a slot is free, admins (only) can
release from the app, and a store made before claim expiry is upgraded when opened.

Time is a fake clock handed to the store: nothing sleeps. Every store test runs on SQLite and, when
ALIGN_TEST_POSTGRES_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select

from feedback_app import migrations
from feedback_app.store import (
    DEFAULT_CLAIM_TTL_MINUTES,
    SCHEMA_VERSION,
    Store,
    StoreError,
    assignments,
    items,
    judgments,
    meta,
    released_claims,
)
from tests.app.test_feedback_store import _fill, _postgres_url, _rank_all, _users
from tests.conftest import app_login, call_api, downgrade_store, open_store_concurrently, run_at_once


class Clock:
    """A clock the test moves by hand (seconds since the epoch, like time.time)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += 60 * minutes


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Store]:
    s = Store(tmp_path / "feedback.db" if request.param == "sqlite" else _postgres_url(), clock=clock)
    yield s
    s.close()


def _claimed(store: Store) -> dict[int, list[int]]:
    """item id -> the users holding an assignment of it (open or submitted)."""
    out: dict[int, list[int]] = {}
    with store.read() as c:
        for item_id, user_id in c.execute(select(assignments.c.item_id, assignments.c.user_id)):
            out.setdefault(item_id, []).append(user_id)
    return out


def _release_reason(store: Store, user_id: int, item_id: int) -> str | None:
    with store.read() as c:
        return c.execute(select(released_claims.c.reason).where(released_claims.c.user_id == user_id,
                                                                released_claims.c.item_id == item_id)).scalar()


def _submit(store: Store, user, item_id: int, key: str) -> tuple[int, bool]:
    return store.submit(user, item_id, _rank_all(store.item(item_id), [0, 1, 2]), key)


# ------------------------------------------------------------------------------------------------ expiry


def test_an_expired_claim_frees_its_slot_for_one_other_annotator(store, clock):
    p = store.update_project(_fill(store, 1).id, overlap=1, assign_batch=1, claim_ttl_minutes=60)
    u, v, w = _users(store, 3)
    item_id = store.next_item(u, p)
    assert item_id is not None
    assert store.next_item(v, p) is None and store.progress(v, p).available == 0
    clock.advance(59)
    assert store.next_item(v, p) is None  # not yet
    clock.advance(2)
    assert store.progress(v, p).available == 1  # an expired claim counts as free before anyone claims it
    assert [(c.user_name, c.count, c.expired) for c in store.open_claims(p)] == [(u.name, 1, 1)]
    assert store.next_item(v, p) == item_id  # v's claim released u's and took the slot
    assert _claimed(store) == {item_id: [v.id]}
    assert _release_reason(store, u.id, item_id) == "expired"
    assert store.next_item(w, p) is None  # the freed slot went to one annotator only
    assert store.next_item(u, p) is None and store.progress(u, p).assigned == 0
    assert store.integrity_problems() == []


def test_an_expired_claim_stays_with_its_annotator_until_someone_needs_the_slot(store, clock):
    p = store.update_project(_fill(store, 2).id, overlap=1, assign_batch=1, claim_ttl_minutes=60)
    u, v = _users(store, 2)
    item_id = store.next_item(u, p)
    clock.advance(24 * 60)
    assert store.next_item(u, p) == item_id  # u's own open claim: no claim is made, nothing released
    assert _submit(store, u, item_id, "late-but-kept")[1]
    other = store.next_item(v, p)  # v's claim finds nothing expired: u submitted
    assert other is not None and other != item_id
    assert store.integrity_problems() == []


def test_claims_never_expire_with_a_ttl_of_zero(store, clock):
    p = store.ensure_project()
    assert p.claim_ttl_minutes == DEFAULT_CLAIM_TTL_MINUTES  # a day unless the admin says otherwise
    p = store.update_project(_fill(store, 1).id, overlap=1, assign_batch=1, claim_ttl_minutes=0)
    u, v = _users(store, 2)
    item_id = store.next_item(u, p)
    clock.advance(10 * 365 * 24 * 60)
    assert store.next_item(v, p) is None and store.progress(v, p).available == 0
    assert _claimed(store) == {item_id: [u.id]}
    for bad in (-1, 366 * 24 * 60 + 1):
        with pytest.raises(StoreError, match="claim expiry"):
            store.update_project(p.id, claim_ttl_minutes=bad)


# ------------------------------------------------------------------------------------------------ late submissions


def test_a_late_submission_is_stored_while_the_item_has_a_free_slot(store, clock):
    p = store.update_project(_fill(store, 1).id, overlap=2, assign_batch=1, claim_ttl_minutes=60)
    u, v, w = _users(store, 3)
    item_id = store.next_item(u, p)
    store.save_draft(u.id, item_id, {"ranks": {}})
    clock.advance(61)
    assert store.next_item(v, p) == item_id  # releases u's claim; v takes one of the two slots
    with pytest.raises(StoreError, match="not assigned"):  # u's draft is refused while the claim is gone
        store.save_draft(u.id, item_id, {"ranks": {}})
    jid, fresh = _submit(store, u, item_id, "u-late")  # the form u had open: one slot is still free
    assert fresh and store.latest_judgment(u.id, item_id).id == jid
    assert sorted(_claimed(store)[item_id]) == sorted([u.id, v.id])
    assert _release_reason(store, u.id, item_id) is None  # the claim is u's again
    assert store.draft(u.id, item_id) is None
    assert store.next_item(w, p) is None  # full: overlap 2
    assert store.integrity_problems() == []


def test_a_late_submission_is_refused_once_others_took_the_slot(store, clock):
    p = store.update_project(_fill(store, 1).id, overlap=1, assign_batch=1, claim_ttl_minutes=60)
    u, v, stranger = _users(store, 3)
    item_id = store.next_item(u, p)
    clock.advance(61)
    assert store.next_item(v, p) == item_id
    with pytest.raises(StoreError, match="your claim on this prompt expired and other annotators have taken it"):
        _submit(store, u, item_id, "u-too-late")
    with pytest.raises(StoreError, match="not assigned"):  # never assigned: no late path
        _submit(store, stranger, item_id, "stranger")
    assert store.count_judgment_rows() == 0 and _claimed(store) == {item_id: [v.id]}
    assert _submit(store, v, item_id, "v")[1]
    assert store.integrity_problems() == []


# ------------------------------------------------------------------------------------------------ admin release


def test_an_admin_releases_one_annotators_or_one_items_open_claims(store, clock):
    p = store.update_project(_fill(store, 6).id, overlap=2, assign_batch=3, claim_ttl_minutes=0)
    other = store.update_project(_fill(store, 2, project="other").id, overlap=1, assign_batch=2)
    u, v, w = _users(store, 3)
    first = store.next_item(u, p)  # u claims 3 and submits one
    _submit(store, u, first, "u-1")
    store.next_item(u, other)
    v_first = store.next_item(v, p)
    with pytest.raises(StoreError, match="name an annotator or an item"):
        store.release_claims(p.id)
    assert {c.user_name: c.count for c in store.open_claims(p)} == {u.name: 2, v.name: 3}

    assert store.release_claims(p.id, user_id=u.id) == 2  # the submitted one stays
    assert store.release_claims(p.id, user_id=u.id) == 0
    assert store.progress(u, p).assigned == 1 and store.latest_judgment(u.id, first) is not None
    assert store.progress(u, other).assigned == 2  # another project's claims are untouched
    assert {c.user_name for c in store.open_claims(p)} == {v.name}

    assert store.release_claims(p.id, item_id=v_first) == 1
    assert store.release_claims(other.id, item_id=v_first) == 0  # the item is not in that project
    assert _release_reason(store, v.id, v_first) == "released"
    assert store.progress(v, p).assigned == 2
    # a late submission after an admin's release: stored while a slot is free (u's judgment holds the other)
    assert _submit(store, v, v_first, "v-late")[1]
    assert store.progress(v, p).assigned == 3

    # the slots u left are claimable again: w takes them first (the most-annotated items come first)
    assert store.next_item(w, p) is not None and store.progress(w, p).assigned == 3
    assert all(len(users) <= 2 for users in _claimed(store).values())
    assert store.integrity_problems() == []


def test_a_late_submission_after_a_release_says_an_admin_released_it(store):
    p = store.update_project(_fill(store, 1).id, overlap=1, assign_batch=1)
    u, v = _users(store, 2)
    item_id = store.next_item(u, p)
    assert store.release_claims(p.id, user_id=u.id) == 1
    assert store.next_item(v, p) == item_id
    with pytest.raises(StoreError, match="an admin released your claim"):
        _submit(store, u, item_id, "u-late")


# ------------------------------------------------------------------------------------------------ concurrency


def test_concurrent_claims_late_submissions_and_releases_never_exceed_the_overlap(store, clock):
    """After expiry, new claimers, the annotators who left (submitting late) and an admin's release all at
    once: no item gets more than `overlap` annotators, no freed slot is handed out twice, nothing breaks."""
    p = store.update_project(_fill(store, 10).id, overlap=2, assign_batch=5, claim_ttl_minutes=60)
    early = [store.add_user(f"early{i}", "annotator", "password-1") for i in range(4)]
    held: dict[int, list[int]] = {}
    for u in early:  # 4 x 5 claims fill all 20 slots; each submits 2, so 12 claims will expire
        store.next_item(u, p)
        for k in range(2):
            _submit(store, u, store.next_item(u, p), f"{u.id}-{k}")
        with store.read() as c:
            held[u.id] = list(c.execute(select(assignments.c.item_id).where(assignments.c.user_id == u.id)
                                        .where(~select(judgments.c.id).where(
                                            judgments.c.item_id == assignments.c.item_id,
                                            judgments.c.user_id == u.id).exists())).scalars())
    assert sum(len(v) for v in held.values()) == 12
    clock.advance(61)
    newcomers = _users(store, 8)
    late: list[tuple[int, int, str]] = []  # (user, item, "stored" | the refusal)

    def submit_late(u):
        for item_id in held[u.id]:
            try:
                _submit(store, u, item_id, f"late-{u.id}-{item_id}")
                late.append((u.id, item_id, "stored"))
            except StoreError as e:
                late.append((u.id, item_id, str(e)))

    errors = run_at_once([*(lambda u=u: store.next_item(u, p) for u in newcomers),
                          *(lambda u=u: submit_late(u) for u in early[:3]),
                          lambda: store.release_claims(p.id, user_id=early[3].id)])
    assert not errors, errors
    assert store.integrity_problems() == []  # n_assigned = assignment rows; every judgment has its assignment
    per_item = _claimed(store)
    assert all(len(users) == len(set(users)) for users in per_item.values())
    assert max(len(users) for users in per_item.values()) <= 2
    with store.read() as c:
        judged = Counter(item for item, _ in c.execute(select(judgments.c.item_id, judgments.c.user_id).distinct()))
        n_assigned = dict(c.execute(select(items.c.id, items.c.n_assigned)).all())
    assert max(judged.values()) <= 2
    assert all(n == 2 for n in n_assigned.values()), n_assigned  # 8 newcomers x 5 is enough to fill every slot
    assert len(late) == sum(len(held[u.id]) for u in early[:3])
    for user_id, item_id, outcome in late:
        if outcome == "stored":
            assert user_id in per_item[item_id]
        else:
            assert "expired and other annotators have taken it" in outcome, outcome
            assert user_id not in per_item[item_id]
    assert all(early[3].id not in per_item[i] for i in held[early[3].id])


# ------------------------------------------------------------------------------------------------ migration


def test_an_old_store_is_upgraded_when_opened(store, clock):
    p = store.update_project(_fill(store, 3).id, overlap=1, assign_batch=2)
    u, v = _users(store, 2)
    item_id = store.next_item(u, p)
    downgrade_store(store, "1")
    store.close()
    checker = Store(store.url, create=False)  # what an export or a check opens: upgraded as well
    with checker.read() as c:
        assert "claim_ttl_minutes" in {col["name"] for col in inspect(c).get_columns("projects")}
    checker.close()
    store = Store(store.url, clock=clock)
    with store.read() as c:
        assert c.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar() == SCHEMA_VERSION
        assert migrations.current(c) == migrations.head()  # legacy upgrade, then Alembic's baseline and later
        assert "released_claims" in inspect(c).get_table_names()
        assert c.execute(select(func.count()).select_from(assignments)).scalar() == 2  # the claims are kept
    p = store.project(p.id)
    assert p.claim_ttl_minutes == DEFAULT_CLAIM_TTL_MINUTES and (p.overlap, p.assign_batch) == (1, 2)
    assert store.next_item(u, p) == item_id
    clock.advance(DEFAULT_CLAIM_TTL_MINUTES + 1)
    store.next_item(v, p)  # expiry works on the upgraded store
    assert store.progress(v, p).assigned == 2 and store.progress(u, p).assigned == 0
    assert store.integrity_problems() == []
    store.close()


def test_concurrent_opens_upgrade_an_old_store_once(store):
    _fill(store, 1)
    downgrade_store(store, "1")
    store.close()
    errors = open_store_concurrently(store.url)  # the server and CLI commands starting together
    assert not errors, errors
    reopened = Store(store.url)
    assert reopened.project("default").claim_ttl_minutes == DEFAULT_CLAIM_TTL_MINUTES
    reopened.close()


# ------------------------------------------------------------------------------------------------ the app


def test_release_and_expiry_from_the_app_are_for_admins_only(tmp_path, clock):
    from fastapi.testclient import TestClient

    from feedback_app.dashboard import annotator_rows
    from feedback_app.server import create_app

    store = Store(tmp_path / "feedback.db", clock=clock)
    p = store.update_project(_fill(store, 4).id, overlap=1, assign_batch=2, claim_ttl_minutes=60)
    store.add_user("root", "admin", "root-password")
    store.add_user("ann", "annotator", "ann-password")
    eve = store.add_user("<b>eve</b>", "annotator", "eve-password")  # no spaces: a valid name, and markup
    item_id = store.next_item(eve, p)
    clock.advance(70)
    rows = annotator_rows(store, p)
    assert rows == [["<b>eve</b>", 0, 0, "", 2, "70 min (2 expired)"]]  # a table shows text, never markup

    with TestClient(create_app(store, upload_dir=tmp_path / "uploads")) as client:
        def call(user: str, password: str, api: str, data: list) -> str:
            app_login(client, user, password)
            return call_api(client, api, data)

        # an annotator calling the admin endpoints directly: the handlers' role check refuses
        for api, data in (("admin_release_user", [None, "<b>eve</b>"]), ("admin_release_item", [None, item_id]),
                          ("admin_save_claim_ttl", [None, 0]), ("admin_claims", [None])):
            result = call("ann", "ann-password", api, data)
            assert "event: error" in result and "admin role" in result, (api, result)
        assert store.progress(eve, p).assigned == 2 and store.project(p.id).claim_ttl_minutes == 60

        result = call("root", "root-password", "admin_claims", [None])
        assert "event: complete" in result and "2 open, oldest 70 min" in result, result
        result = call("root", "root-password", "admin_release_item", [None, item_id])
        assert "Released 1 open claim on prompt" in result, result
        result = call("root", "root-password", "admin_release_user", [None, "<b>eve</b>"])
        data = json.loads(result.split("data:", 1)[1].strip().splitlines()[0])
        assert data[0].startswith("Released 1 open claim of **&lt;b&gt;eve&lt;/b&gt;**"), data[0]
        assert store.progress(eve, p).assigned == 0 and store.open_claims(p) == []
        assert "No open claims of" in call("root", "root-password", "admin_release_user", [None, "<b>eve</b>"])
        assert "No user **nobody**" in call("root", "root-password", "admin_release_user", [None, "nobody"])

        assert "never expire" in call("root", "root-password", "admin_save_claim_ttl", [None, 0])
        assert store.project(p.id).claim_ttl_minutes == 0
        assert "Not saved" in call("root", "root-password", "admin_save_claim_ttl", [None, 10**7])
        assert "expire after 1440 minutes (24 h)" in call("root", "root-password", "admin_save_claim_ttl",
                                                             [None, 1440])
        assert store.project(p.id).claim_ttl_minutes == 1440
    assert store.integrity_problems() == []
    store.close()
