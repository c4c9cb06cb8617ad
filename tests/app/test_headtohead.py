"""Head-to-head evaluation: a project of two models' answers to held-out prompts (schema 6), judged blind by
experts; never exported for training; the win rate of the challenger with a bootstrap interval over prompts and a
Wilson interval, beside the rules and the reward model as judges; ``align feedback h2h create|report``.

Every store test runs on SQLite and, when ALIGN_TEST_POSTGRES_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from alignment.cli import main
from alignment.errors import AlignError
from feedback_app import migrations
from feedback_app.export import export_store, materialise, summary_lines
from feedback_app.headtohead import (
    BOTH_BAD,
    LOSS,
    TIE,
    WIN,
    Counts,
    Vote,
    bootstrap_interval,
    create_from_files,
    create_from_models,
    format_summary,
    judge_result,
    judgment_for,
    outcome_of,
    project_summary,
    rules_followed,
    sides,
    summarize,
    wilson_interval,
)
from feedback_app.store import SCHEMA_VERSION, Judgment, ModelSide, Store, StoreError, display_order, meta
from tests.app.test_feedback_store import _fill, _postgres_url, _prompt, _rank_all, _users
from tests.conftest import downgrade_store, write_jsonl

SHA_OLD, SHA_NEW = "1" * 64, "2" * 64
OLD = ModelSide("runs/r1", "/models/r1", SHA_OLD, {"temperature": 0.0, "max_new_tokens": 64})
NEW = ModelSide("runs/r2", "/models/r2", SHA_NEW, {"temperature": 0.0, "max_new_tokens": 64})


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "feedback.db" if request.param == "sqlite" else _postgres_url())
    yield s
    s.close()


def _rows(n: int, start: int = 0) -> list[tuple[list[dict[str, str]], str, str]]:
    return [(_prompt(f"held-out question {i}"), f"old answer {i}", f"new answer {i}") for i in range(start, start + n)]


def _judge_everything(store: Store, user, project, verdict_of) -> None:
    """``user`` claims and judges every item they are served; ``verdict_of(question text)`` -> "challenger",
    "baseline", "tie" or "both_bad"."""
    while (item_id := store.next_item(user, project)) is not None:
        item = store.item(item_id)
        base, chal = sides(item, project)
        verdict = verdict_of(item.prompt[-1]["content"])
        judgment = (judgment_for(item, "better", chal.id if verdict == "challenger" else base.id)
                    if verdict in ("challenger", "baseline") else judgment_for(item, verdict))
        store.submit(user, item_id, judgment, f"{user.id}-{item_id}")


# ------------------------------------------------------------------------------------------------ the store


def test_a_head_to_head_project_round_trips(store):
    added = store.add_head_to_head("eval-r2", OLD, NEW, _rows(3), overlap=3, source="heldout.jsonl")
    p = added.project
    assert (added.added, added.identical, added.already_present) == (3, 0, 0)
    assert (p.task, p.baseline, p.challenger, p.candidates_per_item, p.overlap) == (
        "head_to_head", "runs/r1", "runs/r2", 2, 3)
    assert p.is_head_to_head and store.project("eval-r2") == p
    assert not store.ensure_project("ranking").is_head_to_head  # every other project ranks, as before
    items = store.project_items(p.id)
    assert [i.prompt for i in items] == [r[0] for r in _rows(3)]
    for item, (_, old, new) in zip(items, _rows(3)):
        base, chal = sides(item, p)
        assert (base.text, base.model, base.model_path, base.model_sha256) == (old, "runs/r1", "/models/r1", SHA_OLD)
        assert (chal.text, chal.model, chal.model_path, chal.model_sha256) == (new, "runs/r2", "/models/r2", SHA_NEW)
        assert base.generation == OLD.generation and store.item(item.id) == item
    # Served and judged like any item; each annotator sees the two answers in an order of their own.
    u, v = _users(store, 2)
    first = store.next_item(u, p)
    orders = {tuple(c.model for c in display_order(user.id, store.item(i)))
              for user in (u, v) for i in (x.id for x in items)}
    assert orders == {("runs/r1", "runs/r2"), ("runs/r2", "runs/r1")}
    item = store.item(first)
    base, chal = sides(item, p)
    store.submit(u, first, judgment_for(item, "better", chal.id), "k1")
    assert outcome_of(item, p, store.latest_judgment(u.id, first).judgment) == WIN
    store.submit(u, first, judgment_for(item, "tie"), "k2")  # a revision: the latest counts
    assert outcome_of(item, p, store.latest_judgment(u.id, first).judgment) == TIE
    store.submit(u, first, judgment_for(item, "both_bad"), "k3")
    assert store.latest_judgment(u.id, first).judgment.all_unacceptable
    assert outcome_of(item, p, store.latest_judgment(u.id, first).judgment) == BOTH_BAD
    assert outcome_of(item, p, _rank_all(item, [0, 1])) == LOSS  # the baseline (stored first) ranked 1
    with pytest.raises(StoreError, match="better answer"):
        judgment_for(item, "better", 12345)
    # Extending it: new prompts are added, known ones keep their answers (and judgments).
    more = store.add_head_to_head("eval-r2", OLD, NEW, _rows(2, start=2), source="more.jsonl")
    assert (more.added, more.already_present, more.project.overlap) == (1, 1, 3)
    assert store.item(items[2].id) == items[2] and store.integrity_problems() == []


def test_a_head_to_head_project_refuses_what_would_not_compare_the_two_models(store):
    p = store.add_head_to_head("eval", OLD, NEW, _rows(2)).project
    ranking = _fill(store, 1, project="ranking")
    with pytest.raises(StoreError, match="'ranking' is a ranking project"):
        store.add_head_to_head("ranking", OLD, NEW, _rows(1))
    with pytest.raises(StoreError, match="compares 'runs/r2' \\(challenger\\) with 'runs/r1'"):
        store.add_head_to_head("eval", OLD, ModelSide("runs/r3"), _rows(1))
    with pytest.raises(StoreError, match="other weights"):  # runs/r2 trained again into the same directory
        store.add_head_to_head("eval", OLD, ModelSide("runs/r2", "/models/r2", "3" * 64), _rows(1, start=5))
    with pytest.raises(StoreError, match="both named"):
        store.add_head_to_head("new", OLD, ModelSide("runs/r1"), _rows(1))
    # All or nothing: a bad row anywhere stores nothing, not even the project.
    bad = [*_rows(2), (_prompt("last"), "old", "  ")]
    with pytest.raises(StoreError, match="row 3: the challenger's answer is empty"):
        store.add_head_to_head("new", OLD, NEW, bad)
    with pytest.raises(StoreError, match="row 3: the same prompt as row 1"):
        store.add_head_to_head("new", OLD, NEW, [*_rows(2), _rows(1)[0]])
    with pytest.raises(StoreError, match="row 1: the prompt is empty"):
        store.add_head_to_head("new", OLD, NEW, [(_prompt(" "), "a", "b")])
    assert store.project("new") is None
    # Its prompts and answers are fixed: no third answer from the app's generation job or an import.
    item = store.project_items(p.id)[0]
    with pytest.raises(StoreError, match="head-to-head evaluation"):
        store.add_candidates(item.id, [("a third answer", "runs/r3", {})])
    with pytest.raises(StoreError, match="head-to-head evaluation"):
        store.add_prompts(p.id, [_prompt("another")])
    with pytest.raises(StoreError, match="stay 2"):
        store.update_project(p.id, candidates_per_item=4)
    assert store.update_project(p.id, candidates_per_item=2, overlap=1).overlap == 1  # the admin form saves as is
    assert store.add_prompts(ranking.id, [_prompt("fine")]) == (1, 0)  # ranking projects as before
    assert [len(i.candidates) for i in store.project_items(p.id)] == [2, 2]


def test_identical_answers_are_an_automatic_tie_never_served(store):
    rows = [(_prompt("q0"), "same answer", "  same answer\n"), (_prompt("q1"), "old", "new")]
    added = store.add_head_to_head("eval", OLD, NEW, rows)
    p = added.project
    assert (added.added, added.identical) == (2, 1)
    same, differ = store.project_items(p.id)
    assert [(c.text, c.model) for c in same.candidates] == [("same answer", "runs/r1")]  # one row: the baseline's
    assert sides(same, p) is None and sides(differ, p) is not None
    u = _users(store, 1)[0]
    assert store.next_item(u, p) == differ.id  # the identical one is never claimed
    _judge_everything(store, u, p, lambda q: "challenger")
    assert store.next_item(u, p) is None
    summary = project_summary(store, p)
    assert (summary.prompts, summary.identical, summary.judged_prompts, summary.counts) == (1, 1, 1, Counts(wins=1))
    assert "1 more answered identically by both (never shown, in no rate)" in "\n".join(format_summary(summary))


def test_a_head_to_head_judgment_takes_no_correction_or_negative(store):
    """An evaluation is never exported for training: a corrected answer or negative example given for one would
    be lost, so the store refuses it (the app's form hides those boxes for a head-to-head item)."""
    p = store.add_head_to_head("eval", OLD, NEW, _rows(1)).project
    u = _users(store, 1)[0]
    item = store.item(store.next_item(u, p))
    base, chal = sides(item, p)
    ranks = {base.id: 2, chal.id: 1}
    for extra in ({"correction_of": base.id, "correction": "A better answer."}, {"negative": "Never say this."},
                  {"correction_of": base.id}):
        with pytest.raises(StoreError, match="no corrected answer or negative example"):
            store.submit(u, item.id, Judgment(ranks=ranks, **extra), f"k-{len(extra)}-{sorted(extra)}")
    assert store.latest_judgment(u.id, item.id) is None
    store.submit(u, item.id, Judgment(ranks=ranks, note="fine"), "ok")  # a note for the admin is fine
    assert outcome_of(item, p, store.latest_judgment(u.id, item.id).judgment) == WIN


def test_the_dashboard_report_is_for_admins_and_head_to_head_projects(tmp_path):
    from types import SimpleNamespace

    from feedback_app.annotate import Denied
    from feedback_app.server import build_blocks

    store = Store(tmp_path / "feedback.db")
    try:
        p = store.add_head_to_head("eval", OLD, NEW, _rows(3)).project
        store.ensure_project("ranking")
        store.add_user("boss", "admin", "password-boss")
        u = _users(store, 1)[0]
        _judge_everything(store, u, p, lambda q: {"0": "challenger", "1": "tie"}.get(q[-1], "both_bad"))
        handler = next(f.fn for f in build_blocks(store).fns.values() if f.api_name == "admin_h2h_report")
        report = handler("eval", SimpleNamespace(username="boss"))
        assert report.visible
        text = html.unescape(report.value)
        assert "\n".join(format_summary(project_summary(store, p))) in text  # the CLI's report, as it is
        assert "1 wins, 0 losses, 1 ties, 1 both bad" in text and "win rate 0.667  95% CI [" in text
        assert "'eval'" not in report.value  # escaped
        assert not handler("ranking", SimpleNamespace(username="boss")).visible  # ranking: the usual dashboard
        with pytest.raises(Denied, match="admin role"):
            handler("eval", SimpleNamespace(username=u.name))
    finally:
        store.close()


def test_a_schema_5_store_is_upgraded_when_opened(store):
    assert SCHEMA_VERSION == "6"
    p = store.update_project(_fill(store, 2).id, overlap=1)
    u = _users(store, 1)[0]
    a = store.next_item(u, p)
    store.submit(u, a, _rank_all(store.item(a), [0, 1, 2]), "u-a")
    downgrade_store(store, "5")
    store.close()
    checker = Store(store.url, create=False)  # what `align feedback h2h report` opens: upgraded as well
    with checker.read() as c:
        assert {"task", "baseline", "challenger"} <= {col["name"] for col in inspect(c).get_columns("projects")}
        assert c.execute(select(meta.c.value).where(meta.c.key == "schema_version")).scalar() == SCHEMA_VERSION
        assert migrations.current(c) == migrations.head()  # legacy upgrade, then Alembic's baseline and later
    checker.close()
    store = Store(store.url)
    old = store.project(p.id)
    assert (old.task, old.baseline, old.challenger, old.overlap) == ("rank", "", "", 1)  # every old project ranks
    assert len(store.latest_judgments(p.id)) == 1
    h2h = store.add_head_to_head("eval", OLD, NEW, _rows(2)).project
    assert store.project("eval") == h2h and h2h.is_head_to_head
    assert store.integrity_problems() == []
    store.close()


# ------------------------------------------------------------------------------------------------ export


def test_evaluation_judgments_are_never_exported_for_training(store, tmp_path, capsys):
    ranking = store.update_project(_fill(store, 2, k=2, project="ranking").id, overlap=1)
    p = store.add_head_to_head("eval", OLD, NEW, _rows(2)).project
    u = _users(store, 1)[0]
    while (item_id := store.next_item(u, ranking)) is not None:
        store.submit(u, item_id, _rank_all(store.item(item_id), [0, 1]), f"r-{item_id}")
    _judge_everything(store, u, p, lambda q: "challenger")
    export = export_store(store)
    assert export.judgments == 2 and len(export.pairs) == 2  # the ranking project's only
    assert all(r["provenance"]["project"] == "ranking" for r in export.pairs + export.unpaired)
    assert export.skipped_evaluations == ["eval"]
    assert summary_lines(export)[-1] == "left out 1 head-to-head evaluation project(s), never training data: eval"
    assert export_store(store, project="ranking").skipped_evaluations == []
    with pytest.raises(StoreError, match="'eval' is a head-to-head evaluation.*never exported"):
        export_store(store, project="eval")
    if store.is_sqlite:  # the spec a training phase names, and the CLI
        db = store.url.removeprefix("sqlite:///")
        with pytest.raises(AlignError, match="never exported"):
            materialise(f"{db}#eval", tmp_path / "train.jsonl")
        assert not (tmp_path / "train.jsonl").exists()
        assert main(["feedback", "export", "--store", db, "--project", "eval", "--out", str(tmp_path / "x.jsonl")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "never exported as training data" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------------ statistics


def _votes(spec: dict[int, list[str]]) -> list[Vote]:
    """item id -> its votes' outcomes (annotators a0, a1, ... in order)."""
    return [Vote(item, f"a{k}", o) for item, outcomes in spec.items() for k, o in enumerate(outcomes)]


def test_counts_and_win_rates_by_hand():
    votes = _votes({1: [WIN, WIN], 2: [LOSS, TIE], 3: [BOTH_BAD, WIN]})
    s = summarize(votes, samples=500)
    assert s.counts == Counts(wins=3, losses=1, ties=1, both_bad=1)
    assert s.win_rate == pytest.approx((3 + 0.5 * 2) / 6)  # ties and both bad count 1/2
    assert s.counts.decisive_rate == 3 / 4
    assert s.annotators == (("a0", Counts(wins=1, losses=1, both_bad=1)), ("a1", Counts(wins=2, ties=1)))
    assert (s.prompts, s.judged_prompts) == (3, 3)
    assert s.wilson == wilson_interval(3, 4)
    empty = summarize([])
    assert (empty.win_rate, empty.bootstrap, empty.wilson) == (None, None, None)
    assert "no judgments yet" in format_summary(empty)


def test_wilson_interval_against_the_closed_form():
    # 8 of 10, z = 1.959964: centre (0.8 + z²/20) / (1 + z²/10), half-width z sqrt(0.016 + z²/400) / (1 + z²/10)
    z = 1.959963984540054
    denom = 1 + z * z / 10
    centre = (0.8 + z * z / 20) / denom
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / denom
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the published value
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z * z), 1.0))  # not empty at n/n
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_bootstrap_interval_resamples_prompts():
    assert bootstrap_interval(_votes({i: [WIN, WIN] for i in range(5)})) == (1.0, 1.0)
    assert bootstrap_interval(_votes({i: [LOSS] for i in range(5)})) == (0.0, 0.0)
    assert bootstrap_interval([]) is None
    # Symmetric: 10 prompts, 5 won and 5 lost. The interval holds 0.5 and is symmetric about it (up to resampling).
    votes = _votes({i: [WIN if i < 5 else LOSS] for i in range(10)})
    low, high = bootstrap_interval(votes, samples=4000)
    assert low < 0.5 < high and low + high == pytest.approx(1.0, abs=0.05) and 0.1 <= low <= 0.3
    assert bootstrap_interval(votes, samples=4000) == (low, high)  # the fixed seed: the same interval
    # Three annotators who agree on each prompt are not three prompts: resampling prompts gives the interval of
    # 10 prompts, and resampling the 30 votes one by one (each its own "item") a much narrower one.
    clustered = _votes({i: [WIN if i < 5 else LOSS] * 3 for i in range(10)})
    by_prompt = bootstrap_interval(clustered)
    by_vote = bootstrap_interval([Vote(k, v.annotator, v.outcome) for k, v in enumerate(clustered)])
    assert by_prompt == pytest.approx(bootstrap_interval(votes), abs=0.03)
    assert by_prompt[1] - by_prompt[0] > 1.4 * (by_vote[1] - by_vote[0])
    # A single prompt with a win and a loss: every resample is that prompt, 0.5.
    assert bootstrap_interval(_votes({7: [WIN, LOSS]})) == (0.5, 0.5)


