"""`align data edge-cases` on a tiny model: the prompts written are exactly those whose answers fail the rules
or score lowest with the reward model (recomputed here independently), worst first; bad settings end in one
line."""

from __future__ import annotations

import json
from pathlib import Path

from alignment.cli import main
from tests.conftest import write_jsonl

PROMPTS = [f"Question {i}: how do I {verb} my policy?" for i, verb in
           enumerate(["renew", "cancel", "change", "read", "pay", "move", "share", "print"])]


def _rules(tmp_path: Path) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(
        "policies:\n"
        "  - name: anything\n    description: any answer passes\n    must_match: []\n"
        "    must_not_match: ['NEVER-SAID-8c1f']\n"
        "  - name: impossible\n    description: no answer passes\n    must_match: ['NEVER-SAID-8c1f']\n"
        "    must_not_match: []\n", encoding="utf-8")
    return path


def _lenient(tmp_path: Path) -> Path:
    path = tmp_path / "lenient.yaml"
    path.write_text("policies:\n  - name: anything\n    description: any answer passes\n    must_match: []\n"
                    "    must_not_match: ['NEVER-SAID-8c1f']\n", encoding="utf-8")
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_rule_failures_every_sample_counted(tmp_path, tiny_model_dir, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS[:3]])
    out = tmp_path / "edge.jsonl"
    assert main(["data", "edge-cases", "--model", str(tiny_model_dir), "--prompts", str(prompts),
                 "--policies", str(_rules(tmp_path)), "--samples", "2", "--max-new-tokens", "4",
                 "--out", str(out)]) == 0
    rows = _rows(out)
    assert [r["messages"][-1]["content"] for r in rows] == PROMPTS[:3]  # all fail always: file order
    for r in rows:
        assert r["edge_case"]["fail_rate"] == 1.0 and r["edge_case"]["answers"] == 2
        assert r["edge_case"]["rules_broken"] == {"impossible": 2}
    assert "3 of 3 prompts fail (6 of 6 answers)" in capsys.readouterr().out

    # the same prompts against a rule every answer follows: nothing is an edge case, and the file says so
    assert main(["data", "edge-cases", "--model", str(tiny_model_dir), "--prompts", str(prompts),
                 "--policies", str(_lenient(tmp_path)), "--max-new-tokens", "4", "--out", str(out)]) == 0
    assert out.read_text() == ""


def test_lowest_reward_scores_are_the_edge_cases(tmp_path, tiny_model_dir, tiny_rm_dir):
    from alignment.evaluation.judge import score_answers
    from alignment.generation import generate
    from alignment.modeling import load_causal_lm, load_reward_model, load_tokenizer

    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": m} for m in messages])
    out = tmp_path / "edge.jsonl"
    assert main(["data", "edge-cases", "--model", str(tiny_model_dir), "--prompts", str(prompts),
                 "--policies", str(_lenient(tmp_path)), "--reward-model", str(tiny_rm_dir),
                 "--rm-quantile", "0.25", "--max-new-tokens", "6", "--out", str(out)]) == 0
    rows = _rows(out)

    # independently: greedy answers, their scores, the 2 lowest of 8
    tok = load_tokenizer(str(tiny_model_dir))
    answers = [a.text for a in generate(load_causal_lm(str(tiny_model_dir)), tok, messages, max_new_tokens=6,
                                        progress=False)]
    rm = load_reward_model(str(tiny_rm_dir)).eval()
    rm.config.pad_token_id = tok.pad_token_id
    scores, _ = score_answers(rm, load_tokenizer(str(tiny_rm_dir)), messages, answers)
    lowest = sorted(range(len(PROMPTS)), key=lambda i: scores[i])
    expected = [i for i in lowest if scores[i] <= scores[lowest[1]]]  # ties at the boundary fail too
    assert [r["edge_case"]["source_index"] for r in rows] == expected
    for r in rows:
        i = r["edge_case"]["source_index"]
        assert r["messages"] == messages[i]
        assert r["edge_case"]["example_answer"] == answers[i]
        assert abs(r["edge_case"]["mean_score"] - round(scores[i], 4)) < 1e-3
        assert r["edge_case"]["rules_broken"] == {} and r["edge_case"]["low_score_answers"] == 1


def test_bad_settings_end_in_one_line(tmp_path, tiny_model_dir, tiny_rm_dir, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": PROMPTS[0]}])
    out = tmp_path / "edge.jsonl"
    base = ["data", "edge-cases", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--out", str(out)]
    cases = [
        ([], "nothing to judge answers by"),
        (["--policies", str(tmp_path / "none.yaml")], "policies file not found"),
        (["--reward-model", str(tiny_model_dir)], "not a reward model"),
        (["--policies", str(_lenient(tmp_path)), "--rm-threshold", "0"], "give --reward-model"),
        (["--policies", str(_lenient(tmp_path)), "--samples", "3", "--temperature", "0"], "greedy"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (extra, err)
    assert not out.exists()
