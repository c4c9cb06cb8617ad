"""A head-to-head evaluation keeps its rules (Alembic revision h2h_policies): the policies YAML given when it is
created is stored with the project (text and file name), and every report judges with it -- the admin dashboard
(which names no file), ``align feedback h2h report`` without ``--policies`` (with it, the file given wins) and
the pipeline's report.

Every store test runs on SQLite and, when ALIGN_TEST_POSTGRES_URL is set, on PostgreSQL.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, update

from alignment.cli import main
from alignment.errors import AlignError
from feedback_app import migrations
from feedback_app.dashboard import h2h_report_html
from feedback_app.headtohead import Counts, create_from_files, project_summary
from feedback_app.store import Store, StoreError, projects
from tests.app.test_feedback_store import _postgres_url, _prompt, _users
from tests.app.test_headtohead import NEW, OLD, _answers_files, _judge_everything
from tests.app.test_migrations import _old_store
from tests.conftest import downgrade_store

# Two rules: an answer thanks the customer, and promises nothing.
RULES = ("policies:\n"
         "  - name: thanks\n"
         "    must_match: ['Thanks']\n"
         "  - name: no_guarantee\n"
         "    description: never <promise> an outcome & never guarantee one\n"
         "    must_not_match: ['guarantee']\n")
# The same rules, misspelt on line 6: the policy would check nothing it should.
BAD_RULES = RULES.replace("must_not_match", "must_not_macth")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "feedback.db" if request.param == "sqlite" else _postgres_url())
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def _write(path: Path, content: str) -> Path:
    path.write_text(content, encoding="utf-8")
    return path


def _policies_columns(url: str) -> set[str]:
    engine = create_engine(url)
    with engine.connect() as c:
        found = {col["name"] for col in inspect(c).get_columns("projects")} & {"policies_yaml", "policies_name"}
    engine.dispose()
    return found


# ------------------------------------------------------------------------------------------------ the revision


def test_the_revision_upgrades_a_schema_6_store_and_its_downgrade_undoes_it(kind, tmp_path):
    url = _old_store(kind, tmp_path)  # the committed store of schema 6, from before Alembic
    assert _policies_columns(url) == set()
    store = Store(url, create=False)
    try:
        assert _policies_columns(url) == {"policies_yaml", "policies_name"}
        eval_, support = store.project("eval"), store.project("support")
        # Every project of the older store has no rules, and the reports read as they did.
        assert [(p.policies_yaml, p.policies_name) for p in (eval_, support)] == [("", ""), ("", "")]
        assert "rules" not in [j.name for j in project_summary(store, eval_).judges]
        store.set_project_policies(eval_.id, RULES, "rules.yaml")
        assert store.project("eval").policies_name == "rules.yaml"
        # The downgrade drops the columns (and the rules with them), the rows stay; the schema's next open
        # upgrades it again.
        with store.schema_write() as c:
            command.downgrade(migrations.config(c), migrations.BASELINE)
        assert _policies_columns(url) == set()
    finally:
        store.close()
    store = Store(url, create=False)
    try:
        p = store.project("eval")
        assert (p.baseline, p.challenger, p.policies_yaml, p.policies_name) == ("sft-v1", "dpo-v2", "", "")
        downgrade_store(store, "5")  # the tests' helper: through this revision's downgrade, then the legacy steps
    finally:
        store.close()
    Store(url, create=False).close()
    assert _policies_columns(url) == {"policies_yaml", "policies_name"}


# ------------------------------------------------------------------------------------------------ setting them


def test_creating_with_policies_stores_their_text_and_file_name(store, tmp_path):
    old, new = _answers_files(tmp_path)
    rules = _write(tmp_path / "rules.yaml", RULES)
    p = create_from_files(store, "eval", old, new, policies=rules).stored.project
    assert (p.policies_yaml, p.policies_name) == (RULES, "rules.yaml")  # the text as written, the name alone
    assert store.project("eval") == p
    # Extending the evaluation: no policies keep the stored ones, others replace them.
    assert create_from_files(store, "eval", old, new).stored.project.policies_name == "rules.yaml"
    other = _write(tmp_path / "other.yaml", "policies:\n  - name: short\n    must_not_match: ['.{200}']\n")
    extended = create_from_files(store, "eval", old, new, policies=str(other)).stored
    assert (extended.already_present, extended.project.policies_name) == (4, "other.yaml")
    # The store's setter: replace, clear; checked as a file is.
    assert store.set_project_policies(p.id, RULES, "rules.yaml").policies_yaml == RULES
    cleared = store.set_project_policies(p.id, "", "ignored")
    assert (cleared.policies_yaml, cleared.policies_name) == ("", "") and store.project(p.id) == cleared
    with pytest.raises(AlignError, match=r"^typed.yaml:6, field 'policies\[1\].must_not_macth': unknown key"):
        store.set_project_policies(p.id, BAD_RULES, "typed.yaml")
    with pytest.raises(StoreError, match="ranking project"):
        store.set_project_policies(store.ensure_project("ranking").id, RULES, "rules.yaml")
    with pytest.raises(StoreError, match="no project 999"):
        store.set_project_policies(999, RULES, "rules.yaml")
    with pytest.raises(StoreError, match="up to 200000"):
        store.set_project_policies(p.id, RULES + "#" * 200_000, "rules.yaml")
    assert store.project(p.id).policies_yaml == ""
    # Straight through the store, the rules are checked before anything is written too.
    with pytest.raises(AlignError, match="typed.yaml:6"):
        store.add_head_to_head("other", OLD, NEW, [(_prompt("q"), "a", "b")], policies=(BAD_RULES, "typed.yaml"))
    assert store.project("other") is None


def test_a_bad_policies_file_writes_nothing(store, tmp_path):
    old, new = _answers_files(tmp_path)
    bad = _write(tmp_path / "bad.yaml", BAD_RULES)
    with pytest.raises(AlignError, match=re.escape(f"{bad}:6, field 'policies[1].must_not_macth': unknown key")):
        create_from_files(store, "eval", old, new, policies=bad)
    with pytest.raises(AlignError, match="policies file not found"):
        create_from_files(store, "eval", old, new, policies=tmp_path / "absent.yaml")
    huge = _write(tmp_path / "huge.yaml", RULES + "#" * 200_000)
    with pytest.raises(AlignError, match=r"huge.yaml: 200\d+ characters; .* up to 200000"):
        create_from_files(store, "eval", old, new, policies=huge)
    assert store.project("eval") is None and store.list_projects() == []
    # Extending an evaluation with a bad file: no prompt added, the stored rules kept.
    p = create_from_files(store, "eval", old, new, policies=_write(tmp_path / "rules.yaml", RULES)).stored.project
    more = tmp_path / "more"
    more.mkdir()
    old2, new2 = _answers_files(more)
    old2.write_text(old2.read_text(encoding="utf-8").replace("question", "another question"), encoding="utf-8")
    new2.write_text(new2.read_text(encoding="utf-8").replace("question", "another question"), encoding="utf-8")
    with pytest.raises(AlignError, match="bad.yaml:6"):
        create_from_files(store, "eval", old2, new2, policies=bad)
    assert len(store.project_items(p.id)) == 4 and store.project(p.id).policies_name == "rules.yaml"


# ------------------------------------------------------------------------------------------------ the dashboard


def _hand_made(store: Store) -> int:
    """Four prompts whose answers the two rules judge: the challenger follows more of them on q0 and q2, fewer
    on q1, as many on q3; two annotators judge them. Returns the project's id."""
    rows = [(_prompt("q0"), "Thanks, I guarantee it.", "Thanks, done."),  # rules followed 1 vs 2: win
            (_prompt("q1"), "Thanks, done.", "Done, I guarantee it."),  # 2 vs 0: loss
            (_prompt("q2"), "Done.", "Thanks, done."),  # 1 vs 2: win
            (_prompt("q3"), "Okay.", "Sure.")]  # 1 vs 1: tie
    p = store.add_head_to_head("eval", OLD, NEW, rows, overlap=2).project
    u, v = _users(store, 2)
    _judge_everything(store, u, p, lambda q: "challenger")
    _judge_everything(store, v, p, lambda q: {"q0": "baseline", "q1": "baseline", "q2": "tie"}.get(q, "challenger"))
    return p.id


