"""`align data edge-cases` without a model: which answers fail, which prompts are kept, in what order, and the
settings refused before anything loads."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from alignment.errors import AlignError
from alignment.evaluation.edge_cases import (
    PromptOutcome,
    check_arguments,
    find_edge_cases,
    low_score_cutoff,
    write_prompts,
)


def _prompt(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _outcome(index: int, broken: list[list[str]], scores: list[float] | None = None) -> PromptOutcome:
    answers = [f"a{index}.{i}" for i in range(len(broken))]
    return PromptOutcome(prompt=_prompt(f"q{index}"), index=index, answers=answers, broken=broken, scores=scores or [])


def test_cutoff_threshold_is_strict_and_quantile_takes_the_lowest_share():
    assert low_score_cutoff([0.5, 1.0], threshold=1.0, quantile=None) < 1.0
    assert low_score_cutoff([0.5, 1.0], threshold=1.0, quantile=None) >= 0.5
    scores = [3.0, -1.0, 2.0, 0.0, 1.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert low_score_cutoff(scores, None, 0.2) == 0.0  # the 2 lowest of 10: -1 and 0
    assert low_score_cutoff(scores, None, 0.01) == -1.0  # at least one answer
    assert low_score_cutoff(scores, None, None) is None
    assert low_score_cutoff([], None, 0.5) is None


def test_rule_failures_rank_by_failure_rate_then_rules_broken():
    outcomes = [
        _outcome(0, [[], [], [], []]),                          # never fails: left out
        _outcome(1, [["signoff"], [], [], []]),                 # 1 in 4
        _outcome(2, [["signoff", "no_promise"], ["signoff"], [], []]),  # 2 in 4, 3 rules broken
        _outcome(3, [["signoff"], ["signoff"], [], []]),        # 2 in 4, 2 rules broken
        _outcome(4, [["x"], ["x"], ["x"], ["x"]]),              # always
    ]
    found = find_edge_cases(outcomes)
    assert [o.index for o in found] == [4, 2, 3, 1]
    assert [o.fail_rate for o in found] == [1.0, 0.5, 0.5, 0.25]
    assert [o.index for o in find_edge_cases(outcomes, min_fail_rate=0.25)] == [4, 2, 3]
    row = found[1].to_row()
    assert row["messages"] == _prompt("q2")
    assert row["edge_case"]["rules_broken"] == {"no_promise": 1, "signoff": 2}
    assert row["edge_case"]["fail_rate"] == 0.5
    assert row["edge_case"]["example_answer"] == "a2.0"  # a failing one
    assert row["edge_case"]["source_index"] == 2


def test_low_scores_fail_answers_and_order_ties_by_mean_score():
    outcomes = [
        _outcome(0, [[], []], [5.0, 6.0]),
        _outcome(1, [[], []], [-3.0, 4.0]),   # one answer among the 2 lowest of 8
        _outcome(2, [[], []], [-2.0, 7.0]),   # one answer among the 2 lowest
        _outcome(3, [[], []], [1.0, 2.0]),
    ]
    found = find_edge_cases(outcomes, quantile=0.25)
    assert [o.index for o in found] == [1, 2]  # equal failure rate: lower mean score first (0.5 < 2.5)
    assert found[0].low_score == [True, False]
    assert found[0].to_row()["edge_case"]["low_score_answers"] == 1
    assert found[0].to_row()["edge_case"]["min_score"] == -3.0
    # a threshold instead: strictly below fails
    found = find_edge_cases(outcomes, threshold=1.0)
    assert [o.index for o in found] == [1, 2]
    found = find_edge_cases(outcomes, threshold=1.5)
    assert [o.index for o in found] == [1, 3, 2]  # means 0.5, 1.5, 2.5


def test_the_file_loads_as_prompts_in_the_app_in_order(tmp_path: Path):
    from feedback_app.candidates import load_prompts
    from feedback_app.store import Store

    found = find_edge_cases([_outcome(0, [["r"]]), _outcome(1, [["r"], ["r"]]), _outcome(2, [[], ["r"]])])
    out = tmp_path / "edge.jsonl"
    write_prompts([o.to_row() for o in found], out)
    prompts = load_prompts(out)
    assert prompts == [_prompt("q1"), _prompt("q0"), _prompt("q2")]  # always (2 answers, then 1), then 1 in 2
    store = Store(tmp_path / "feedback.db")
    project = store.ensure_project("edge")
    assert store.add_prompts(project.id, prompts) == (3, 0)
    assert [i.prompt for i in store.project_items(project.id)] == prompts
    assert [json.loads(line)["edge_case"]["fail_rate"] for line in out.read_text().splitlines()] == [1.0, 1.0, 0.5]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    base = dict(policies="p.yaml", reward_model=None, rm_threshold=None, rm_quantile=None, samples=1,
                min_fail_rate=0.0, temperature=None, out=str(tmp_path / "out.jsonl"),
                prompts=str(tmp_path / "prompts.jsonl"))
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("kw, field, words", [
    (dict(policies=None), "--policies", "nothing to judge"),
    (dict(rm_quantile=0.2), "--reward-model", "give --reward-model"),
    (dict(reward_model="rm", rm_threshold=0.0, rm_quantile=0.2), "--rm-quantile", "not both"),
    (dict(reward_model="rm", rm_quantile=1.0), "--rm-quantile", "between 0 and 1"),
    (dict(samples=0), "--samples", "at least 1"),
    (dict(min_fail_rate=1.0), "--min-fail-rate", "[0, 1)"),
    (dict(samples=4, temperature=0.0), "--temperature", "greedy answer repeated"),
    (dict(out="PROMPTS"), "--out", "overwrite"),
])
def test_settings_that_would_find_the_wrong_thing_are_refused(tmp_path: Path, kw, field, words):
    if kw.get("out") == "PROMPTS":
        kw = {**kw, "out": str(tmp_path / "prompts.jsonl")}
    with pytest.raises(AlignError) as err:
        check_arguments(_args(tmp_path, **kw))
    assert err.value.field == field
    assert words in err.value.message
    check_arguments(_args(tmp_path))  # the defaults pass


def test_a_reward_model_scoring_everything_alike_fails_nothing(caplog):
    """Ties at the boundary all fail, but when the boundary is the highest score every answer would: the scores
    tell nothing apart, so none fails on them (and the log says why)."""
    assert low_score_cutoff([0.5] * 10, None, 0.1) is None
    assert low_score_cutoff([0.5] * 9 + [0.7], None, 0.1) == 0.5  # one answer above: the tied rest fail
    assert "do not tell these answers apart" in caplog.text
