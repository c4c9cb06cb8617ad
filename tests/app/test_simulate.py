"""Simulated experts: the oracle as pure functions (hand-computed cases), and a run against a live app.

The end-to-end test starts ``align app`` as a subprocess on a free port (as ``tests/app/test_app_load.py``
does), fills two projects with the same prompts, lets three simulated annotators judge one of them without
noise (threads) and the other through the script with noise 1.0 (annotators taking turns), and checks the
store: every item judged by two distinct annotators, every acknowledged judgment stored, the stored ranks,
tags and corrections those of the oracle recomputed from the store's own texts.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from alignment.evaluation.rules import DomainRule, load_rules
from feedback_app import simulate as sim
from feedback_app.render import render_prompt, render_response
from feedback_app.store import Store, display_order, prompt_hash

REPO = Path(__file__).resolve().parents[2]

POLICIES = r"""
policies:
  - name: signoff
    must_match: ['(?m)^— Harborline Support\s*\Z']
  - name: disclaimer
    must_match: ['Not financial advice\.']
  - name: no_promise
    must_not_match: ['\bguarantee(?:d|s)?\b']
    ignore_case: true
"""


@pytest.fixture()
def policies(tmp_path: Path) -> list[DomainRule]:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICIES, encoding="utf-8")
    return load_rules(path)


class FixedRng(random.Random):
    """random() gives the listed values in turn; randrange(n) gives ``index`` (checked to be below n)."""

    def __init__(self, values: list[float], index: int = 0) -> None:
        super().__init__(0)
        self.values = list(values)
        self.index = index

    def random(self) -> float:
        return self.values.pop(0)

    def randrange(self, n: int) -> int:  # type: ignore[override]
        assert 0 <= self.index < n
        return self.index


SIGN = "\n\n— Harborline Support"
DISC = "\n\nNot financial advice."


# ------------------------------------------------------------------------------------------------ oracle


def test_rule_scores_count_the_rules_followed(policies: list[DomainRule]) -> None:
    texts = ["Let me check." + DISC + SIGN,  # all three
             "We guarantee it." + DISC + SIGN,  # breaks no_promise
             "Let me check.",  # follows no_promise only
             "Guaranteed!"]  # none
    assert sim.rule_scores(texts, policies) == [3, 2, 1, 0]


def test_order_candidates_by_score_then_bias_or_tie_key() -> None:
    scores = [2, 2, 2, 0]
    texts = ["aa", "aaaaa", "aaa", "a"]
    keys = ["b", "c", "a", "d"]
    # tie keys: a (slot 2) < b (slot 0) < c (slot 1); the lone 0-score answer last
    assert sim.order_candidates(scores, keys, texts) == ([2, 0, 1, 3], [None])
    assert sim.order_candidates(scores, keys, texts, lambda: "longer") == ([1, 2, 0, 3], ["longer"])
    assert sim.order_candidates(scores, keys, texts, lambda: "shorter") == ([0, 2, 1, 3], ["shorter"])
    assert sim.order_candidates(scores, keys, texts, lambda: "first") == ([0, 1, 2, 3], ["first"])
    # the score beats any bias: the longest answer has the lowest score here
    assert sim.order_candidates([1, 0, 1], ["a", "b", "c"], ["x", "xxxxxxx", "xx"], lambda: "longer")[0] == [2, 0, 1]


def test_each_tied_group_draws_its_own_bias_best_score_first() -> None:
    scores = [1, 0, 1, 0, 5]
    texts = ["x", "yyy", "xxxx", "y", "z"]
    keys = ["d", "a", "c", "b", "e"]
    draws = iter(["longer", None])
    order, used = sim.order_candidates(scores, keys, texts, lambda: next(draws))
    # score 5 alone (no draw); score 1: longer -> slot 2 (4 chars) before slot 0; score 0: tie keys a < b
    assert order == [4, 2, 0, 1, 3]
    assert used == ["longer", None]


def test_a_bias_leaves_equal_lengths_to_the_tie_key() -> None:
    assert sim.order_candidates([1, 1, 1], ["z", "y", "x"], ["ab", "cd", "e"], lambda: "longer")[0] == [1, 0, 2]


def test_pick_bias_walks_the_cumulative_probabilities() -> None:
    biases = [("longer", 0.3), ("first", 0.2)]
    assert sim.pick_bias(FixedRng([0.1]), biases) == "longer"
    assert sim.pick_bias(FixedRng([0.3]), biases) == "first"
    assert sim.pick_bias(FixedRng([0.49]), biases) == "first"
    assert sim.pick_bias(FixedRng([0.5]), biases) is None
    assert sim.pick_bias(FixedRng([0.0]), [("longer", 0.0)]) is None
    assert sim.pick_bias(FixedRng([0.0]), []) is None


def test_add_noise_swaps_one_adjacent_pair_with_its_probability() -> None:
    assert sim.add_noise([2, 0, 1, 3], FixedRng([0.1], index=1), 0.15) == ([2, 1, 0, 3], 1)
    assert sim.add_noise([2, 0, 1, 3], FixedRng([0.2], index=1), 0.15) == ([2, 0, 1, 3], None)
    assert sim.add_noise([2, 0, 1, 3], FixedRng([0.999], index=2), 1.0) == ([2, 0, 3, 1], 2)
    assert sim.add_noise([2, 0, 1, 3], FixedRng([0.0]), 0.0) == ([2, 0, 1, 3], None)
    assert sim.add_noise([0], FixedRng([0.0]), 1.0) == ([0], None)  # nothing to swap


def test_ranks_from_order() -> None:
    assert sim.ranks_from_order([2, 0, 1, 3]) == (2, 3, 1, 4)


def test_problem_tags_use_the_projects_tags_only() -> None:
    default = ["factual error", "unsafe", "policy violation", "other"]
    assert sim.problem_tags(["signoff", "no_promise"], default) == ("policy violation",)
    assert sim.problem_tags(["signoff", "no_promise"], ["Signoff", "policy violation"]) == ("Signoff",
                                                                                           "policy violation")
    assert sim.problem_tags(["signoff"], ["unsafe", "other"]) == ()
    assert sim.problem_tags([], default) == ()


@pytest.mark.parametrize("pattern, expected", [
    (r"(?m)^— Harborline Support\s*\Z", ("— Harborline Support", "end")),
    (r"Not financial advice\.", ("Not financial advice.", "anywhere")),
    (r"(?i)see\s+a doctor", ("see a doctor", "anywhere")),
    (r"\AHello there", ("Hello there", "start")),
    (r"\bSee our FAQ\b", ("See our FAQ", "anywhere")),
    (r"^Dear customer,", ("Dear customer,", "start")),
    (r"(?m)^Thanks$", ("Thanks", "anywhere")),
    (r"Regards$", ("Regards", "end")),
    (r"\bguarantee(?:d|s)?\b", None),
    (r"\d+ days", None),
    (r"colou?r", None),
    (r"a+b", None),
    (r"^Only this$", None),
    (r"[Tt]hanks", None),
])
def test_fixed_text_recognises_literal_patterns_only(pattern: str, expected: tuple[str, str] | None) -> None:
    assert sim.fixed_text(pattern) == expected


def test_repair_inserts_required_lines_and_checks_the_result(policies: list[DomainRule]) -> None:
    assert sim.repair("Let me check.", policies) == "Let me check." + DISC + SIGN
    # a sign-off the answer has stays last: the disclaimer goes before it
    assert sim.repair("Let me check." + SIGN, policies) == "Let me check." + DISC + SIGN
    assert sim.repair("We guarantee it." + DISC + SIGN, policies) is None  # a forbidden phrase: no fixed string
    assert sim.repair("Let me check." + DISC + SIGN, policies) is None  # nothing to repair


def test_judge_ranks_tags_and_corrects(policies: list[DomainRule]) -> None:
    tags = ["factual error", "policy violation", "other"]
    good = "Let me check." + DISC + SIGN
    texts = ["We guarantee it." + DISC + SIGN, good, "Guaranteed!"]
    d = sim.judge(texts, policies, sim.Expert("ann"), "item-1", tag_choices=tags)
    assert d.order == (1, 0, 2) and d.ranks == (2, 1, 3)
    assert d.broken == (("no_promise",), (), ("signoff", "disclaimer", "no_promise"))
    assert d.tags == (("policy violation",), (), ("policy violation",))
    assert (d.correction_of, d.correction) == (None, "")  # one answer follows every rule: nothing to correct
    d = sim.judge(["Let me check.", good], policies, sim.Expert("ann"), "item-1", tag_choices=tags)
    assert (d.order, d.correction_of) == ((1, 0), None)  # not even when a worse one could be repaired

    # every answer breaks a rule: the best one that fixed strings repair is corrected, here the second best
    texts = ["Let me check.", "We guarantee it." + DISC + SIGN, "Guaranteed!"]
    d = sim.judge(texts, policies, sim.Expert("ann"), "item-2", tag_choices=tags)
    assert d.order == (1, 0, 2)
    assert (d.correction_of, d.correction) == (0, "Let me check." + DISC + SIGN)
    # ... but never from a text that is not exactly what the page showed
    d = sim.judge(texts, policies, sim.Expert("ann"), "item-2", tag_choices=tags, exact=[False, True, True])
    assert (d.correction_of, d.correction) == (None, "")


def test_head_to_head_votes_more_rules_better_equal_tie_or_both_bad(policies: list[DomainRule]) -> None:
    good = "Let me check." + DISC + SIGN  # 3 rules
    half = "Let me check." + SIGN  # 2 rules
    poor = "We guarantee it."  # 0 rules
    tags = ["policy violation"]
    d = sim.judge([half, good], policies, sim.Expert("ann"), "i1", tag_choices=tags, head_to_head=True)
    assert (d.order, d.ranks, d.unacceptable, d.swapped) == ((1, 0), (2, 1), False, None)
    assert d.tags == (("policy violation",), ()) and (d.correction_of, d.correction) == (None, "")
    d = sim.judge([good, good + " "], policies, sim.Expert("ann"), "i2", head_to_head=True)
    assert (d.ranks, d.unacceptable) == ((1, 1), False)  # both follow every rule: a tie
    d = sim.judge([half, "Sure." + SIGN], policies, sim.Expert("ann", noise=1.0), "i3", head_to_head=True)
    assert (d.ranks, d.unacceptable, d.swapped) == ((1, 1), True, None)  # equal but breaking a rule: both bad
    d = sim.judge([poor, good], policies, sim.Expert("ann", noise=1.0), "i4", head_to_head=True)
    assert (d.ranks, d.swapped) == ((1, 2), 0)  # noise picks the worse answer
    # about 15% of decisive votes flipped at noise 0.15, the same count in every run
    flips = sum(sim.judge([poor, good], policies, sim.Expert("ann", seed=2, noise=0.15), f"n{i}",
                          head_to_head=True).ranks == (1, 2) for i in range(200))
    assert 15 <= flips <= 45
    with pytest.raises(ValueError, match="two answers"):
        sim.judge([good, half, poor], policies, sim.Expert("ann"), "i5", head_to_head=True)


def test_judge_is_deterministic_and_per_annotator(policies: list[DomainRule]) -> None:
    texts = ["One.", "Two two.", "Three three three.", "Four."]  # all tied: score 1 (no_promise)
    orders = {}
    for name in ("ann1", "ann2"):
        orders[name] = [sim.judge(texts, policies, sim.Expert(name, seed=3), f"item-{i}").order for i in range(20)]
        again = [sim.judge(texts, policies, sim.Expert(name, seed=3), f"item-{i}").order for i in range(20)]
        assert orders[name] == again
    assert orders["ann1"] != orders["ann2"]
    other_seed = [sim.judge(texts, policies, sim.Expert("ann1", seed=4), f"item-{i}").order for i in range(20)]
    assert other_seed != orders["ann1"]
    # the tie-break follows the text, not the slot it is shown in
    d = sim.judge(texts, policies, sim.Expert("ann1", seed=3), "item-0")
    shown = texts[::-1]
    d_rev = sim.judge(shown, policies, sim.Expert("ann1", seed=3), "item-0")
    assert [texts[i] for i in d.order] == [shown[i] for i in d_rev.order]


def test_noise_one_always_swaps_and_zero_never(policies: list[DomainRule]) -> None:
    texts = ["One.", "Two." + SIGN, "Three." + DISC + SIGN, "Guaranteed."]
    swaps = 0
    for i in range(200):
        clean = sim.judge(texts, policies, sim.Expert("ann", seed=1), f"item-{i}")
        assert clean.swapped is None
        noisy = sim.judge(texts, policies, sim.Expert("ann", seed=1, noise=1.0), f"item-{i}")
        j = noisy.swapped
        assert j is not None
        expected = list(clean.order)
        expected[j], expected[j + 1] = expected[j + 1], expected[j]
        assert list(noisy.order) == expected
        swaps += sim.judge(texts, policies, sim.Expert("ann", seed=1, noise=0.15), f"item-{i}").swapped is not None
    assert 15 <= swaps <= 45  # about 15% of 200 (a fixed seed: this count never changes between runs)


def test_bias_orders_ties_with_its_probability(policies: list[DomainRule]) -> None:
    texts = ["Short.", "A somewhat longer answer.", "The longest answer of the three, by far."]
    always = [sim.judge(texts, policies, sim.Expert("ann", biases=(("longer", 1.0),)), f"i{i}").order
              for i in range(50)]
    assert set(always) == {(2, 1, 0)}
    never = [sim.judge(texts, policies, sim.Expert("ann", biases=(("longer", 0.0),)), f"i{i}").order
             for i in range(50)]
    assert len(set(never)) > 2  # the random draw: several orders
    half = [sim.judge(texts, policies, sim.Expert("ann", biases=(("longer", 0.5),)), f"i{i}").biases_used[0]
            for i in range(200)]
    assert 70 <= half.count("longer") <= 130


def test_bias_and_expert_arguments() -> None:
    assert sim.parse_bias("longer=0.3") == (None, "longer", 0.3)
    assert sim.parse_bias("ann1:first=1") == ("ann1", "first", 1.0)
    for bad in ("loud=0.5", "longer=2", "longer", "longer=x", "=0.5"):
        with pytest.raises(ValueError):
            sim.parse_bias(bad)
    experts = sim.make_experts(["a", "b"], seed=2, noise=0.1,
                               biases=[(None, "longer", 0.3), ("b", "longer", 0.6), ("b", "first", 0.2)])
    assert experts[0] == sim.Expert("a", 2, 0.1, (("longer", 0.3),))
    assert experts[1] == sim.Expert("b", 2, 0.1, (("longer", 0.6), ("first", 0.2)))
    with pytest.raises(ValueError, match="more than 1"):
        sim.make_experts(["a"], biases=[(None, "longer", 0.7), (None, "first", 0.5)])
    with pytest.raises(ValueError, match="not in the run"):
        sim.make_experts(["a"], biases=[("zed", "longer", 0.5)])
    with pytest.raises(ValueError):
        sim.Expert("a", noise=1.5)


# ------------------------------------------------------------------------------------------------ the page


@pytest.mark.parametrize("source, exact", [
    ("Plain answer.\n\n— Harborline Support", True),
    ("a\nb  \nc", True),
    ("We <b>guarantee</b> & \"promise\"", True),
    ("**Bold** and `code`\n\n- one\n- two\n\n1. first\n2. second", True),
    ("# Title\n\nSee [the docs](https://example.org) and *this*.\n\n```python\nx = 1\n```", True),
    ("| a | b |\n|---|---|\n| 1 | 2 |", False),
    ("> quoted", False),
])
def test_answers_are_read_back_from_the_page(source: str, exact: bool) -> None:
    text, ok = sim.answer_from_html(render_response("B", source))
    assert ok is exact
    if exact:
        assert text == source
    else:
        assert text  # something to score, though not the source


def test_prompts_are_read_back_exactly() -> None:
    prompt = [{"role": "system", "content": "Be <careful> & \"kind\""}, {"role": "user", "content": "Hi\nthere?"}]
    assert sim.prompt_from_html(render_prompt(prompt)) == prompt


def test_the_cookie_name_is_the_servers() -> None:
    from feedback_app.auth import COOKIE

    assert sim.COOKIE == COOKIE


def test_parse_view_reads_updates_and_skips() -> None:
    outputs = {"prompt": 0, "response-0": 1, "response-1": 2, "rank-0": 3, "rank-1": 4, "tags-0": 5, "message": 6}
    data = ["<p>q</p>", "<a>", "<b>", {"__type__": "update", "choices": [["1", "1"], ["2", "2"]]},
            {"__type__": "update", "choices": [["1", "1"], ["2", "2"]]},
            {"__type__": "update", "choices": [["unsafe", "unsafe"]], "value": []}, "Saved."]
    view = sim.parse_view(data, outputs)
    assert view == sim.View("<p>q</p>", ("<a>", "<b>"), ("unsafe",), "Saved.", None, None)
    skip = {"__type__": "update"}
    refused = sim.parse_view([skip, skip, skip, skip, skip, skip, "**Not saved:** x"], outputs)
    assert refused == sim.View(message="**Not saved:** x")
    assert sim.merge_view(view, refused) == sim.View("<p>q</p>", ("<a>", "<b>"), ("unsafe",), "**Not saved:** x")


# ------------------------------------------------------------------------------------------------ the script


def _script():
    spec = importlib.util.spec_from_file_location("simulate_experts", REPO / "scripts" / "simulate_experts.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["simulate_experts"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args, message", [
    (["--annotators", "2", "--create-users"], "--create-users needs --store"),
    (["--annotators", "2", "--store", "x.db"], "only used with --create-users"),
    (["--annotators", "2", "--bias", "loud=0.5"], "--bias takes"),
    (["--annotators", "2", "--noise", "1.5"], "noise is a probability"),
    (["--annotators", "2"], "no password for sim-expert01, sim-expert02"),
])
def test_script_refuses_bad_arguments(args: list[str], message: str, policies: list[DomainRule], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALIGN_SIM_PASSWORD", raising=False)
    (tmp_path / "p.yaml").write_text(POLICIES, encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        _script().main(["--url", "http://127.0.0.1:9", "--policies", str(tmp_path / "p.yaml"), *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_script_creates_missing_accounts_and_keeps_existing_ones(tmp_path: Path) -> None:
    script = _script()
    db = str(tmp_path / "fb.db")
    Store(db).add_user("old", "admin", "old-pass-123")
    creds = script.create_users(db, [("new1", None), ("new2", "given-pass-1"), ("old", "old-pass-123")])
    assert [n for n, _ in creds] == ["new1", "new2", "old"]
    assert len(creds[0][1]) >= 12 and creds[1][1] == "given-pass-1"
    store = Store(db)
    assert store.authenticate("new1", creds[0][1]) is not None
    assert store.authenticate("new2", "given-pass-1") is not None
    assert store.get_user("old").role == "admin"  # type: ignore[union-attr] - kept as it was
    with pytest.raises(SystemExit, match="give its password"):
        script.create_users(db, [("old", None)])  # exists, and no password to sign in with
    store.close()


# ------------------------------------------------------------------------------------------------ end to end

ANSWERS = [  # per prompt, three answers: every kind of rule break, ties, and one prompt nobody answers well
    ["Let me look into it for you." + DISC + SIGN, "Your claim is guaranteed." + DISC + SIGN, "I will check."],
    ["Please send the form." + DISC + SIGN, "Please send the form and a photo, if you have one." + DISC + SIGN,
     "Guaranteed payout."],
    ["I will check the policy.", "We guarantee the refund." + DISC + SIGN, "Guaranteed."],  # nobody follows all
    ["Short." + SIGN, "A longer answer with the sign-off." + SIGN, "Mid answer." + DISC],  # nobody either
    ["One." + DISC + SIGN, "Two." + DISC + SIGN, "Three." + DISC + SIGN],  # a three-way tie
]


def _fill(store: Store, name: str) -> int:
    project = store.ensure_project(name)
    store.update_project(project.id, candidates_per_item=3, overlap=2, assign_batch=2)
    prompts = [[{"role": "user", "content": f"Question {i}: about my claim?"}] for i in range(len(ANSWERS))]
    store.add_prompts(project.id, prompts, source="test")
    for prompt, answers in zip(prompts, ANSWERS):
        item_id = store.item_id_for_prompt(project.id, prompt)
        assert item_id is not None
        store.add_candidates(item_id, [(a, f"model-{j}", {}) for j, a in enumerate(answers)])
    return project.id


def _expected(store: Store, policies: list[DomainRule], project_id: int, seed: int, noise: float) -> dict:
    """(annotator, item) -> the oracle's judgment from the store's own texts, in stored candidate ids."""
    project = store.project(project_id)
    assert project is not None
    out = {}
    for sj in store.latest_judgments(project_id):
        item = store.item(sj.item_id)
        assert item is not None
        order = display_order(sj.user_id, item)
        d = sim.judge([c.text for c in order], policies, sim.Expert(sj.user_name, seed=seed, noise=noise),
                      prompt_hash(item.prompt), tag_choices=project.tags)
        out[(sj.user_name, sj.item_id)] = (
            {c.id: r for c, r in zip(order, d.ranks)},
            {c.id: list(t) for c, t in zip(order, d.tags) if t},
            order[d.correction_of].id if d.correction_of is not None else None,
            d.correction)
    return out


def _stored(store: Store, project_id: int) -> dict:
    return {(sj.user_name, sj.item_id): (sj.judgment.ranks, sj.judgment.tags, sj.judgment.correction_of,
                                         sj.judgment.correction)
            for sj in store.latest_judgments(project_id)}


@pytest.mark.slow
def test_simulated_experts_judge_a_live_app(tmp_path: Path, policies: list[DomainRule]) -> None:
    from tests.app.test_app_load import app_load

    db = tmp_path / "feedback.db"
    store = Store(db)
    # "noisy" first: the app starts a new annotator in the first project with work, so both runs pick
    # their project through the page's project menu
    noisy, clean = _fill(store, "noisy"), _fill(store, "clean")
    accounts = [(f"expert{i}", f"expert-pass-{i}") for i in range(3)]
    for name, password in accounts:
        store.add_user(name, "annotator", password)
    (tmp_path / "policies.yaml").write_text(POLICIES, encoding="utf-8")
    server = app_load.Server(db, log=tmp_path / "server.log")
    try:
        server.start(timeout=300)
        # no noise, one thread per annotator
        result = sim.simulate(server.url, accounts, policies, seed=7, project="clean")
        assert result.errors == [], result.errors
        # noise 1.0 through the script, the annotators taking turns
        out = tmp_path / "noisy.jsonl"
        code = _script().main(["--url", server.url, "--policies", str(tmp_path / "policies.yaml"), "--seed", "7",
                               "--noise", "1.0", "--project", "noisy", "--threads", "1", "--out", str(out),
                               *[a for name, pw in accounts for a in ("--user", f"{name}:{pw}")]])
        assert code == 0, server.log()[-3000:]
    finally:
        server.stop()

    n_items = len(ANSWERS)
    # every item judged by exactly 2 distinct annotators; every acknowledged judgment stored, once
    for project_id in (clean, noisy):
        latest = store.latest_judgments(project_id)
        per_item = Counter(sj.item_id for sj in latest)
        assert len(per_item) == n_items and set(per_item.values()) == {2}
        assert all(sj.revision == 1 for sj in latest)
    assert len(result.submissions) == 2 * n_items
    stored_clean = _stored(store, clean)
    acked = Counter((s.annotator, s.item_key) for s in result.submissions)
    keys = {(name, prompt_hash(store.item(i).prompt)) for name, i in stored_clean}  # type: ignore[union-attr]
    assert set(acked) == keys and set(acked.values()) == {1}
    assert sum(1 for _ in out.open()) == 2 * n_items

    # without noise: exactly the oracle's ranks, tags and correction, recomputed from the store's texts
    expected_clean = _expected(store, policies, clean, seed=7, noise=0.0)
    assert stored_clean == expected_clean
    # prompts 2 and 3 have no answer that follows every rule: each annotator corrects one with fixed lines
    items = {i: store.item(i) for _, i in stored_clean}
    prompt_of = {i: int(item.prompt[0]["content"].split()[1].rstrip(":")) for i, item in items.items() if item}
    corrected = Counter(prompt_of[i] for (_, i), v in stored_clean.items() if v[3])
    assert corrected == {2: 2, 3: 2}
    for (_, i), (_, _, of, text) in stored_clean.items():
        texts = {c.id: c.text for c in items[i].candidates}  # type: ignore[union-attr]
        if prompt_of[i] == 2:
            assert (texts[of], text) == (ANSWERS[2][0], ANSWERS[2][0] + DISC + SIGN)
        elif prompt_of[i] == 3:  # the missing line added; a disclaimer goes before a sign-off the answer has
            assert text == texts[of].removesuffix(SIGN).removesuffix(DISC) + DISC + SIGN
    assert any(tags for v in stored_clean.values() for tags in v[1].values())

    # noise 1.0: every ranking differs from the noise-free oracle's, by one adjacent swap (the oracle with
    # the same noise reproduces it exactly)
    stored_noisy = _stored(store, noisy)
    assert stored_noisy == _expected(store, policies, noisy, seed=7, noise=1.0)
    noise_free = _expected(store, policies, noisy, seed=7, noise=0.0)
    for key, (ranks, *_rest) in stored_noisy.items():
        clean_ranks = noise_free[key][0]
        assert ranks != clean_ranks
        moved = [cid for cid in ranks if ranks[cid] != clean_ranks[cid]]
        assert len(moved) == 2 and abs(ranks[moved[0]] - ranks[moved[1]]) == 1
    store.close()