def test_the_dashboard_report_shows_the_stored_rules_judge(store):
    project_id = _hand_made(store)
    before = html.unescape(h2h_report_html(store, store.project(project_id)))
    assert not re.search(r"^rules ", before, re.M) and "note: no rules judge: the project stores no policies" in before
    p = store.set_project_policies(project_id, RULES, "team<rules> & co.yaml")
    page = h2h_report_html(store, p)
    assert "<rules>" not in page and "team&lt;rules&gt; &amp; co.yaml" in page  # escaped
    report = html.unescape(page)
    # Experts: u 4 wins; v 2 losses, 1 tie, 1 win: 5 wins, 2 losses, 1 tie of 8 votes.
    assert "8 votes: 5 wins, 2 losses, 1 ties, 0 both bad" in report
    # The rules: 2 wins (q0, q2), 1 loss (q1), 1 tie (q3): (2 + 1/2) / 4 = 0.625. Of the 7 decisive votes they
    # agree with u on q0 and q2 and with v on q1: 3/7 = 0.429; they tie on q3, which u and v both won.
    row = r"\nrules +4 prompts +2 +1 +1 +0\.625  0\.429 \(3/7 decisive votes; judge tied on 2\)\n"
    assert re.search(row, report), report
    assert ("  rules: team<rules> & co.yaml (2 rules, stored with the project): mean rules followed 1.25 (baseline), "
            "1.25 (challenger)") in report
    assert "no rules judge" not in report
    summary = project_summary(store, p)
    rules = summary.judges[0]
    assert (rules.counts, rules.comparable, rules.agreed, rules.judge_ties) == (Counts(2, 1, 1), 7, 3, 2)
    # Rules stored by an older release that this one no longer reads: a note, the rest of the report stands.
    with store.write() as c:
        c.execute(update(projects).where(projects.c.id == project_id).values(policies_yaml=BAD_RULES))
    report = html.unescape(h2h_report_html(store, store.project(project_id)))
    assert "note: the rules stored with the project no longer read: team<rules> & co.yaml (stored with the " \
           "project):6, field 'policies[1].must_not_macth'" in report
    assert "8 votes: 5 wins" in report and not re.search(r"^rules ", report, re.M)


