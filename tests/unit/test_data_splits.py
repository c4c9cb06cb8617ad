"""De-duplication and deterministic, stable splits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from alignment.data import (
    LINE_COLUMN,
    count_duplicates,
    deduplicate,
    load_records,
    normalise_whitespace,
    split_dataset,
)
from alignment.errors import AlignError

ROOT = Path(__file__).resolve().parents[2]


def rows(n: int, start: int = 0) -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [
            {"prompt": f"question {i}", "completion": f"answer {i}", LINE_COLUMN: i + 1}
            for i in range(start, start + n)
        ]
    )


def lines(ds: datasets.Dataset) -> list[int]:
    return list(ds[LINE_COLUMN])


# -------------------------------------------------------------------------------------------- dedup


def test_normalise_whitespace_keeps_case():
    assert normalise_whitespace("  Hello\n\n  World\t ") == "Hello World"


def test_exact_vs_whitespace_dedup(tmp_path):
    records = [
        {"prompt": "Hi", "completion": "Hello there", "id": 1},
        {"prompt": "Hi", "completion": "Hello there", "id": 2},  # exact duplicate, other metadata
        {"prompt": "Hi ", "completion": "Hello  there\n", "id": 3},  # duplicate up to whitespace
        {"prompt": "hi", "completion": "Hello there", "id": 4},  # case differs: kept
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    ds = load_records(path)
    kept, removed = deduplicate(ds, "sft", "prompt_completion", "exact")
    assert (removed, kept["id"]) == (1, [1, 3, 4])
    kept, removed = deduplicate(ds, "sft", "prompt_completion", "whitespace")
    assert (removed, kept["id"]) == (2, [1, 4])
    assert lines(kept) == [1, 4]  # the original lines survive, for later errors
    assert deduplicate(ds, "sft", "prompt_completion", "none") == (ds, 0)
    assert count_duplicates(ds, "sft", "prompt_completion", "exact") == 1
    assert count_duplicates(ds, "sft", "prompt_completion", "whitespace") == 2


def test_dedup_compares_normalised_content():
    """A string prompt and the same prompt as a user message are the same record."""
    ds = datasets.Dataset.from_list(
        [
            {"prompt": "Hi", "chosen": "a", "rejected": "b"},
            {"prompt": "Hi", "chosen": "a", "rejected": "c"},
            {"prompt": '[{"role": "user", "content": "Hi"}]', "chosen": "a", "rejected": "b"},  # from a CSV
        ]
    )
    kept, removed = deduplicate(ds, "preference", "explicit_prompt", "exact")
    assert removed == 1 and kept["rejected"] == ["b", "c"]


def test_unknown_dedup_mode():
    with pytest.raises(AlignError) as info:
        deduplicate(rows(2), "sft", "prompt_completion", "fuzzy")  # type: ignore[arg-type]
    assert info.value.field == "dedup"


# ------------------------------------------------------------------------------------------- splits


def test_split_is_disjoint_covering_and_ordered():
    parts = split_dataset(rows(200), {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=3)
    assert list(parts) == ["train", "validation", "test"]
    all_lines = [n for part in parts.values() for n in lines(part)]
    assert sorted(all_lines) == list(range(1, 201))
    for part in parts.values():
        assert lines(part) == sorted(lines(part))
    assert 120 <= len(parts["train"]) <= 190 and len(parts["validation"]) > 0 and len(parts["test"]) > 0


def test_split_is_deterministic_by_seed():
    a = split_dataset(rows(100), {"train": 0.7, "validation": 0.3}, seed=1)
    b = split_dataset(rows(100), {"train": 0.7, "validation": 0.3}, seed=1)
    c = split_dataset(rows(100), {"train": 0.7, "validation": 0.3}, seed=2)
    assert lines(a["validation"]) == lines(b["validation"])
    assert lines(a["validation"]) != lines(c["validation"])


def test_split_does_not_depend_on_the_process_hash_seed():
    code = (
        "import datasets; from alignment.data import split_dataset; "
        "ds = datasets.Dataset.from_list([{'text': f'row {i}'} for i in range(50)]); "
        "print(split_dataset(ds, (0.5, 0.5), seed=0)['validation']['text'][:]) "
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        ).stdout
        for hash_seed in ("1", "2")
    }
    assert len(outputs) == 1


def test_adding_rows_does_not_move_existing_ones():
    before = split_dataset(rows(100), (0.9, 0.1), seed=0)
    after = split_dataset(datasets.concatenate_datasets([rows(100), rows(50, start=100)]), (0.9, 0.1), seed=0)
    assert [n for n in lines(after["validation"]) if n <= 100] == lines(before["validation"])


def test_identical_rows_land_in_the_same_split():
    ds = datasets.Dataset.from_list([{"text": f"t{i % 10}"} for i in range(100)])
    parts = split_dataset(ds, (0.5, 0.5), seed=0)
    assert not set(parts["train"]["text"]) & set(parts["validation"]["text"])


def test_custom_key_groups_rows():
    ds = datasets.Dataset.from_list([{"prompt": f"p{i % 5}", "chosen": f"c{i}"} for i in range(40)])
    parts = split_dataset(ds, (0.6, 0.4), seed=0, key=lambda r: r["prompt"])
    assert not set(parts["train"]["prompt"]) & set(parts["validation"]["prompt"])


def test_rows_equal_up_to_whitespace_land_in_the_same_split():
    """Under dedup exact or none a record repeated with a trailing space or a double space survives; it must not
    land in train while its twin is held out (a twin goes where the first of them goes)."""
    base = [{"prompt": f"question {i}?", "completion": f"answer {i}"} for i in range(40)]
    spaced = [{"prompt": f"question  {i}? ", "completion": f"answer {i}\n"} for i in range(40)]
    ds = datasets.Dataset.from_list(base + spaced)
    for seed in range(5):
        parts = split_dataset(ds, {"train": 0.6, "validation": 0.2, "test": 0.2}, seed=seed)
        where = {name: {normalise_whitespace(p) for p in part["prompt"]} for name, part in parts.items()}
        assert not where["train"] & where["validation"] and not where["train"] & where["test"], seed
        assert not where["validation"] & where["test"], seed


def test_sft_whitespace_twins_kept_by_dedup_exact_stay_on_one_side(tmp_path):
    from alignment.config import SFTConfig, load_config
    from alignment.sft import load_sft_splits

    rows = [{"prompt": f"question {i}?", "completion": f"answer {i}"} for i in range(30)]
    rows += [{"prompt": f"question {i}? ", "completion": f"answer  {i}"} for i in range(30)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in range(3):
        cfg = load_config(SFTConfig, None, {"model": "m", "data.train": str(data), "data.dedup": "exact",
                                            "data.split": {"train": 0.6, "validation": 0.2, "test": 0.2},
                                            "train.seed": seed})
        parts = load_sft_splits(cfg)[:3]
        assert sum(map(len, parts)) == 60
        where = [{normalise_whitespace(r["messages"][0]["content"]) for r in part} for part in parts]
        assert not where[0] & where[1] and not where[0] & where[2] and not where[1] & where[2], seed


def test_rows_without_a_whitespace_twin_keep_the_part_they_had():
    """Split scheme 2 moves only what it must: a record without a twin equal up to whitespace is placed by its
    JSON as written, as in scheme 1, newlines in its answer and all; a prompt written with normal whitespace
    hashes to scheme 1's ``json.dumps(prompt)``."""
    from alignment.data.preferences import PreferenceExample, split_pairs

    ratios = {"train": 0.6, "validation": 0.2, "test": 0.2}
    ds = datasets.Dataset.from_list([{"prompt": f"café {i}: a question?", "completion": f"line one\n\nline {i}"}
                                     for i in range(100)])
    scheme_1 = split_dataset(ds, ratios, seed=4, key=lambda r: json.dumps(
        r, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str))
    assert {n: p["prompt"] for n, p in split_dataset(ds, ratios, seed=4).items()} == {
        n: p["prompt"] for n, p in scheme_1.items()}

    examples = [PreferenceExample([{"role": "user", "content": f"café {i % 50}: a question?"}],
                                  [{"role": "assistant", "content": f"good {i}"}],
                                  [{"role": "assistant", "content": f"bad {i}"}]) for i in range(100)]
    old = datasets.Dataset.from_dict({"i": list(range(100)), "prompt": [json.dumps(ex.prompt) for ex in examples]})
    scheme_1 = split_dataset(old, ratios, seed=4, key=lambda r: r["prompt"])
    assert {n: [examples.index(ex) for ex in p] for n, p in split_pairs(examples, ratios, seed=4).items()} == {
        n: list(p["i"]) for n, p in scheme_1.items()}


