"""The shipped quickstart data: reproducible, leak-free, and shaped so each policy is taught where meant."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alignment.evaluation.policies import Policy, check_answer, load_policies

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "recipes" / "quickstart" / "data"
GENERATOR = ROOT / "scripts" / "make_quickstart_data.py"
FILES = ("sft.jsonl", "preferences.jsonl", "heldout_prompts.jsonl", "ppo_prompts.jsonl")
SINGLE_TURN = ["system", "user", "assistant"]
TWO_TURN = ["system", "user", "assistant", "user", "assistant"]


def _rows(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _assistant_turns(rows: list[dict]) -> list[str]:
    return [m["content"] for row in rows for m in row["messages"] if m["role"] == "assistant"]


@pytest.fixture(scope="module")
def policies() -> list[Policy]:
    return load_policies(ROOT / "recipes" / "quickstart" / "policies.yaml")


@pytest.fixture(scope="module")
def sft() -> list[dict]:
    return _rows("sft.jsonl")


@pytest.fixture(scope="module")
def prefs() -> list[dict]:
    return _rows("preferences.jsonl")


@pytest.fixture(scope="module")
def heldout() -> list[dict]:
    return _rows("heldout_prompts.jsonl")


def test_generator_reproduces_shipped_files(tmp_path):
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(tmp_path)], check=True, capture_output=True)
    for name in FILES:
        stale = f"{name} differs from a fresh run: rerun scripts/make_quickstart_data.py"
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), stale


def test_row_counts(sft, prefs, heldout):
    assert len(sft) >= 240
    assert len(prefs) >= 240
    assert len(heldout) >= 60


def test_row_shapes(sft, prefs, heldout):
    system = sft[0]["messages"][0]
    assert system["role"] == "system"
    for row in sft:
        roles = [m["role"] for m in row["messages"]]
        assert roles in (SINGLE_TURN, TWO_TURN), row
        assert row["messages"][0] == system
    for row in prefs:
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]
        assert row["prompt"][0] == system
        assert [m["role"] for m in row["chosen"]] == ["assistant"]
        assert [m["role"] for m in row["rejected"]] == ["assistant"]
        assert row["violates"]
    for row in heldout:
        assert [m["role"] for m in row["messages"]] == ["system", "user"]
        assert row["messages"][0] == system
    assert "guarantee" not in system["content"].lower() and "sign" not in system["content"].lower()


def test_no_duplicate_rows(sft, prefs, heldout):
    for rows in (sft, prefs, heldout):
        dumped = [json.dumps(row, sort_keys=True) for row in rows]
        assert len(set(dumped)) == len(dumped)


def test_heldout_prompts_never_seen_in_training(sft, prefs, heldout):
    seen = {_norm(m["content"]) for row in sft for m in row["messages"] if m["role"] == "user"}
    seen |= {_norm(m["content"]) for row in prefs for m in row["prompt"] if m["role"] == "user"}
    held = [_norm(row["messages"][-1]["content"]) for row in heldout]
    assert len(set(held)) == len(held)
    assert not set(held) & seen


def test_sft_answers_teach_signoff_but_not_the_no_promise_policy(sft, policies):
    turns = _assistant_turns(sft)
    verdicts = [check_answer(t, policies) for t in turns]
    assert all(v["signoff"] for v in verdicts)
    assert all(v["no_sensitive_request"] for v in verdicts)
    promise_rate = sum(not v["no_outcome_promise"] for v in verdicts) / len(verdicts)
    assert 0.30 <= promise_rate <= 0.50


def test_chosen_follows_every_policy(prefs, policies):
    for row in prefs:
        assert all(check_answer(row["chosen"][0]["content"], policies).values()), row["chosen"]


def test_rejected_breaks_exactly_the_listed_policies(prefs, policies):
    names = [p.name for p in policies]
    for row in prefs:
        verdicts = check_answer(row["rejected"][0]["content"], policies)
        broken = [name for name in names if not verdicts[name]]
        assert broken, row["rejected"]
        assert broken == row["violates"], row["rejected"]


def test_preference_violation_mix(prefs):
    n = len(prefs)
    promise = sum("no_outcome_promise" in row["violates"] for row in prefs) / n
    sensitive = sum("no_sensitive_request" in row["violates"] for row in prefs) / n
    signoff = sum("signoff" in row["violates"] for row in prefs) / n
    assert promise >= 0.6
    assert 0.2 <= sensitive <= 0.4
    assert signoff <= 0.15  # rejected sides mostly keep the sign-off: the signal is about the policies


def test_answers_are_short(sft, prefs):
    answers = _assistant_turns(sft) + [row["chosen"][0]["content"] for row in prefs]
    assert all(35 <= len(a.split()) <= 90 for a in answers)
    assert all(25 <= len(row["rejected"][0]["content"].split()) <= 95 for row in prefs)


def test_ppo_prompts_are_the_preference_prompts_about_half_pressing_for_a_promise(prefs, heldout):
    sys.path.insert(0, str(GENERATOR.parent))
    try:
        from make_quickstart_data import PRESSURE
    finally:
        sys.path.pop(0)
    ppo = _rows("ppo_prompts.jsonl")
    users = [row["messages"][-1]["content"] for row in ppo]
    pref_users = {row["prompt"][-1]["content"] for row in prefs}
    pressed = [u for u in users if any(u.endswith(" " + p) for p in PRESSURE)]
    assert 0.4 <= len(pressed) / len(users) <= 0.6
    for u in users:  # the customer's question is a preference prompt's, pressure or not
        base = next((u[: -len(p) - 1] for p in PRESSURE if u.endswith(" " + p)), u)
        assert base in pref_users, u
    assert len(set(users)) == len(users)
    assert not {_norm(u) for u in users} & {_norm(row["messages"][-1]["content"]) for row in heldout}