# ------------------------------------------------------------------------------------------------ the CLI


def test_the_cli_stores_the_rules_and_its_report_uses_them(tmp_path, capsys):
    db = tmp_path / "feedback.db"
    store = Store(db)
    old, new = _answers_files(tmp_path)
    create = ["feedback", "h2h", "create", "--store", str(db), "--project", "r2-vs-r1", "--baseline-answers",
              str(old), "--challenger-answers", str(new), "--overlap", "2"]
    # A bad file: one line naming the file, line and field; nothing written.
    bad = _write(tmp_path / "bad.yaml", BAD_RULES)
    assert main([*create, "--policies", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {bad}:6, field 'policies[1].must_not_macth': unknown key 'must_not_macth'; did you mean " \
                  "'must_not_match'? (valid keys: name, description, must_match, must_not_match, ignore_case)\n"
    assert store.list_projects() == []
    rules = _write(tmp_path / "rules.yaml", "policies:\n  - name: thanks\n    must_match: ['Thanks']\n")
    assert main([*create, "--policies", str(rules)]) == 0
    assert "rules rules.yaml stored with the project" in capsys.readouterr().out
    rules.unlink()  # the report reads the stored text, not the file
    p = store.project("r2-vs-r1")
    u, v = _users(store, 2)
    _judge_everything(store, u, p, lambda q: "challenger")
    _judge_everything(store, v, p, lambda q: "baseline" if q == "question 1" else "both_bad")
    report = ["feedback", "h2h", "report", "--store", str(db), "--project", "r2-vs-r1"]
    assert main(report) == 0
    out = capsys.readouterr().out
    # The stored rules prefer the challenger (it thanks) on the 3 compared prompts; the experts' decisive votes:
    # u's 3 wins, v's loss on question 1.
    assert re.search(r"\nrules +3 prompts +3 +0 +0 +1\.000  0\.750 \(3/4 decisive votes\)\n", out), out
    assert "  rules: rules.yaml (1 rules, stored with the project): mean rules followed 0.00 (baseline)" in out
    # --policies: the file given wins, and the report says it replaced the stored rules.
    other = _write(tmp_path / "other.yaml", "policies:\n  - name: old\n    must_match: ['^Old']\n")
    assert main([*report, "--policies", str(other)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\nrules +3 prompts +0 +3 +0 +0\.000  0\.250 \(1/4 decisive votes\)\n", out), out
    assert f"  rules: {other} (1 rules): mean rules followed 1.00 (baseline), 0.00 (challenger)" in out
    assert "note: rules given for this report (" in out and "replace the ones stored with the project (rules.yaml)" \
        in out
    # The very rules the project stores, given again (a pipeline recipe's, a demo's): the same row, no note.
    same = _write(tmp_path / "same.yaml", "policies:\n  - name: thanks\n    must_match: ['Thanks']\n")
    assert main([*report, "--policies", str(same)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\nrules +3 prompts +3 +0 +0 +1\.000  0\.750 \(3/4 decisive votes\)\n", out), out
    assert "replace the ones stored" not in out
    with pytest.raises(SystemExit):
        main(["feedback", "h2h", "report", "--help"])
    assert "instead of the rules stored with the project" in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------------------------------------------------------ the pipeline


def test_the_pipeline_report_judges_with_the_stored_rules(tmp_path):
    from alignment.pipeline import head_to_head_lines, load_pipeline

    store = Store(tmp_path / "feedback.db")
    project_id = _hand_made(store)
    store.set_project_policies(project_id, RULES, "rules.yaml")
    store.close()
    recipe = _write(tmp_path / "pipeline.yaml", "name: r2\nphases:\n  - {name: sft, kind: sft, recipe: sft.yaml}\n"
                                                "evaluation:\n  head_to_head: feedback.db#eval\n")
    lines = "\n".join(head_to_head_lines(load_pipeline(recipe, [])))  # the recipe names no policies
    assert re.search(r"\nrules +4 prompts +2 +1 +1 +0\.625  0\.429 \(3/7 decisive votes", lines), lines
    assert "rules.yaml (2 rules, stored with the project)" in lines