def test_judge_results_by_hand(tmp_path):
    # Item 1: the judge prefers the challenger, 2: the baseline, 3: a tie, 4: not judged (no measure).
    measures = {1: (1.0, 2.0), 2: (2.0, 1.0), 3: (1.0, 1.0)}
    votes = [Vote(1, "a", WIN), Vote(1, "b", LOSS), Vote(2, "a", LOSS), Vote(2, "b", TIE), Vote(3, "a", WIN),
             Vote(4, "a", WIN), Vote(3, "b", BOTH_BAD)]
    j = judge_result("rm", measures, votes)
    assert j.counts == Counts(wins=1, losses=1, ties=1) and j.win_rate == 0.5
    # Decisive expert votes on judged items: 1/a (agrees), 1/b (disagrees), 2/a (agrees), 3/a (judge tied).
    assert (j.comparable, j.agreed, j.judge_ties, j.agreement) == (4, 2, 1, 0.5)
    assert j.means == (pytest.approx(4 / 3), pytest.approx(4 / 3))
    # The rules: the answer following more of them wins.
    from alignment.evaluation.rules import load_rules

    path = tmp_path / "rules.yaml"
    path.write_text("policies:\n"
                    "  - name: thanks\n    must_match: ['Thanks']\n"
                    "  - name: no_promise\n    must_not_match: ['guarantee']\n", encoding="utf-8")
    policies = load_rules(path)
    answers = {1: ("We guarantee it.", "Thanks for asking."), 2: ("Thanks.", "Thanks, guaranteed!"),
               3: ("Thanks, I guarantee it.", "Sure.")}
    followed = rules_followed(answers, policies)
    assert followed == {1: (0.0, 2.0), 2: (2.0, 1.0), 3: (1.0, 1.0)}
    rules = judge_result("rules", followed, votes, measure="rules followed")
    assert (rules.counts, rules.agreed, rules.comparable) == (Counts(wins=1, losses=1, ties=1), 2, 4)


