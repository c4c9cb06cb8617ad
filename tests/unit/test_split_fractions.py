"""The held-out test split: a three-way split that is disjoint, deterministic and sized by its fractions;
bad fractions refused naming `data.split`; phases that cannot score a test set refuse one."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from alignment.config import DPOConfig, PPOConfig, RMConfig, SFTConfig, load_config
from alignment.data import deduplicate, split_dataset
from alignment.data.preferences import PreferenceExample, split_pairs
from alignment.data.splits import carve, held_out_ratios
from alignment.errors import AlignError

THREE_WAY = {"train": 0.7, "validation": 0.15, "test": 0.15}


def rows(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_list([{"text": f"example {i}"} for i in range(n)])


def test_three_way_split_is_disjoint_covering_sized_and_deterministic():
    ds = rows(2000)
    parts = carve(ds, THREE_WAY, seed=7)
    assert list(parts) == ["train", "validation", "test"]
    texts = {name: set(part["text"]) for name, part in parts.items()}
    assert not texts["train"] & texts["validation"]
    assert not texts["train"] & texts["test"]
    assert not texts["validation"] & texts["test"]
    assert set().union(*texts.values()) == set(ds["text"])
    for name, fraction in THREE_WAY.items():  # binomial: 3 standard deviations of 2000 draws is < 0.035
        assert abs(len(parts[name]) / len(ds) - fraction) < 0.035, name
    again = carve(ds, THREE_WAY, seed=7)
    assert all(again[name]["text"] == parts[name]["text"] for name in parts)
    other = carve(ds, THREE_WAY, seed=8)
    assert other["test"]["text"] != parts["test"]["text"]


def test_same_method_as_the_validation_split():
    """Adding a test fraction only cuts the upper end of [0, 1): with the same seed, train keeps exactly the
    rows it had, and validation + test hold the rows the validation part held under {0.7, 0.3}."""
    ds = rows(500)
    two = split_dataset(ds, {"train": 0.7, "validation": 0.3}, seed=3)
    three = carve(ds, THREE_WAY, seed=3)
    assert three["train"]["text"] == two["train"]["text"]
    assert set(three["validation"]["text"]) | set(three["test"]["text"]) == set(two["validation"]["text"])


def test_default_split_unchanged_and_files_take_their_share_back():
    assert held_out_ratios({"train": 0.95, "validation": 0.05}) == {"train": 0.95, "validation": 0.05}
    assert held_out_ratios(THREE_WAY, ("validation",)) == pytest.approx({"train": 0.85, "test": 0.15})
    assert held_out_ratios(THREE_WAY, ("validation", "test")) == pytest.approx({"train": 1.0})
    assert held_out_ratios({"train": 0.9, "validation": 0.1, "test": 0.0}) == {"train": 0.9, "validation": 0.1}
    ds = rows(50)
    assert carve(ds, {"train": 0.9, "validation": 0.1}, 0, ("validation",))["train"]["text"] == ds["text"]


def test_duplicates_are_removed_before_the_split_and_cannot_straddle_it():
    def row(i: int, pad: str = "") -> dict[str, str]:
        return {"prompt": f"question {i}", "completion": f"answer{pad} {i}"}

    base = [row(i) for i in range(300)]
    noisy = base + [row(i, "  ") for i in range(0, 300, 3)]  # whitespace variants of every third row
    ds, removed = deduplicate(datasets.Dataset.from_list(noisy), "sft", "prompt_completion", "whitespace")
    assert removed == 100
    parts = carve(ds, THREE_WAY, seed=0)
    keys = {name: {" ".join(c.split()) for c in part["completion"]} for name, part in parts.items()}
    assert not keys["train"] & keys["test"] and not keys["validation"] & keys["test"]
    # exact duplicates that survive (dedup: none) land together, never on both sides
    parts = carve(datasets.Dataset.from_list(base + base), THREE_WAY, seed=0)
    assert not set(parts["train"]["completion"]) & set(parts["test"]["completion"])


def test_pairs_of_one_prompt_stay_in_one_of_the_three_parts():
    msgs = [[{"role": "user", "content": f"q{i % 60}"}] for i in range(240)]
    examples = [PreferenceExample(m, [{"role": "assistant", "content": f"good {i}"}],
                                  [{"role": "assistant", "content": f"bad {i}"}]) for i, m in enumerate(msgs)]
    parts = split_pairs(examples, THREE_WAY, seed=1)
    prompts = {name: {json.dumps(ex.prompt) for ex in part} for name, part in parts.items()}
    assert sum(len(p) for p in parts.values()) == 240
    assert not prompts["train"] & prompts["test"] and not prompts["validation"] & prompts["test"]
    assert parts["test"]


def test_a_prompt_written_with_other_whitespace_stays_in_the_same_part():
    """The same question typed with a trailing space or a double space is one prompt: its pairs cannot land
    in train and in a held-out part (the split keys on the whitespace-normalised prompt, as dedup does)."""
    def pair(question: str, i: int) -> PreferenceExample:
        return PreferenceExample([{"role": "user", "content": question}], [{"role": "assistant", "content": f"g{i}"}],
                                 [{"role": "assistant", "content": f"b{i}"}])

    for seed in range(40):
        examples = [pair(f"question {i}?", i) for i in range(50)]
        examples += [pair("question  7? ", 50), pair(" question 7?\n", 51)]
        parts = split_pairs(examples, THREE_WAY, seed=seed)
        where = {name for name, part in parts.items() for ex in part
                 if " ".join(ex.prompt[0]["content"].split()) == "question 7?"}
        assert len(where) == 1, (seed, where)

# --------------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------------
def _recipe(tmp_path: Path, phase: str, data: str, extra: str = "") -> Path:
    (tmp_path / "t.jsonl").write_text('{"text": "hello"}\n', encoding="utf-8")
    path = tmp_path / f"{phase}.yaml"
    path.write_text(f"phase: {phase}\n{extra}data:\n  train: t.jsonl\n{data}", encoding="utf-8")
    return path


CONFIGS = {"sft": SFTConfig, "rm": RMConfig, "dpo": DPOConfig, "ppo": PPOConfig}


@pytest.mark.parametrize("phase", ["sft", "rm", "dpo"])
def test_a_test_split_or_file_loads(tmp_path, phase):
    cfg = load_config(CONFIGS[phase], _recipe(tmp_path, phase, "  split: {train: 0.7, validation: 0.15, test: 0.15}\n"))
    assert cfg.data.split == THREE_WAY and cfg.data.test is None
    (tmp_path / "held.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    cfg = load_config(CONFIGS[phase], _recipe(tmp_path, phase, "  test: held.jsonl\n"))
    assert cfg.data.test == str(tmp_path / "held.jsonl")  # resolved next to the recipe, like data.validation


@pytest.mark.parametrize(("split", "text"), [
    ("{train: 0.7, validation: 0.15, test: 0.2}", "sum to 1, these sum to 1.05"),
    ("{train: 0.7, validation: 0.1}", "sum to 0.8"),
    ("{train: 0.8, validation: 0.3, test: -0.1}", "'test' must be in [0, 1)"),
    ("{train: 0.0, validation: 0.5, test: 0.5}", "'train' must be in (0, 1]"),
    ("{test: 1.0, train: 0.0}", "'test' must be in [0, 1)"),
    ("{train: 0.7, valid: 0.3}", "unknown split 'valid'"),
    ("{validation: 0.5, test: 0.5}", "needs a `train` fraction"),
    ("{train: 0.7, validation: .nan, test: 0.3}", "must be a number"),
])
@pytest.mark.parametrize("phase", ["sft", "rm"])
def test_bad_fractions_are_refused_naming_data_split(tmp_path, phase, split, text):
    with pytest.raises(AlignError) as info:
        load_config(CONFIGS[phase], _recipe(tmp_path, phase, f"  split: {split}\n"))
    assert info.value.field == "data.split" and text in info.value.message


@pytest.mark.parametrize(("phase", "extra", "data", "field", "named"), [
    ("ppo", "", "  test: t.jsonl\n", "data.test", "ppo"),
    ("dpo", "negatives: kto\n", "  test: t.jsonl\n", "data.test", "kto"),
    ("dpo", "negatives: kto\n", "  split: {train: 0.8, validation: 0.1, test: 0.1}\n", "data.split", "kto"),
])
def test_phases_without_test_metrics_refuse_a_test_set(tmp_path, phase, extra, data, field, named):
    with pytest.raises(AlignError) as info:
        load_config(CONFIGS[phase], _recipe(tmp_path, phase, data, extra))
    assert info.value.field == field
    assert f"not supported for {named}" in info.value.message and "supported for sft, rm and dpo" in info.value.message


def test_a_test_file_prompt_leaves_train_up_to_whitespace(tmp_path):
    from alignment.config import PreferenceDataConfig
    from alignment.data.preferences import load_pair_splits

    def pair(prompt: str, i: int) -> dict:
        return {"prompt": prompt, "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(pair(p, i)) + "\n" for i, p in
                             enumerate(["What is X? ", "What  is Y?", "Tell me about Z."])))
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps(pair("What is X?", 9)) + "\n")
    data = PreferenceDataConfig(train=str(train), test=str(test), split={"train": 1.0})
    kept, _, held, info = load_pair_splits(data, seed=0)
    assert [ex.prompt[-1]["content"] for ex in kept] == ["What  is Y?", "Tell me about Z."]
    assert len(held) == 1 and info.test_prompts_dropped == 1