def test_unpaired_answers_to_one_prompt_up_to_whitespace_stay_in_one_part(tmp_path):
    """KTO's validation split keys on the prompt: "question 3?" and "question  3? " are one prompt."""
    from alignment.config import DPOConfig, load_config
    from alignment.kto import load_unpaired

    rows = [{"prompt": f"question {i}?", "completion": f"good {i}", "label": True} for i in range(40)]
    rows += [{"prompt": f"question  {i}? ", "completion": f"bad {i}", "label": False} for i in range(40)]
    data = tmp_path / "unpaired.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in range(3):
        cfg = load_config(DPOConfig, None, {"model": "m", "data.train": str(data), "negatives": "kto",
                                            "data.split": {"train": 0.7, "validation": 0.3}, "train.seed": seed})
        train, val, _ = load_unpaired(cfg)
        assert train and val
        where = [{normalise_whitespace(r["prompt"][0]["content"]) for r in part} for part in (train, val)]
        assert not where[0] & where[1], seed


@pytest.mark.parametrize("n", [2, 3, 5])
def test_every_split_gets_a_row_when_there_are_enough(n):
    parts = split_dataset(
        rows(n), {"train": 0.98, "validation": 0.01, "test": 0.01} if n >= 3 else (0.99, 0.01), 0
    )
    assert all(len(part) >= 1 for part in parts.values())
    assert sum(len(part) for part in parts.values()) == n


def test_tuple_names():
    assert list(split_dataset(rows(10), (0.5, 0.5), seed=0)) == ["train", "validation"]
    assert list(split_dataset(rows(10), (1.0,), seed=0)) == ["train"]


def test_ratio_tolerance():
    parts = split_dataset(rows(10), {"a": 0.1, "b": 0.2, "c": 0.7}, seed=0)  # sums to 0.9999999999999999
    assert sum(len(p) for p in parts.values()) == 10


@pytest.mark.parametrize(
    ("ratios", "text"),
    [
        ({"train": 0.9, "validation": 0.2}, "sum to 1, these sum to 1.1"),
        ({"train": 0.5, "validation": 0.3}, "sum to 0.8"),
        ({"train": 1.1, "validation": -0.1}, "'validation' must be positive"),
        ({"train": 1.0, "validation": 0.0}, "must be positive"),
        ({"train": "0.9", "validation": 0.1}, "must be a number"),
        ({}, "at least one split"),
        ((0.25, 0.25, 0.25, 0.25), "up to 3 numbers"),
    ],
)
def test_ratio_errors(ratios, text):
    with pytest.raises(AlignError) as info:
        split_dataset(rows(10), ratios, seed=0)
    assert info.value.field == "split" and text in info.value.message