def test_project_summary_with_both_judges(store, tmp_path):
    rows = [(_prompt(f"q{i}"), "Old answer, I guarantee it.", f"New answer {i}. Thanks!") for i in range(4)]
    p = store.add_head_to_head("eval", OLD, NEW, rows, overlap=2).project
    u, v = _users(store, 2)
    _judge_everything(store, u, p, lambda q: "challenger")
    _judge_everything(store, v, p, lambda q: {"q0": "baseline", "q1": "tie"}.get(q, "challenger"))
    path = tmp_path / "rules.yaml"
    path.write_text("policies:\n  - name: thanks\n    must_match: ['Thanks']\n", encoding="utf-8")
    from alignment.evaluation.rules import load_rules

    summary = project_summary(store, p, policies=load_rules(path), policies_name="rules.yaml")
    assert summary.counts == Counts(wins=6, losses=1, ties=1) and summary.win_rate == pytest.approx(6.5 / 8)
    assert [j.name for j in summary.judges] == ["rules"] and summary.notes[0].startswith("no reward-model scores")
    rules = summary.judges[0]
    assert (rules.counts, rules.comparable, rules.agreed, rules.means) == (Counts(wins=4), 7, 6, (0.0, 1.0))
    # Reward-model scores of the candidates (as `align feedback score` stores them): the baseline higher on q0.
    scores = {}
    for item in store.project_items(p.id):
        base, chal = sides(item, p)
        scores[base.id], scores[chal.id] = (1.0, 0.0) if item.prompt[0]["content"] == "q0" else (0.0, 1.0)
    store.replace_scores(p.id, scores, reward_model="/models/rm", weights_sha256="9" * 64)
    summary = project_summary(store, p, policies=load_rules(path), policies_name="rules.yaml")
    rm = summary.judges[1]
    assert (rm.name, rm.counts, rm.comparable, rm.agreed, rm.detail) == (
        "reward model", Counts(wins=3, losses=1), 7, 6, f"/models/rm (sha256 {'9' * 12}...)")
    text = "\n".join(format_summary(summary))
    assert "challenger runs/r2 vs baseline runs/r1" in text and "8 votes: 6 wins, 1 losses, 1 ties" in text
    assert "win rate 0.812  95% CI [" in text and "decisive votes 6/7 = 0.857" in text
    assert "reward model  4 prompts" in text and "0.857 (6/7 decisive votes)" in text
    assert "annotator0" in text and not summary.notes
    with pytest.raises(StoreError, match="ranking project"):
        project_summary(store, store.ensure_project())


