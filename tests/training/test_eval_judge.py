"""`align eval` judging: the maths against hand-computed values, the reward-model and swapped-order judges on
a tiny model, and the command end to end (JSON keys, self win rate exactly 1/2, lengths, errors)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from alignment.cli import main
from alignment.evaluation.judge import (
    bt_preferences,
    mean,
    order_bias,
    pearson,
    position_consistency,
    render_question,
    sigmoid,
    std,
    swap_averaged,
    two_label_probability,
    win_rate,
)
from tests.conftest import write_jsonl

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "recipes" / "quickstart" / "policies.yaml"

# ------------------------------------------------------------------------------------------ maths


def test_win_rate_counts_ties_half():
    # win, tie, loss, tie
    assert win_rate([1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 5.0, 4.0]) == 0.5
    assert win_rate([2.0, 2.0, 2.0], [1.0, 1.0, 3.0]) == pytest.approx(2 / 3)
    assert win_rate([1.0], [1.0]) == 0.5
    assert win_rate([1.05, 0.0], [1.0, 1.0], tol=0.1) == 0.25  # a tie within tol, then a loss
    with pytest.raises(ValueError):
        win_rate([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        win_rate([], [])


def test_bradley_terry_preference_is_order_free():
    assert bt_preferences([0.0, math.log(3.0)], [0.0, 0.0]) == pytest.approx([0.5, 0.75])
    a, b = [0.3, -1.2, 2.0], [1.1, 0.4, -0.5]
    assert [x + y for x, y in zip(bt_preferences(a, b), bt_preferences(b, a))] == pytest.approx([1.0] * 3)
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0  # no overflow


def test_two_label_probability_renormalises():
    assert two_label_probability(math.log(0.6), math.log(0.2)) == pytest.approx(0.75)
    assert two_label_probability(-3.0, -3.0) == 0.5


def test_swap_averaged_preference():
    # A first: P("1") = 0.8 -> A; A second: P("1") = 0.4, so P("2") = 0.6 -> A.  (0.8 + 0.6) / 2 = 0.7
    assert swap_averaged([0.8, 0.5, 0.9], [0.4, 0.5, 0.9]) == pytest.approx([0.7, 0.5, 0.5])
    # B against A shows the same two texts in the other roles: the preferences add up to 1.
    p, q = [0.8, 0.1, 0.65], [0.4, 0.3, 0.2]
    p_a, p_b = swap_averaged(p, q), swap_averaged(q, p)
    assert [x + y for x, y in zip(p_a, p_b)] == pytest.approx([1.0] * 3)


def test_position_consistency():
    p_first = [0.8, 0.9, 0.2, 0.5, 0.5]
    p_second = [0.3, 0.8, 0.7, 0.5, 0.4]
    # A/A consistent; A/B (always "1") not; B/B consistent; tie/tie consistent; tie/A not.
    assert position_consistency(p_first, p_second) == pytest.approx(3 / 5)
    assert position_consistency([0.9] * 4, [0.9] * 4) == 0.0  # always answers "1"


def test_order_bias():
    assert order_bias([0.9, 0.7], [0.8, 0.6]) == pytest.approx(0.25)
    assert order_bias([1.0], [1.0]) == 0.5  # always "1"
    assert order_bias([0.8], [0.2]) == pytest.approx(0.0)  # prefers A in both positions: no position bias
    assert order_bias([0.1, 0.3], [0.2, 0.2]) == pytest.approx(-0.3)


def test_pearson_and_summaries():
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 38 / 3))
    assert pearson([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    assert pearson([1, 2, 3], [5, 5, 5]) is None  # constant
    assert pearson([0.1] * 3, [1, 2, 3]) is None  # constant, though their mean rounds to 0.10000000000000002
    assert pearson([1, 2], [3, 4]) is None  # too few points
    assert mean([1.0, 2.0, 6.0]) == 3.0 and mean([]) is None
    assert std([1.0, 3.0]) == 1.0


def test_render_question():
    prompt = [{"role": "system", "content": "You work for Harborline."}, {"role": "user", "content": "Claim?"}]
    assert render_question(prompt) == "Conversation so far:\nSystem: You work for Harborline.\n\nRequest:\nClaim?"
    assert render_question(prompt[1:]) == "Request:\nClaim?"


# ------------------------------------------------------------------------------------------ models


PROMPTS = [
    [{"role": "user", "content": "If I report the burst pipe today, will the claim be approved?"}],
    [{"role": "system", "content": "You are a support assistant."},
     {"role": "user", "content": "How soon would I get money after filing a claim?"}],
    [{"role": "user", "content": "Can you change my address?"}],
]


def test_judge_swapped_orders_add_up_and_padding_does_not_matter(tiny_model_dir):
    from alignment.evaluation.judge import PairwiseJudge
    from alignment.modeling import load_causal_lm, load_tokenizer

    judge = PairwiseJudge(load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir))
    a = ["Yes, certainly.", "Within five business days, once the adjuster has seen the damage.", "Sure."]
    b = ["No.", "Soon.", "Please log in to the app and open your profile to change it yourself."]
    ab = judge.compare(PROMPTS, a, b, batch_size=4)
    ba = judge.compare(PROMPTS, b, a, batch_size=4)
    assert [x + y for x, y in zip(ab.p_a, ba.p_a)] == pytest.approx([1.0] * 3, abs=1e-5)
    assert all(0.0 < p < 1.0 for p in ab.p_a) and all(0.0 < m <= 1.0 for m in ab.label_mass)
    # left-padded batch == each text alone (position ids follow the padding)
    texts = [judge.render(p, x, y) for p, x, y in zip(PROMPTS, a, b)]
    batched, _ = judge.label_probabilities(texts, batch_size=3)
    alone = [judge.label_probabilities([t])[0][0] for t in texts]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert batched == pytest.approx(ab.p_one_a_first, abs=1e-5)


def test_reward_scores_do_not_depend_on_padding(tiny_rm_dir):
    from alignment.evaluation.judge import score_answers
    from alignment.modeling import load_reward_model, load_tokenizer

    model, tok = load_reward_model(tiny_rm_dir).eval(), load_tokenizer(tiny_rm_dir)
    answers = ["Yes.", "Within five business days, once the adjuster has seen the damage.", ""]
    batched, truncated = score_answers(model, tok, PROMPTS, answers, batch_size=3)
    alone = [score_answers(model, tok, [p], [a])[0][0] for p, a in zip(PROMPTS, answers)]
    assert batched == pytest.approx(alone, abs=1e-5) and truncated == 0
    assert len(set(batched)) == 3


# ------------------------------------------------------------------------------------- end to end


def test_eval_with_reward_model_and_judge(tmp_path, tiny_model_dir, real_model_dir, tiny_rm_dir, capsys):
    """The tiny model is the baseline, a policy and the judge; SmolLM2-135M is a policy whose answers differ."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": p} for p in PROMPTS])
    out = tmp_path / "eval" / "results.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--model", str(real_model_dir),
                 "--baseline", str(tiny_model_dir), "--prompts", str(prompts), "--policies", str(POLICIES),
                 "--reward-model", str(tiny_rm_dir), "--judge-model", str(tiny_model_dir),
                 "--max-new-tokens", "6", "--batch-size", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for column in ("signoff", "mean chars", "RM mean", "r(RM,len)", "RM win", "judge P(A)", "consistent",
                   "order bias", "Δtokens"):
        assert column in printed
    data = json.loads(out.read_text())
    assert data["prompts"] == 3 and data["baseline"]["model"] == str(tiny_model_dir)
    assert data["reward_model"]["model"] == str(tiny_rm_dir) and data["judge_model"]["labels"] == ["1", "2"]
    base, same, other = data["results"]
    assert [r["label"] for r in data["results"]] == ["baseline", str(tiny_model_dir), str(real_model_dir)]
    assert [r["role"] for r in data["results"]] == ["baseline", "model", "model"]
    assert base["vs_baseline"] is None

    for r in data["results"]:
        # the existing keys, for the pipeline and the report
        assert set(r["adherence"]) == {*data["policies"], "all"} and "signoff" in data["policies"]
        assert {"model", "unfinished", "seconds"} <= set(r)
        # lengths match the answers
        assert all(a["chars"] == len(a["answer"]) and 1 <= a["tokens"] <= 6 for a in r["answers"])
        assert r["mean_length_chars"] == pytest.approx(mean([a["chars"] for a in r["answers"]]))
        assert r["mean_length_tokens"] == pytest.approx(mean([a["tokens"] for a in r["answers"]]))
        scores = [a["rm_score"] for a in r["answers"]]
        assert r["reward"]["mean"] == pytest.approx(mean(scores))
        assert r["reward"]["length_corr_tokens"] == pearson(scores, [a["tokens"] for a in r["answers"]])

    # a model against itself: the same answers, tied by the reward model, exactly 1/2
    assert [a["answer"] for a in same["answers"]] == [a["answer"] for a in base["answers"]]
    vs = same["vs_baseline"]
    assert vs["rm_win_rate"] == 0.5 and vs["rm_p_a"] == 0.5 and vs["rm_ties"] == 3
    assert vs["length_delta_tokens"] == 0.0 and vs["length_delta_chars"] == 0.0
    assert vs["judge_win_rate"] == pytest.approx(0.5, abs=1e-4)  # identical texts in both orders

    # another model: every number recomputes from the per-answer records
    assert all(a["answer"] for a in other["answers"]) and vs["length_delta_chars"] is not None
    vs = other["vs_baseline"]
    assert vs["length_delta_chars"] == pytest.approx(
        mean([len(a["answer"]) - len(b["answer"]) for a, b in zip(other["answers"], base["answers"])]))
    a_scores = [a["rm_score"] for a in other["answers"]]
    b_scores = [a["rm_score"] for a in base["answers"]]
    assert vs["rm_win_rate"] == win_rate(a_scores, b_scores)
    assert vs["rm_p_a"] == pytest.approx(mean(bt_preferences(a_scores, b_scores)))
    assert vs["length_delta_tokens"] == pytest.approx(
        mean([a["tokens"] - b["tokens"] for a, b in zip(other["answers"], base["answers"])]))
    judged = [a["judge"] for a in other["answers"]]
    for j in judged:
        assert j["p_a"] == pytest.approx((j["p_one_a_first"] + 1 - j["p_one_a_second"]) / 2)
    assert vs["judge_win_rate"] == pytest.approx(mean([j["p_a"] for j in judged]))
    assert vs["judge_order_bias"] == pytest.approx(
        order_bias([j["p_one_a_first"] for j in judged], [j["p_one_a_second"] for j in judged]))
    assert 0.0 <= vs["judge_position_consistency"] <= 1.0 and 0.0 < vs["judge_label_mass"] <= 1.0


