"""The shipped quickstart data: reproducible, leak-free, and shaped so each policy is taught where meant."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from alignment.evaluation.rules import DomainRule, check_answer, load_rules

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "recipes" / "quickstart" / "data"
GENERATOR = ROOT / "scripts" / "make_quickstart_data.py"
TEXTS = ROOT / "scripts" / "quickstart_topics.yaml"  # the generator's input: all the text it renders
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
def policies() -> list[DomainRule]:
    return load_rules(ROOT / "recipes" / "quickstart" / "policies.yaml")


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
    out = tmp_path / "out"
    # Run from elsewhere: the generator must find its data file beside itself, not in the current directory.
    subprocess.run([sys.executable, str(GENERATOR), "--out", str(out)], check=True, capture_output=True,
                   cwd=tmp_path)
    for name in FILES:
        stale = f"{name} differs from a fresh run: rerun scripts/make_quickstart_data.py"
        assert (out / name).read_bytes() == (DATA / name).read_bytes(), stale


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


# The data file's schema, checked on the raw YAML (not through the generator's loader), so a broken edit is
# reported here by field rather than as a KeyError or a silently different dataset.

TOP_KEYS = {"system", "signoff", "topics", "sensitive", "greetings", "contexts", "openers", "loss_openers",
            "followup_openers", "self_opening", "fillers", "closers", "pressure", "heldout"}
TOPIC_KEYS = {"name", "loss", "slots", "questions", "good", "promise", "followups"}
# "" in these lists is deliberate: the chance that no greeting, context, opener... is added.
OPTIONAL_PARTS = {"greetings", "contexts", "openers", "loss_openers", "followup_openers", "fillers", "closers"}
PLACEHOLDER = re.compile(r"\{(\w*)\}")


@pytest.fixture(scope="module")
def texts() -> dict:
    return yaml.safe_load(TEXTS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def generator() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("make_quickstart_data_under_test", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _nonempty_strings(values: object, where: str) -> None:
    assert isinstance(values, list) and values, f"{where}: expected a non-empty list"
    for value in values:
        assert isinstance(value, str) and value.strip() == value and value, f"{where}: bad entry {value!r}"


def test_data_file_top_level(texts):
    assert set(texts) == TOP_KEYS
    for key in ("system", "signoff"):
        assert isinstance(texts[key], str) and texts[key].strip(), key
    for key in TOP_KEYS - {"system", "signoff", "topics", "heldout"}:
        values = texts[key]
        if key in OPTIONAL_PARTS:
            assert "" in values, f"{key}: the empty choice is what keeps these parts optional"
            values = [v for v in values if v != ""]
        _nonempty_strings(values, key)  # an empty self_opening prefix would match every body
        assert len(set(values)) == len(values), f"{key}: duplicate entries"
    # only contexts are formatted (with policy_no); a brace elsewhere would reach the data verbatim
    for key in TOP_KEYS - {"system", "signoff", "topics", "heldout", "contexts"}:
        assert not any("{" in v or "}" in v for v in texts[key]), key
    assert all(set(PLACEHOLDER.findall(v)) <= {"policy_no"} for v in texts["contexts"])


def test_every_topic_has_what_the_generator_needs(texts):
    names = [t.get("name") for t in texts["topics"]]
    assert len(set(names)) == len(names), "duplicate topic names"
    for topic in texts["topics"]:
        name = topic.get("name")
        assert set(topic) == TOPIC_KEYS, name
        assert isinstance(name, str) and re.fullmatch(r"[a-z_]+", name), name
        assert isinstance(topic["loss"], bool), name
        assert isinstance(topic["slots"], dict) and topic["slots"], name
        for slot, values in topic["slots"].items():
            _nonempty_strings(values, f"{name}.slots.{slot}")
            assert len(set(values)) == len(values), f"{name}.slots.{slot}: duplicate values"
        for field in ("questions", "good", "promise"):
            _nonempty_strings(topic[field], f"{name}.{field}")
            assert len(set(topic[field])) == len(topic[field]), f"{name}.{field}: duplicate entries"
        assert isinstance(topic["followups"], list) and topic["followups"], name
        for followup in topic["followups"]:
            assert set(followup) == {"phrasings", "good", "promise"}, name
            _nonempty_strings(followup["phrasings"], f"{name}.followups.phrasings")
            _nonempty_strings([followup["good"], followup["promise"]], f"{name}.followups")


def test_placeholders_name_the_topics_slots(texts):
    for topic in texts["topics"]:
        name, slots = topic["name"], topic["slots"]
        known = set(slots) | {f"{slot}_cap" for slot in slots}
        templates = topic["questions"] + topic["good"] + topic["promise"]
        templates += [text for f in topic["followups"] for text in (f["good"], f["promise"])]
        for template in templates:
            assert set(PLACEHOLDER.findall(template)) <= known, f"{name}: unknown slot in {template!r}"
        for question in topic["questions"]:
            assert PLACEHOLDER.search(question), f"{name}: a question without a slot repeats verbatim"
        # follow-up phrasings are sent as written, never filled
        assert not any("{" in p for f in topic["followups"] for p in f["phrasings"]), name


def test_each_topic_has_enough_distinct_questions(texts, generator):
    per_topic = -(-(generator.N_SFT + generator.N_PREF) // len(texts["topics"]))  # each rendering used once
    for topic in texts["topics"]:
        names = list(topic["slots"])
        rendered = set()
        for question, combo in itertools.product(topic["questions"], itertools.product(*topic["slots"].values())):
            values = dict(zip(names, combo, strict=True))
            values |= {f"{k}_cap": v for k, v in values.items()}
            rendered.add(question.format_map(values))
        assert len(rendered) >= per_topic, f"{topic['name']}: {len(rendered)} distinct questions < {per_topic}"


def test_heldout_entries(texts):
    heldout = texts["heldout"]
    assert heldout and all(set(h) == {"text", "invites_promise"} for h in heldout)
    _nonempty_strings([h["text"] for h in heldout], "heldout.text")
    assert all(isinstance(h["invites_promise"], bool) for h in heldout)
    normalized = [_norm(h["text"]) for h in heldout]
    assert len(set(normalized)) == len(normalized), "duplicate held-out prompts"
    inviting = sum(h["invites_promise"] for h in heldout) / len(heldout)
    assert 0.4 <= inviting <= 0.6  # the evaluation needs both kinds in similar numbers


def test_shipped_heldout_prompts_are_the_data_files(texts, heldout):
    assert [row["messages"][-1]["content"] for row in heldout] == [h["text"] for h in texts["heldout"]]
    assert {row["messages"][0]["content"] for row in heldout} == {texts["system"]}


def test_loader_names_a_broken_field(tmp_path, texts, generator):
    broken = json.loads(json.dumps(texts))
    del broken["topics"][3]["promise"]
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(broken, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match=texts["topics"][3]["name"]):
        generator.load_texts(path)