# ------------------------------------------------------------------------------------------------ creating one


def _answers_files(tmp_path: Path) -> tuple[Path, Path]:
    old = write_jsonl(tmp_path / "old.jsonl", [
        {"prompt": f"question {i}", "answer": f"Old answer {i}.", "model": "round-1"} for i in range(4)])
    new = write_jsonl(tmp_path / "new.jsonl", [  # another order, conversational answers, one identical answer
        {"prompt": [{"role": "user", "content": f"question {i}"}],
         "completion": [{"role": "assistant", "content": "Old answer 0." if i == 0 else f"Thanks! New answer {i}."}]}
        for i in (3, 2, 1, 0)])
    return old, new


def test_create_from_files_matches_answers_by_prompt(tmp_path):
    store = Store(tmp_path / "feedback.db")
    old, new = _answers_files(tmp_path)
    created = create_from_files(store, "eval", old, new, overlap=1)
    p = created.stored.project
    assert (p.baseline, p.challenger) == ("round-1", "imported:new.jsonl")  # the file's model, else its name
    assert (created.stored.added, created.stored.identical) == (4, 1)
    for item in store.project_items(p.id)[1:]:
        base, chal = sides(item, p)
        number = item.prompt[0]["content"].split()[-1]
        assert (base.text, chal.text) == (f"Old answer {number}.", f"Thanks! New answer {number}.")
        assert chal.model_sha256 == "" and base.generation == {}
    # Problems name the file, the line and the field, and store nothing.
    write_jsonl(tmp_path / "short.jsonl", [{"prompt": f"question {i}", "answer": "x"} for i in (0, 1, 2, 9)])
    with pytest.raises(AlignError, match=r"short.jsonl:4, field 'prompt': this prompt has no answer in"):
        create_from_files(store, "other", old, tmp_path / "short.jsonl")
    write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "question 0", "answer": " "}])
    with pytest.raises(AlignError, match=r"blank.jsonl:1, field 'answer': the answer is empty"):
        create_from_files(store, "other", old, tmp_path / "blank.jsonl")
    write_jsonl(tmp_path / "twice.jsonl", [{"prompt": "question 0", "answer": "a"}, {"prompt": "question 0",
                                                                                        "answer": "b"}])
    with pytest.raises(AlignError, match=r"twice.jsonl:2, field 'prompt': the same prompt as line 1"):
        create_from_files(store, "other", old, tmp_path / "twice.jsonl")
    write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "question 0", "answer": "a", "model": "m1"},
                                           {"prompt": "question 1", "answer": "b", "model": "m2"}])
    with pytest.raises(AlignError, match=r"mixed.jsonl:2, field 'model'"):
        create_from_files(store, "other", old, tmp_path / "mixed.jsonl")
    write_jsonl(tmp_path / "noanswer.jsonl", [{"prompt": "question 0", "text": "a"}])
    with pytest.raises(AlignError, match=r"noanswer.jsonl, field 'answer'"):
        create_from_files(store, "other", old, tmp_path / "noanswer.jsonl")
    with pytest.raises(AlignError, match="name the two sides apart"):
        create_from_files(store, "other", old, old)
    assert store.project("other") is None