def test_eval_without_policies_needs_a_judge(tmp_path, tiny_model_dir, tiny_rm_dir, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": p} for p in PROMPTS[:1]])
    base = ["eval", "--model", str(tiny_model_dir), "--prompts", str(prompts)]
    cases = [
        ([], "nothing to judge the answers with"),
        (["--judge-model", str(tiny_model_dir)], "field '--baseline'"),
        (["--reward-model", str(tmp_path / "missing")], "field '--reward-model'"),
        (["--reward-model", str(tiny_model_dir)], "not a reward model"),
        (["--judge-model", str(tiny_rm_dir), "--baseline", str(tiny_model_dir)], "field '--judge-model'"),
        (["--policies", str(POLICIES), "--baseline", str(tmp_path / "nope")], "field '--baseline'"),
        (["--policies", str(tmp_path / "none.yaml")], "policies file not found"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (extra, err)
    assert main(["eval", "--model", str(tiny_model_dir), "--prompts", str(tmp_path / "x.jsonl"),
                 "--reward-model", str(tiny_rm_dir)]) == 2
    assert "x.jsonl: file not found" in capsys.readouterr().err

    # a reward model alone: scores and lengths, no policies, no baseline
    out = tmp_path / "rm.json"
    assert main(base + ["--reward-model", str(tiny_rm_dir), "--max-new-tokens", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["results"][0]
    assert result["adherence"] == {} and result["vs_baseline"] is None
    assert result["reward"]["mean"] == result["answers"][0]["rm_score"]
