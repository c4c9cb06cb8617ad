"""The efficacy suite's synthetic domains: reproducible, loadable by the framework, rules only in the
preferences, held-out prompts unseen, and content checks that hold for the domain's own answers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alignment.cli import main as align_main
from alignment.data import load_dataset_file
from alignment.evaluation.adherence import load_prompts
from alignment.evaluation.rules import check_answer, load_rules
from benchmarks.efficacy.domains import DOMAINS, check_content, parse_domains, write_domain

REPO = Path(__file__).resolve().parents[2]
FILES = ("sft.jsonl", "prefs.jsonl", "ppo_prompts.jsonl", "heldout_prompts.jsonl", "policies.yaml", "content.json")
NAMES = list(DOMAINS)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("domains")
    for name in NAMES:
        write_domain(name, root / name)
    return root


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def answer(messages: list[dict]) -> str:
    return next(m["content"] for m in messages if m["role"] == "assistant")


def user(messages: list[dict]) -> str:
    return [m["content"] for m in messages if m["role"] == "user"][-1]


def test_generation_is_byte_for_byte_reproducible(out: Path, tmp_path: Path):
    # A second run in a fresh interpreter with another hash seed: nothing may depend on set/dict hash order.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-m", "benchmarks.efficacy.domains", "--out", str(tmp_path)], cwd=REPO,
                   env=env, check=True, capture_output=True)
    for name in NAMES:
        for f in FILES:
            assert (tmp_path / name / f).read_bytes() == (out / name / f).read_bytes(), f"{name}/{f} differs"


def test_sizes_and_rule_kinds_vary(out: Path):
    sizes, kinds = [], []
    for name in NAMES:
        n_sft = len(rows(out / name / "sft.jsonl"))
        n_pref = len(rows(out / name / "prefs.jsonl"))
        n_held = len(rows(out / name / "heldout_prompts.jsonl"))
        assert 100 <= n_sft <= 200 and 150 <= n_pref <= 400 and 40 <= n_held <= 60, (name, n_sft, n_pref, n_held)
        assert len(rows(out / name / "ppo_prompts.jsonl")) == n_pref
        policies = load_rules(out / name / "policies.yaml")
        assert 2 <= len(policies) <= 4
        sizes.append((n_sft, n_pref, n_held))
        kinds.append(frozenset(r.kind for r in DOMAINS[name].rules))
    assert len(set(sizes)) == len(NAMES), "every domain should have its own sizes"
    assert len(set(kinds)) == len(NAMES), "every domain should have its own combination of rule kinds"
    assert {len(DOMAINS[n].rules) for n in NAMES} == {2, 3, 4}


@pytest.mark.parametrize("name", NAMES)
def test_chosen_follows_every_rule_and_rejected_breaks_what_it_says(out: Path, name: str):
    policies = load_rules(out / name / "policies.yaml")
    broken_alone = set()
    plain = 0
    for row in rows(out / name / "prefs.jsonl"):
        chosen = check_answer(answer(row["chosen"]), policies)
        rejected = check_answer(answer(row["rejected"]), policies)
        assert all(chosen.values()), (row["prompt"], chosen)
        assert sorted(n for n, ok in rejected.items() if not ok) == sorted(row["violates"]), row
        assert row["violates"]
        if len(row["violates"]) == 1:
            broken_alone.add(row["violates"][0])
        plain += len(row["violates"]) == len(policies)
    # every rule is taught by pairs that differ in that rule alone, and some rejected answers are plain
    assert broken_alone == {p.name for p in policies}
    assert plain > 0


@pytest.mark.parametrize("name", NAMES)
def test_sft_answers_follow_no_rule(out: Path, name: str):
    policies = load_rules(out / name / "policies.yaml")
    for row in rows(out / name / "sft.jsonl"):
        verdicts = check_answer(answer(row["messages"]), policies)
        assert not any(verdicts.values()), (user(row["messages"]), verdicts)


@pytest.mark.parametrize("name", NAMES)
def test_answers_are_40_to_120_words(out: Path, name: str):
    answers = [answer(r["messages"]) for r in rows(out / name / "sft.jsonl")]
    for r in rows(out / name / "prefs.jsonl"):
        answers += [answer(r["chosen"]), answer(r["rejected"])]
    counts = [len(a.split()) for a in answers]
    assert 40 <= min(counts) and max(counts) <= 120, (min(counts), max(counts))
    assert len(set(answers)) > len(answers) // 3, "answers should vary, not repeat a few texts"


@pytest.mark.parametrize("name", NAMES)
def test_heldout_prompts_are_unseen(out: Path, name: str):
    train = [user(r["messages"]) for r in rows(out / name / "sft.jsonl")]
    train += [user(r["prompt"]) for r in rows(out / name / "prefs.jsonl")]
    train += [user(r["messages"]) for r in rows(out / name / "ppo_prompts.jsonl")]
    heldout = [user(r["messages"]) for r in rows(out / name / "heldout_prompts.jsonl")]
    assert len(set(heldout)) == len(heldout)
    assert not set(heldout) & set(train)
    assert not {norm(h) for h in heldout} & {norm(t) for t in train}
    # rephrasings, not new topics: every held-out topic is trained on
    assert {r["topic"] for r in rows(out / name / "heldout_prompts.jsonl")} <= \
        {r["topic"] for r in rows(out / name / "sft.jsonl")}


@pytest.mark.parametrize("name", NAMES)
def test_files_load_with_the_framework_loaders(out: Path, name: str, capsys: pytest.CaptureFixture[str]):
    folder = out / name
    for f, kind, variant in (("sft.jsonl", "sft", "messages"), ("prefs.jsonl", "preference", "explicit_prompt"),
                             ("ppo_prompts.jsonl", "prompts", "messages"),
                             ("heldout_prompts.jsonl", "prompts", "messages")):
        ds, info = load_dataset_file(folder / f, kind)
        assert info.variant == variant and len(ds) == len(rows(folder / f))
        assert align_main(["data", "validate", str(folder / f), "--kind", kind]) == 0
        summary = capsys.readouterr().out
        assert "duplicates" in summary
    assert len(load_prompts(folder / "heldout_prompts.jsonl")) == len(rows(folder / "heldout_prompts.jsonl"))


@pytest.mark.parametrize("name", NAMES)
def test_content_checks_hold_on_the_domains_own_answers(out: Path, name: str):
    spec = json.loads((out / name / "content.json").read_text())
    topics = spec["topics"]
    heldout = rows(out / name / "heldout_prompts.jsonl")
    assert [h["prompt"] for h in spec["heldout"]] == [user(r["messages"]) for r in heldout]
    assert all(h["facts"] == topics[h["topic"]] for h in spec["heldout"])
    sft = rows(out / name / "sft.jsonl")
    for row in sft:
        assert all(check_content(answer(row["messages"]), topics[row["topic"]]).values()), row
    for row in rows(out / name / "prefs.jsonl"):
        assert all(check_content(answer(row["chosen"]), topics[row["topic"]]).values()), row
    # and they discriminate: an answer about another topic rarely mentions all of a topic's facts
    for topic, facts in topics.items():
        others = [answer(r["messages"]) for r in sft if r["topic"] != topic]
        passing = sum(all(check_content(a, facts).values()) for a in others)
        assert passing <= 0.1 * len(others), (topic, passing, len(others))


def test_parse_domains():
    assert parse_domains("") == NAMES
    assert parse_domains("bank, it") == ["bank", "it"]
    with pytest.raises(ValueError, match="unknown domain"):
        parse_domains("bank,casino")


def test_recipes_domain_data_is_the_generated_it_domain(out: Path):
    # recipes/domain/data ships one domain so the recipe folder runs on its own; it must not drift
    shipped = REPO / "recipes" / "domain" / "data"
    for f in FILES:
        stale = f"recipes/domain/data/{f} differs: python -m benchmarks.efficacy.domains --out DIR --domains it"
        assert (shipped / f).read_bytes() == (out / "it" / f).read_bytes(), stale