def test_cli_creates_and_reports_a_head_to_head(tmp_path, capsys):
    db = tmp_path / "feedback.db"
    store = Store(db)
    old, new = _answers_files(tmp_path)
    assert main(["feedback", "h2h", "create", "--store", str(db), "--project", "r2-vs-r1", "--baseline-answers",
                 str(old), "--challenger-answers", str(new), "--challenger-name", "round-2", "--overlap", "2"]) == 0
    out = capsys.readouterr().out
    assert "project r2-vs-r1: challenger round-2 vs baseline round-1: 4 prompt(s) added (1 answered identically" in out
    p = store.project("r2-vs-r1")
    u, v = _users(store, 2)
    _judge_everything(store, u, p, lambda q: "challenger")
    _judge_everything(store, v, p, lambda q: "baseline" if q == "question 1" else "both_bad")
    rules = tmp_path / "rules.yaml"
    rules.write_text("policies:\n  - name: thanks\n    must_match: ['Thanks']\n", encoding="utf-8")
    assert main(["feedback", "h2h", "report", "--store", str(db), "--project", "r2-vs-r1", "--policies",
                 str(rules)]) == 0
    out = capsys.readouterr().out
    assert "prompts: 3 compared, 3 judged by 2 annotators; 1 more answered identically" in out
    assert "6 votes: 3 wins, 1 losses, 0 ties, 2 both bad" in out and "win rate 0.667" in out
    assert re.search(r"\nrules +3 prompts +3 +0 +0 +1\.000  0\.750 \(3/4 decisive votes\)\n", out), out
    assert "note: no reward-model scores" in out
    # One-line errors, no traceback.
    for argv, message in (
            (["report", "--project", "nope"], "error: no project 'nope' in"),
            (["report", "--project", "default"], "is a ranking project, not a head-to-head"),
            (["create", "--project", "x", "--baseline", "a", "--baseline-answers", str(old)], "not both"),
            (["create", "--project", "x", "--baseline", "a"], "missing --challenger, --prompts"),
            (["create", "--project", "x"], "missing --baseline-answers, --challenger-answers"),
            (["create", "--project", "r2-vs-r1", "--baseline-answers", str(old), "--challenger-answers", str(new)],
             "compares 'round-2' (challenger) with 'round-1' (baseline), not 'imported:new.jsonl'")):
        store.ensure_project("default")
        assert main(["feedback", "h2h", *argv[:1], "--store", str(db), *argv[1:]]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert main(["feedback", "h2h", "report", "--store", str(tmp_path / "none.db"), "--project", "x"]) == 2
    assert "no feedback store here" in capsys.readouterr().err


def _perturbed_copy(src: Path, out: Path) -> Path:
    """The tiny model with other weights: a second model whose greedy answers differ."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(src, out)
    model = AutoModelForCausalLM.from_pretrained(str(src))
    torch.manual_seed(7)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    model.save_pretrained(str(out))
    return out


def test_create_from_models_generates_both_sides(tmp_path, tiny_model_dir):
    from feedback_app.scoring import weights_sha256

    store = Store(tmp_path / "feedback.db")
    other = _perturbed_copy(tiny_model_dir, tmp_path / "other")
    prompts = write_jsonl(tmp_path / "heldout.jsonl", [{"prompt": f"How do I reset item {i}?"} for i in range(3)]
                          + [{"prompt": "How do I reset item 0?"}])  # a repeated prompt is generated once
    # Greedy (the default), the tiny random model answers only special tokens: every prompt has an empty answer,
    # none can be judged, and nothing is stored.
    with pytest.raises(StoreError, match="each of the 3 prompt\\(s\\) got an empty answer"):
        create_from_models(store, "eval", prompts, tiny_model_dir, other, max_new_tokens=6)
    assert store.project("eval") is None
    # Sampled, with a seed: answers with text.
    sampled = {"temperature": 1.0, "max_new_tokens": 6, "batch_size": 2, "seed": 3}
    created = create_from_models(store, "eval", prompts, tiny_model_dir, other, **sampled)
    p, (base, chal) = created.stored.project, created.sides
    assert (p.baseline, p.challenger) == (str(tiny_model_dir), str(other))
    assert created.stored.added + len(created.skipped) == 3 and created.stored.added >= 2
    assert base.sha256 == weights_sha256(tiny_model_dir.resolve(), "model") != chal.sha256
    assert base.generation == {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6, "seed": 3}
    for item in store.project_items(p.id):
        for c in item.candidates:
            assert (c.model_path, c.model_sha256) in {(base.path, base.sha256), (chal.path, chal.sha256)}
    # Both sides sample with the same seed: the same model answers the same, so an A/A comparison has only
    # identical answers.
    again = create_from_models(store, "a-a", prompts, tiny_model_dir, tiny_model_dir, baseline_name="one",
                               challenger_name="two", **sampled)
    assert again.stored.identical == again.stored.added == 3 - len(again.skipped)
    assert all(len(item.candidates) == 1 for item in store.project_items(again.stored.project.id))
    # Run again into the same project: every prompt is already there, nothing is generated or stored twice; the
    # rules given are stored with it all the same.
    rules = tmp_path / "rules.yaml"
    rules.write_text("policies:\n  - name: thanks\n    must_match: ['Thanks']\n", encoding="utf-8")
    rerun = create_from_models(store, "eval", prompts, tiny_model_dir, other, policies=rules, **sampled)
    assert (rerun.stored.added, rerun.stored.already_present) == (0, created.stored.added)
    assert rerun.stored.project == store.project("eval") and rerun.stored.project.policies_name == "rules.yaml"
    # A bad policies file is refused before any model loads (these directories do not exist).
    rules.write_text("policies:\n  - name: thanks\n    must_macth: ['Thanks']\n", encoding="utf-8")
    with pytest.raises(AlignError, match=r"rules.yaml:3, field 'policies\[0\].must_macth'"):
        create_from_models(store, "x", prompts, tmp_path / "none", tmp_path / "nothing", policies=rules)
    # Refused before any model loads.
    with pytest.raises(StoreError, match="ranking project"):
        create_from_models(store, store.ensure_project().name, prompts, tiny_model_dir, other)
    with pytest.raises(AlignError, match="--max-new-tokens"):
        create_from_models(store, "x", prompts, tiny_model_dir, other, max_new_tokens=0)
    with pytest.raises(AlignError, match="both"):
        create_from_models(store, "x", prompts, tiny_model_dir, tiny_model_dir)
    assert store.project("x") is None


# ------------------------------------------------------------------------------------------------ the pipeline report


def test_the_pipeline_report_shows_the_experts_head_to_head(tmp_path):
    from alignment.pipeline import head_to_head_lines, load_pipeline
    from alignment.report import write_report

    store = Store(tmp_path / "feedback.db")
    rows = [(_prompt(f"q{i}"), f"Old answer {i}.", f"New answer {i}. Thanks!") for i in range(4)]
    p = store.add_head_to_head("eval-r2", OLD, NEW, rows, overlap=1).project
    (u,) = _users(store, 1)
    _judge_everything(store, u, p, lambda q: {"q2": "baseline", "q3": "tie"}.get(q, "challenger"))
    store.close()
    (tmp_path / "rules.yaml").write_text("policies:\n  - name: thanks\n    must_match: ['Thanks']\n", encoding="utf-8")
    recipe = tmp_path / "pipeline.yaml"
    recipe.write_text("name: r2\nphases:\n  - {name: sft, kind: sft, recipe: sft.yaml}\n"
                      "evaluation:\n  policies: rules.yaml\n  head_to_head: feedback.db#eval-r2\n", encoding="utf-8")
    cfg = load_pipeline(recipe, [])
    assert cfg.evaluation.head_to_head == f"{tmp_path / 'feedback.db'}#eval-r2"  # relative to the recipe
    run = tmp_path / "run"
    run.mkdir()
    page = write_report(run, cfg, {}, head_to_head=head_to_head_lines(cfg)).read_text(encoding="utf-8")
    block = html.unescape(re.search(r'<pre id="head-to-head">(.*?)</pre>', page, re.S).group(1))
    # 2 wins, 1 loss, 1 tie: (2 + 1/2) / 4; the rules prefer the challenger on every prompt.
    assert "4 votes: 2 wins, 1 losses, 1 ties" in block and "win rate 0.625" in block
    assert re.search(r"rules\s+4 prompts\s+4\s+0\s+0\s+1\.000", block)

    for spec, why in (("feedback.db#nope", "the store has no project 'nope'"),
                      ("missing.db#eval-r2", "no feedback store at")):
        cfg.evaluation.head_to_head = str(tmp_path / spec)
        page = write_report(run, cfg, {}, head_to_head=head_to_head_lines(cfg)).read_text(encoding="utf-8")
        assert why in html.unescape(page)
    assert "head-to-head" not in write_report(run, cfg, {}).read_text(encoding="utf-8")  # no lines, no section


def test_a_head_to_head_recipe_names_a_project(tmp_path):
    from alignment.pipeline import load_pipeline

    recipe = tmp_path / "pipeline.yaml"
    recipe.write_text("name: r2\nphases:\n  - {name: sft, kind: sft, recipe: sft.yaml}\n"
                      "evaluation:\n  head_to_head: feedback.db\n", encoding="utf-8")
    with pytest.raises(AlignError, match="STORE#PROJECT") as e:
        load_pipeline(recipe, [])
    assert "evaluation.head_to_head" in str(e.value)
