"""The app's handlers called as functions, on a real store: no browser, no HTTP, no Gradio event.

The annotate handlers (feedback_app.annotate) take the signed-in user, the form's state and a Judgment; the
admin handlers (feedback_app.admin) take the acting user and check the admin role against the store
themselves; the dashboard (feedback_app.dashboard) is a dataclass of numbers checked here against values
worked out by hand.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from feedback_app import admin, annotate
from feedback_app.annotate import Denied
from feedback_app.dashboard import Dashboard, dashboard_values
from feedback_app.store import MAX_TEXT, Item, Judgment, Project, Store, User
from tests.app.test_claims import Clock
from tests.app.test_feedback_store import _fill, _rank_all


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    s = Store(tmp_path / "feedback.db", clock=clock)
    yield s
    s.close()


@pytest.fixture
def project(store: Store) -> Project:
    """Three prompts of three answers each, one annotator per prompt, claimed two at a time."""
    return store.update_project(_fill(store, 3).id, overlap=1, assign_batch=2)


def _ranked(state: dict, note: str = "") -> Judgment:
    """Every answer ranked in the order the form shows them (slot A best)."""
    return Judgment(ranks={cid: r + 1 for r, cid in enumerate(state["order"])}, note=note)


def _open(store: Store, user: User) -> tuple[annotate.Shown, dict]:
    """The page load: what the form shows and its state."""
    shown = annotate.open_page(store, user)
    return shown, annotate.form_state(user, shown.project, shown.item)


# ------------------------------------------------------------------------------------------------ annotate


def test_an_annotator_submits_a_ranking_and_the_store_holds_it(store, project):
    ann = store.add_user("ann", "annotator", "password-ann")
    shown, state = _open(store, ann)
    assert shown.project == project and isinstance(shown.item, Item) and shown.prefill is None
    assert state["item_id"] == shown.item.id and sorted(state["order"]) == [c.id for c in shown.item.candidates]
    first = shown.item.id
    j = Judgment(ranks={state["order"][0]: 2, state["order"][1]: 1, state["order"][2]: 3},
                 tags={state["order"][2]: ["unsafe"]}, note="<b>check the dates</b>")

    done = annotate.submit(store, ann, state, j)

    assert done.judgment_id is not None
    stored = store.latest_judgment(ann.id, first)
    assert stored.id == done.judgment_id and stored.judgment == j and stored.revision == 1
    assert done.shown.message == "Saved. Here is the next one."
    assert done.shown.item is not None and done.shown.item.id != first  # the next prompt, claimed
    # the same form sent again (a double click, a retried request): stored once
    again = annotate.submit(store, ann, state, j)
    assert again.judgment_id == done.judgment_id and again.shown.message.startswith("Already saved")
    assert len(store.latest_judgments(project.id)) == 1 and store.count_judgment_rows() == 1


def test_a_form_with_a_problem_is_refused_and_nothing_is_stored(store, project):
    ann = store.add_user("ann", "annotator", "password-ann")
    _, state = _open(store, ann)
    a = state["order"][0]

    done = annotate.submit(store, ann, state, Judgment(ranks={a: 1}))
    assert (done.judgment_id, done.shown) == (None, None)  # the form stays as it is; only the message
    assert done.message == ("**Not saved:** Responses B and C have no rank: rank every response, or tick "
                            "&#x27;All responses are unacceptable&#x27;.")
    long = annotate.submit(store, ann, state, _ranked(state, note="x" * (MAX_TEXT + 1)))
    assert f"The note for the admin has {MAX_TEXT + 1:,} characters" in long.message and long.shown is None
    # the store's own refusal comes back as a message, escaped
    bad = annotate.submit(store, ann, state, Judgment(ranks={cid: 1 for cid in state["order"]},
                                                      tags={a: ["<script>"]}))
    assert bad.message == "**Not saved:** unknown tag(s): &lt;script&gt;" and bad.shown is None
    assert store.latest_judgment(ann.id, state["item_id"]) is None

    # all unacceptable needs no ranks
    done = annotate.submit(store, ann, state, Judgment(all_unacceptable=True))
    assert done.judgment_id is not None
    assert store.latest_judgment(ann.id, state["item_id"]).judgment == Judgment(all_unacceptable=True)


def test_a_form_from_before_a_restart_is_shown_again_not_stored(store, project):
    ann = store.add_user("ann", "annotator", "password-ann")
    shown, state = _open(store, ann)
    j = _ranked(state)
    assert annotate.save_draft(store, ann, state, j)
    done = annotate.submit(store, ann, {"project_id": project.id}, j)  # the state lost its item
    assert done.judgment_id is None and done.shown.message == annotate.OUT_OF_DATE
    assert done.shown.item.id == shown.item.id and done.shown.prefill == j  # the draft, filled in
    assert store.count_judgment_rows() == 0


def test_a_draft_is_saved_and_returned_as_the_same_judgment(store, project):
    ann = store.add_user("ann", "annotator", "password-ann")
    shown, state = _open(store, ann)
    b = state["order"][1]
    j = Judgment(ranks={b: 1}, tags={b: ["off tone"]}, correction_of=b, correction="Better: <i>this</i>",
                 negative="Never say this", note="a note")

    assert annotate.save_draft(store, ann, state, j)
    assert annotate.load_draft(store, ann, shown.item.id) == j
    assert annotate.draft_or_latest(store, ann, shown.item.id) == j
    assert store.draft(ann.id, shown.item.id) == json.loads(j.to_json())  # what the store keeps, as before
    # a reload shows the same item, filled in from the draft; a draft is not a submission
    again, _ = _open(store, ann)
    assert again.item.id == shown.item.id and again.prefill == j
    assert store.latest_judgment(ann.id, shown.item.id) is None

    cleared = annotate.clear_ranks(store, ann, state, j)
    assert cleared.ranks == {} and cleared.note == "a note"
    assert annotate.load_draft(store, ann, shown.item.id) == cleared

    # another annotator's draft of an item not assigned to them is refused quietly; a form without an item too
    other = store.add_user("bob", "annotator", "password-bob")
    assert not annotate.save_draft(store, other, state, j)
    assert annotate.load_draft(store, other, shown.item.id) is None
    assert not annotate.save_draft(store, ann, {"project_id": project.id}, j)

    # a submission clears the draft; the latest submission fills the form from then on
    annotate.submit(store, ann, state, _ranked(state))
    assert annotate.load_draft(store, ann, shown.item.id) is None
    assert annotate.draft_or_latest(store, ann, shown.item.id) == _ranked(state)


def test_revise_and_my_submissions_are_the_annotators_own(store, project):
    ann = store.add_user("ann", "annotator", "password-ann")
    bob = store.add_user("bob", "annotator", "password-bob")
    shown, state = _open(store, ann)
    annotate.submit(store, ann, state, _ranked(state, note="first"))

    rows, choices = annotate.my_submissions(store, ann, project.name)
    prompt = shown.item.prompt[-1]["content"]
    assert [r[1:] for r in rows] == [[prompt, 1]] and choices == [(f"{rows[0][0]} · {prompt}", shown.item.id)]
    assert annotate.my_submissions(store, bob, project.name) == ([], [])

    revising = annotate.revise(store, ann, shown.item.id)
    assert revising.item.id == shown.item.id and revising.prefill == _ranked(state, note="first")
    assert revising.message == "Revising your submission (revision 1). Submit to save a new one."
    state = annotate.form_state(ann, revising.project, revising.item)
    done = annotate.submit(store, ann, state, _ranked(state, note="second"))
    assert done.shown.message.startswith("Saved revision 2.")
    assert store.latest_judgment(ann.id, shown.item.id).judgment.note == "second"

    for who, item_id in ((bob, shown.item.id), (ann, None), (ann, 10_000)):
        with pytest.raises(Denied, match="only revise your own"):
            annotate.revise(store, who, item_id)


def test_picking_a_project_remembers_it_and_skips_the_one_shown(store, project):
    ann = store.add_user("ann", "annotator", "password-ann")
    other = _fill(store, 1, project="other")
    _, state = _open(store, ann)
    assert annotate.select_project(store, ann, project.name, state) is None  # the form shows it already
    shown = annotate.select_project(store, ann, "other", state)
    assert shown.project == other and shown.item.prompt[-1]["content"] == "other question 0"
    assert store.remembered_project(ann.id) == other
    assert annotate.open_page(store, ann).project == other  # the next page load starts there


def test_the_last_item_says_where_else_there_is_work(store, project):
    ann = store.add_user("ann", "annotator", "password-ann")
    _fill(store, 2, project="<i>other</i>")
    shown, state = _open(store, ann)
    for _ in range(3):
        done = annotate.submit(store, ann, state, _ranked(state))
        shown = done.shown
        state = annotate.form_state(ann, shown.project, shown.item)
    assert shown.item is None
    assert shown.message == ("Saved. Nothing more to annotate in project default. Projects with work: "
                             "&lt;i&gt;other&lt;/i&gt; (2 prompts).")


def test_require_rereads_the_user_and_checks_the_role(store):
    store.add_user("ann", "annotator", "password-ann")
    boss = store.add_user("boss", "admin", "password-boss")
    assert annotate.require(store, SimpleNamespace(username="boss"), "admin") == boss
    assert annotate.require(store, SimpleNamespace(username="ann")).name == "ann"
    with pytest.raises(Denied, match="admin role"):
        annotate.require(store, SimpleNamespace(username="ann"), "admin")
    for request in (None, SimpleNamespace(username=None), SimpleNamespace(username="nobody")):
        with pytest.raises(Denied, match="not signed in"):
            annotate.require(store, request)
    store.set_active("boss", False)
    with pytest.raises(Denied, match="not signed in"):
        annotate.require(store, SimpleNamespace(username="boss"), "admin")


# ------------------------------------------------------------------------------------------------ admin


def test_admin_handlers_refuse_an_annotator_and_change_nothing(store, project):
    ann = store.add_user("ann", "annotator", "password-ann")
    boss = store.add_user("boss", "admin", "password-boss")
    store.next_item(ann, project)  # two open claims
    calls = {
        "create_project": lambda u: admin.create_project(store, u, "new"),
        "save_project": lambda u: admin.save_project(store, u, "default", "rules", "a, b", 3, 1, 2),
        "save_serving_order": lambda u: admin.save_serving_order(store, u, "default", True),
        "load_prompts_file": lambda u: admin.load_prompts_file(store, u, "default", None),
        "import_candidates_file": lambda u: admin.import_candidates_file(store, u, "default", None),
        "generate": lambda u: admin.generate(store, u, "default", "m", 0.8, 0.95, 16, 4),
        "jobs_text": lambda u: admin.jobs_text(store, u, "default"),
        "dashboard": lambda u: admin.dashboard(store, u, "default"),
        "lineage": lambda u: admin.lineage(store, u, "default"),
        "h2h_report": lambda u: admin.h2h_report(store, u, "default"),
        "import_gold": lambda u: admin.import_gold(store, u, "default", None),
        "open_claims": lambda u: admin.open_claims(store, u, "default"),
        "save_claim_ttl": lambda u: admin.save_claim_ttl(store, u, "default", 0),
        "release_annotator": lambda u: admin.release_annotator(store, u, "default", "ann"),
        "release_item": lambda u: admin.release_item(store, u, "default", 1),
        "export_training_data": lambda u: admin.export_training_data(store, u, "default", "all", "all"),
        "user_rows": lambda u: admin.user_rows(store, u),
        "add_user": lambda u: admin.add_user(store, u, "mallory", "admin"),
    }
    for name, call in calls.items():
        with pytest.raises(Denied, match="admin role"):
            call(ann)
            pytest.fail(f"{name} let an annotator through")
    assert store.project(project.id) == project and store.project("new") is None
    assert store.get_user("mallory") is None and store.progress(ann, project).assigned == 2
    assert admin.project_settings(store, ann, "default") is None  # the page asks for everyone: answered quietly

    # the account is read from the store, not from the User object handed in: a deactivated admin is refused
    assert admin.user_rows(store, boss) == [["ann", "annotator", "yes"], ["boss", "admin", "yes"]]
    store.set_active("boss", False)
    with pytest.raises(Denied, match="not signed in"):
        admin.user_rows(store, boss)


def test_admin_releases_a_claim(store, project, clock):
    ann = store.add_user("ann", "annotator", "password-ann")
    boss = store.add_user("boss", "admin", "password-boss")
    first = store.next_item(ann, project)
    clock.advance(70)
    assert admin.open_claims(store, boss, "default") == [("ann · 2 open, oldest 70 min", "ann")]

    message, changed = admin.release_item(store, boss, "default", first)
    assert message == (f"Released 1 open claim on prompt {first} in project **default**: it can be claimed again "
                       "now.")
    assert changed == project and store.progress(ann, project).assigned == 1
    assert admin.release_item(store, boss, "default", first) == (
        f"No open claims on prompt {first} in project **default**.", project)
    assert admin.release_item(store, boss, "default", None) == ("Enter the item id of a prompt first.", None)

    message, changed = admin.release_annotator(store, boss, "default", " ann ")
    assert message == ("Released 1 open claim of **ann** in project **default**: those prompts can be claimed by "
                       "others now.")
    assert changed == project and store.open_claims(project) == [] and store.progress(ann, project).assigned == 0
    assert admin.release_annotator(store, boss, "default", "<b>x</b>") == ("No user **&lt;b&gt;x&lt;/b&gt;**.", None)
    assert admin.release_annotator(store, boss, "default", "") == ("Pick an annotator with open claims first.", None)

    assert admin.save_claim_ttl(store, boss, "default", 1440) == (
        "Claims in project **default** expire after 1440 minutes (24 h) without a submission.")
    assert store.project(project.id).claim_ttl_minutes == 1440


def test_admin_creates_and_configures_projects_and_users(store, project):
    boss = store.add_user("boss", "admin", "password-boss")
    assert admin.create_project(store, boss, "  ") == ("Give the project a name.", None)
    message, made = admin.create_project(store, boss, " <new> ")
    assert message == "Project **&lt;new&gt;** ready." and made == store.project("<new>")
    heading, guidelines, tags, k, overlap, batch, ttl, uncertain = admin.project_settings(store, boss, "<new>")
    assert heading.startswith("### Editing project: &lt;new&gt;\n") and (k, overlap, batch) == (4, 2, 5)

    assert admin.save_project(store, boss, "<new>", "Be kind.", "rude, wrong", 3, 2, 1) == (
        "Saved. Guideline version 2.")
    p = store.project("<new>")
    assert (p.guidelines, p.tags, p.candidates_per_item, p.overlap, p.assign_batch) == (
        "Be kind.", ("rude", "wrong"), 3, 2, 1)
    assert admin.save_project(store, boss, "<new>", "Be kind.", "rude, rude", 3, 0, 1) == (
        "**Not saved:** tags must be distinct")
    assert store.project("<new>") == p
    assert admin.save_serving_order(store, boss, "<new>", True).startswith(
        "Project **&lt;new&gt;** serves uncertain first, but none of its prompts has reward-model scores yet")
    assert store.project("<new>").uncertain_first

    rows, message = admin.add_user(store, boss, "carol", "annotator")
    password = re.fullmatch(r"User \*\*carol\*\* added\. Password \(shown once\): `(.+)`", message).group(1)
    assert store.authenticate("carol", password) is not None
    assert ["carol", "annotator", "yes"] in rows
    rows, message = admin.add_user(store, boss, "carol", "annotator")
    assert message.startswith("**Not added:**") and len(rows) == 2


def test_admin_loads_a_prompts_file(store, project, tmp_path):
    boss = store.add_user("boss", "admin", "password-boss")
    assert admin.load_prompts_file(store, boss, "default", None) == "Choose a prompts file first."
    assert admin.import_gold(store, boss, "default", "") == ("Choose a gold orderings file first.", None)
    prompts = tmp_path / "more.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": text}) + "\n"
                               for text in ("a fourth question", "default question 0", "")))
    message = admin.load_prompts_file(store, boss, "default", str(prompts))
    assert message.startswith("1 prompts added (1 already in the project).\n\n**1 row skipped:** "), message
    assert store.counts(project.id)["prompts"] == 4
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    message = admin.load_prompts_file(store, boss, "default", str(broken))
    assert message.startswith("**Not loaded:** ") and "broken.jsonl" in message, message
    assert str(tmp_path) not in message  # the file named, the server's folders not
    assert store.counts(project.id)["prompts"] == 4


# ------------------------------------------------------------------------------------------------ dashboard


def test_the_dashboard_numbers_equal_hand_computed_values(store, clock):
    """Two annotators, three prompts of three answers. u and v rank prompt a the same (tau 1) and prompt b in
    reverse (tau -1); v marks c all unacceptable, with a note; u revises a once and leaves c open.

    Krippendorff's alpha (ordinal) over the six (item, answer) units, values = ranks: every rank value is used
    4 times (n = 12), so delta^2(1,2) = delta^2(2,3) = (8 - 4)^2 = 16 and delta^2(1,3) = (12 - 4)^2 = 64.
    Observed: only b's first and last answers differ, (1,3) and (3,1): D_o = 2 * 2 * 64 / 12 = 256/12.
    Expected: D_e = 2 * 16 * (16 + 16 + 64) / (12 * 11) = 3072/132. alpha = 1 - D_o / D_e = 1/12."""
    p = store.update_project(_fill(store, 3).id, overlap=2)
    u = store.add_user("u", "annotator", "password-u")
    v = store.add_user("v", "annotator", "password-v")
    a, b, c = (store.item_id_for_prompt(p.id, [{"role": "user", "content": f"default question {i}"}])
               for i in range(3))
    for user in (u, v):
        store.next_item(user, p)  # claims all three
    ia, ib = store.item(a), store.item(b)
    store.submit(u, a, _rank_all(ia, [2, 1, 0]), "u-a-1")
    tagged = Judgment(ranks=_rank_all(ia, [0, 1, 2]).ranks,
                      tags={ia.candidates[0].id: ["unsafe", "off tone"], ia.candidates[1].id: ["unsafe"]})
    store.submit(u, a, tagged, "u-a-2")  # revision 2 replaces revision 1
    store.submit(u, b, _rank_all(ib, [0, 1, 2]), "u-b")
    store.submit(v, a, _rank_all(ia, [0, 1, 2]), "v-a")
    store.submit(v, b, _rank_all(ib, [2, 1, 0]), "v-b")
    store.submit(v, c, Judgment(all_unacceptable=True, note="<b>all too short</b>"), "v-c")
    store.set_gold(p.id, a, [cand.id for cand in ia.candidates])
    clock.advance(3 * 60)

    d = Dashboard.build(store, p)

    assert (d.judgments, d.annotators, d.unacceptable, d.gold_items) == (5, 2, 1, 1)
    assert d.report.items == 2 and d.report.mean_tau == pytest.approx(0.0)
    assert d.report.alpha == pytest.approx(1 / 12)
    assert d.report.disagreements == [(str(b), pytest.approx(-1.0))]
    assert d.disagreements == [[b, -1.0, "u, v", "default question 1"]]
    assert d.tags == {"unsafe": 2, "off tone": 1}
    latest = {(sj.user_name, sj.item_id): sj.created_at for sj in store.latest_judgments(p.id)}

    def when(t: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))

    assert d.users == [
        # name, judged, revisions, last activity, open claims, oldest open claim, gold judged, gold accuracy
        ["u", 2, 1, when(max(latest["u", a], latest["u", b])), 1, "3 h", 1, "1.000"],
        ["v", 3, 0, when(max(latest["v", a], latest["v", b], latest["v", c])), 0, "", 1, "1.000"],
    ]
    assert d.notes == [["v", "default question 2", "<b>all too short</b>", when(latest["v", c])]]  # a cell: text
    assert d.summary() == ("**5** current judgments from **2** annotators · **2** prompts judged by 2+ annotators · "
                           "mean Kendall tau-b **0.000** · Krippendorff's alpha (ordinal) **0.083** · **1** prompts "
                           "with strong disagreement (tau ≤ 0) · 1 marked all unacceptable · **1** gold items")

    summary, users, disagreements, plot, notes = dashboard_values(store, p)
    assert (summary, users, disagreements, notes) == (d.summary(), d.users, d.disagreements, d.notes)
    assert plot.y_lim == [0, 3]  # from 0 to one above the largest count

    boss = store.add_user("boss", "admin", "password-boss")
    assert admin.dashboard(store, boss, p.name) == d


def test_an_empty_project_has_an_empty_dashboard(store):
    d = Dashboard.build(store, store.ensure_project("default"))
    assert (d.judgments, d.annotators, d.users, d.disagreements, d.tags, d.notes) == (0, 0, [], [], {}, [])
    assert "mean Kendall tau-b **n/a**" in d.summary() and "Krippendorff's alpha (ordinal) **n/a**" in d.summary()
