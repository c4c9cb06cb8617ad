"""Recognising and validating every format, from every file type, with errors that name file:line:field."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignment.data import (
    FORMATS,
    FormatInfo,
    detect_variant,
    load_dataset_file,
    load_records,
    normalise_dataset,
    to_conversation,
    validate,
)
from alignment.errors import AlignError


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# ---------------------------------------------------------------------------------------- writers


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path = path.with_suffix(".jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_json(path: Path, records: list[dict[str, Any]]) -> Path:
    path = path.with_suffix(".json")
    path.write_text(json.dumps(records, indent=2))
    return path


def write_csv(path: Path, records: list[dict[str, Any]]) -> Path:
    """As a spreadsheet would: lists as JSON text, booleans as true/false."""
    path = path.with_suffix(".csv")

    def cell(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        return value if isinstance(value, str) else json.dumps(value)

    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows({k: cell(v) for k, v in r.items()} for r in records)
    return path


def write_parquet(path: Path, records: list[dict[str, Any]]) -> Path:
    path = path.with_suffix(".parquet")
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def write_saved(path: Path, records: list[dict[str, Any]]) -> Path:
    datasets.Dataset.from_list(records).save_to_disk(str(path))
    return path


WRITERS = {
    "jsonl": write_jsonl,
    "json": write_json,
    "csv": write_csv,
    "parquet": write_parquet,
    "saved": write_saved,
}

# (kind, records, expected FormatInfo, expected to_conversation of the first record)
CASES = {
    "sft-messages": (
        "sft",
        [{"messages": [user("hi"), bot("hello")]}, {"messages": [user("2+2?"), bot("4")]}],
        FormatInfo("sft", "messages", True),
        {"messages": [user("hi"), bot("hello")]},
    ),
    "sft-prompt-completion": (
        "sft",
        [{"prompt": "hi", "completion": "hello"}, {"prompt": "2+2?", "completion": "4"}],
        FormatInfo("sft", "prompt_completion", False),
        {"messages": [user("hi"), bot("hello")]},
    ),
    "sft-prompt-completion-messages": (
        "sft",
        [{"prompt": [user("hi")], "completion": [bot("hello")]}],
        FormatInfo("sft", "prompt_completion", True),
        {"messages": [user("hi"), bot("hello")]},
    ),
    "sft-text": (
        "sft",
        [{"text": "Once upon a time"}, {"text": "The end"}],
        FormatInfo("sft", "text", False),
        {"text": "Once upon a time"},
    ),
    "preference-explicit": (
        "preference",
        [{"prompt": "sky?", "chosen": "blue", "rejected": "green", "id": 7}],
        FormatInfo("preference", "explicit_prompt", False),
        {"prompt": [user("sky?")], "chosen": [bot("blue")], "rejected": [bot("green")]},
    ),
    "preference-explicit-messages": (
        "preference",
        [{"prompt": [user("sky?")], "chosen": [bot("blue")], "rejected": [bot("green")]}],
        FormatInfo("preference", "explicit_prompt", True),
        {"prompt": [user("sky?")], "chosen": [bot("blue")], "rejected": [bot("green")]},
    ),
    "preference-implicit": (
        "preference",
        [
            {
                "chosen": [user("hi"), bot("hey"), user("sky?"), bot("blue")],
                "rejected": [user("hi"), bot("hey"), user("sky?"), bot("green")],
            }
        ],
        FormatInfo("preference", "implicit_prompt", True),
        {
            "prompt": [user("hi"), bot("hey"), user("sky?")],
            "chosen": [bot("blue")],
            "rejected": [bot("green")],
        },
    ),
    "preference-implicit-text": (
        "preference",
        [{"chosen": "Human: sky? Assistant: yes, blue", "rejected": "Human: sky? Assistant: yeah green"}],
        FormatInfo("preference", "implicit_prompt", False),
        {
            "prompt": [user("Human: sky? Assistant: ")],
            "chosen": [bot("yes, blue")],
            "rejected": [bot("yeah green")],
        },
    ),
    "ranked": (
        "ranked",
        [{"prompt": "sky?", "responses": ["blue", "azure", "green"], "ranks": [1, 1, 2]}],
        FormatInfo("ranked", "standard", False),
        {
            "prompt": [user("sky?")],
            "responses": [[bot("blue")], [bot("azure")], [bot("green")]],
            "ranks": [1, 1, 2],
        },
    ),
    "ranked-messages": (
        "ranked",
        [{"prompt": [user("sky?")], "responses": [[bot("blue")], [bot("green")]], "ranks": [2, 1]}],
        FormatInfo("ranked", "conversational", True),
        {"prompt": [user("sky?")], "responses": [[bot("blue")], [bot("green")]], "ranks": [2, 1]},
    ),
    "unpaired": (
        "unpaired",
        [
            {"prompt": "sky?", "completion": "green", "label": False},
            {"prompt": "a", "completion": "b", "label": True},
        ],
        FormatInfo("unpaired", "standard", False),
        {"prompt": [user("sky?")], "completion": [bot("green")], "label": False},
    ),
    "unpaired-messages": (
        "unpaired",
        [{"prompt": [user("sky?")], "completion": [bot("blue")], "label": True}],
        FormatInfo("unpaired", "conversational", True),
        {"prompt": [user("sky?")], "completion": [bot("blue")], "label": True},
    ),
    "prompts-prompt": (
        "prompts",
        [{"prompt": "sky?"}, {"prompt": "sea?"}],
        FormatInfo("prompts", "prompt", False),
        {"prompt": [user("sky?")]},
    ),
    "prompts-prompt-messages": (
        "prompts",
        [{"prompt": [{"role": "system", "content": "be brief"}, user("sky?")]}],
        FormatInfo("prompts", "prompt", True),
        {"prompt": [{"role": "system", "content": "be brief"}, user("sky?")]},
    ),
    "prompts-messages": (
        "prompts",
        [{"messages": [user("hi"), bot("hey"), user("sky?")]}],
        FormatInfo("prompts", "messages", True),
        {"prompt": [user("hi"), bot("hey"), user("sky?")]},
    ),
}


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("case", list(CASES))
def test_every_format_and_variant_from_every_file_type(tmp_path, case, writer):
    kind, records, expected_info, expected_first = CASES[case]
    path = WRITERS[writer](tmp_path / "data", records)
    ds, info = load_dataset_file(path, kind)
    assert info == expected_info
    assert len(ds) == len(records)
    first = {k: v for k, v in ds[0].items()}
    normalised = to_conversation(first, info.kind, info.variant)
    if "ranks" in normalised:  # Parquet/Arrow may widen ints to floats; the values are what matter
        normalised["ranks"] = [int(r) for r in normalised["ranks"]]
    assert normalised == expected_first


def test_normalise_dataset_keeps_the_line_column(tmp_path):
    path = write_jsonl(tmp_path / "d", [{"prompt": "hi", "completion": "hello", "source": "x"}])
    ds, info = load_dataset_file(path, "sft")
    out = normalise_dataset(ds, info)
    assert set(out.column_names) == {"__line__", "messages"}
    assert out[0]["messages"] == [user("hi"), bot("hello")]


# ----------------------------------------------------------------------------------- exact messages


def test_error_names_file_line_and_field_exactly(tmp_path):
    path = tmp_path / "chat.jsonl"
    good = {"messages": [user("hi"), bot("hello")]}
    bad = {"messages": [user("hi"), {"role": "bot", "content": "hello"}]}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(AlignError) as info:
        load_dataset_file(path, "sft")
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), 3, "messages[1].role")
    assert str(err) == (
        f"{path}:3, field 'messages[1].role': unknown role 'bot'; "
        "expected one of system, user, assistant, tool"
    )


def test_several_bad_records_are_listed_in_one_error(tmp_path):
    records = [{"prompt": "p", "completion": None}, {"prompt": "ok", "completion": "a"}] + [
        {"prompt": "p", "completion": "", "label": "x"} for _ in range(5)
    ]
    records[2:] = [{"prompt": [user("a")], "completion": [user("b")]}] * 5
    records[:2] = [
        {"prompt": [user("p")], "completion": None},
        {"prompt": [user("ok")], "completion": [bot("a")]},
    ]
    path = write_jsonl(tmp_path / "d", records)
    with pytest.raises(AlignError) as info:
        load_dataset_file(path, "sft")
    err = info.value
    assert (err.line, err.field) == (1, "completion")
    lines = str(err).splitlines()
    assert (
        lines[0]
        == f"{path}:1, field 'completion': missing; this sft data needs prompt + completion on every record"
    )
    assert lines[1] == "5 more problems:"
    assert lines[2] == (
        f"  {path}:3, field 'completion[0].role': expected 'assistant' in a completion, got 'user'; "
        "earlier turns belong in 'prompt'"
    )
    ds = load_records(path)
    with pytest.raises(AlignError) as info:
        validate(ds, "sft", str(path), max_errors=3)
    assert str(info.value).splitlines()[-1] == "  ... and 3 more"
    assert len(str(info.value).splitlines()) == 5  # first, header, 2 listed, and the rest counted


def bad(tmp_path, kind: str, records: list[dict[str, Any]], writer=write_jsonl) -> AlignError:
    path = writer(tmp_path / "d", records)
    with pytest.raises(AlignError) as info:
        load_dataset_file(path, kind)
    assert info.value.file == str(path)
    return info.value


@pytest.mark.parametrize(
    ("messages", "field", "text"),
    [
        ([{"content": "hi"}, bot("a")], "messages[0].role", "missing; expected one of system, user"),
        ([user("hi"), {"role": "assistant"}], "messages[1].content", "missing"),
        ([user("hi"), {"role": "robot", "content": "a"}], "messages[1].role", "unknown role 'robot'"),
        ([user("hi"), "hello"], "messages[1]", "expected a message {role, content}, got a string"),
        ([], "messages", "is an empty list"),
        ([user("hi")], "messages", "has no assistant turn"),
    ],
)
def test_message_problems(tmp_path, messages, field, text):
    # CSV: JSONL would already refuse a list mixing strings and objects when loading (see test_data_io)
    err = bad(tmp_path, "sft", [{"messages": messages}], writer=write_csv)
    assert err.line == 2 and err.field == field  # CSV: the header is line 1
    assert text in err.message


def test_non_string_content(tmp_path):
    err = bad(
        tmp_path, "sft", [{"messages": [{"role": "user", "content": 4}, {"role": "assistant", "content": 5}]}]
    )
    assert err.field == "messages[0].content" and "expected a string, got int" in err.message


def test_wrong_type(tmp_path):
    err = bad(tmp_path, "preference", [{"prompt": "p", "chosen": 3, "rejected": "r"}])
    assert err.field == "chosen" and err.message == "expected a string or a list of messages, got int"


def test_missing_fields_name_the_variants(tmp_path):
    err = bad(tmp_path, "sft", [{"question": "q", "answer": "a"}])
    assert err.line is None
    assert (
        "`messages`" in err.message and "`prompt` + `completion`" in err.message and "`text`" in err.message
    )
    assert "question, answer" in err.message
    err = bad(tmp_path, "preference", [{"prompt": "q", "chosen": "a"}])
    assert err.field == "rejected" and "implicit prompt" in err.message


def test_missing_value_in_one_record(tmp_path):
    err = bad(
        tmp_path,
        "unpaired",
        [{"prompt": "p", "completion": "c", "label": True}, {"prompt": "p", "completion": "c"}],
    )
    assert (err.line, err.field) == (2, "label")
    assert "missing" in err.message


def test_unknown_kind(tmp_path):
    with pytest.raises(AlignError) as info:
        load_dataset_file(write_jsonl(tmp_path / "d", [{"text": "a"}]), "pretrain")
    assert info.value.field == "kind" and "sft, preference, ranked, unpaired, prompts" in info.value.message
    assert FORMATS == ("sft", "preference", "ranked", "unpaired", "prompts")


# ------------------------------------------------------------------------------------ prompts kind


def test_prompt_messages_ending_with_an_answer(tmp_path):
    err = bad(tmp_path, "prompts", [{"messages": [user("hi"), bot("hello")]}])
    assert err.field == "messages[1].role" and "must end with a user turn" in err.message
    err = bad(tmp_path, "prompts", [{"prompt": [user("hi"), bot("hello")]}])
    assert err.field == "prompt[1].role"


@pytest.mark.parametrize(
    ("kind", "record", "field"),
    [
        ("preference", {"prompt": "", "chosen": "a", "rejected": "b"}, "prompt"),
        ("preference", {"prompt": "  \n ", "chosen": "a", "rejected": "b"}, "prompt"),
        ("preference", {"prompt": [user("context"), bot("ok"), user(" ")], "chosen": "a", "rejected": "b"},
         "prompt[2].content"),
        ("unpaired", {"prompt": "", "completion": "a", "label": True}, "prompt"),
        ("ranked", {"prompt": "", "responses": ["a", "b"], "ranks": [1, 2]}, "prompt"),
        ("prompts", {"prompt": ""}, "prompt"),
        ("prompts", {"messages": [{"role": "system", "content": "be kind"}, user("")]}, "messages[1].content"),
        ("sft", {"prompt": " ", "completion": "a"}, "prompt"),
    ],
)
def test_empty_prompts_are_refused_with_file_line_and_field(tmp_path, kind, record, field):
    listed = isinstance(record.get("prompt"), list)  # a field keeps one type across records
    good = {"preference": {"prompt": [user("hi")] if listed else "hi", "chosen": "a", "rejected": "b"},
            "unpaired": {"prompt": "hi", "completion": "a", "label": True},
            "ranked": {"prompt": "hi", "responses": ["a", "b"], "ranks": [1, 2]},
            "prompts": {"prompt": "hi"} if "prompt" in record else {"messages": [user("hi")]},
            "sft": {"prompt": "hi", "completion": "a"}}[kind]
    if kind == "prompts":  # as a format, a blank prompt passes (the app may skip it); PPO and eval refuse it
        from alignment.data.prompts import load_prompt_file

        path = write_jsonl(tmp_path / "d", [good, record])
        load_dataset_file(path, kind)
        with pytest.raises(AlignError) as info:
            load_prompt_file(path)
        err = info.value
        assert err.file == str(path)
    else:
        err = bad(tmp_path, kind, [good, record])
    assert (err.line, err.field) == (2, field)
    assert "is empty" in err.message


def test_prompt_file_deduplicates_first_and_skips_blank_prompts_when_asked(tmp_path):
    """PPO de-duplicates its prompts, the feedback app skips blank ones; a refusal still names the first
    blank line, which de-duplication keeps."""
    from alignment.data.prompts import load_prompt_file

    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": " "}, {"prompt": "a "}, {"prompt": ""}])
    blank: list[int] = []
    assert load_prompt_file(path, blank_lines=blank)[0] == [[user("a")], [user("a ")]] and blank == [2, 4]
    blank = []
    assert load_prompt_file(path, dedup="whitespace", blank_lines=blank)[0] == [[user("a")]] and blank == [2]
    with pytest.raises(AlignError) as info:
        load_prompt_file(path, dedup="whitespace")
    assert (info.value.line, info.value.field) == (2, "prompt")


# ----------------------------------------------------------------------------------- preference


def test_implicit_prompt_is_the_longest_shared_prefix():
    record = {
        "chosen": [{"role": "system", "content": "s"}, user("q"), bot("good")],
        "rejected": [{"role": "system", "content": "s"}, user("q"), bot("bad")],
    }
    out = to_conversation(record, "preference", "implicit_prompt")
    assert out == {
        "prompt": [{"role": "system", "content": "s"}, user("q")],
        "chosen": [bot("good")],
        "rejected": [bot("bad")],
    }


@pytest.mark.parametrize(
    ("chosen", "rejected", "field", "text"),
    [
        ([user("a"), bot("x")], [user("b"), bot("y")], "chosen", "shares no opening turns"),
        ([user("a"), bot("x")], [user("a"), bot("x")], "rejected", "is identical to 'chosen'"),
        (
            [user("a"), bot("x"), user("b"), bot("y")],
            [user("a"), bot("z"), user("b"), bot("y")],
            "rejected",
            "the last turns must differ",
        ),
        (
            [user("a"), bot("x"), user("b"), bot("y")],
            [user("a"), bot("x"), user("c"), bot("y")],
            "chosen[2].role",
            "first differ at a 'user' turn",
        ),
        ([user("a"), bot("x")], [user("a"), bot("x"), user("more")], "chosen", "has no turns after"),
        ("same text", "same text", "rejected", "is identical"),
        ("alpha", "beta", "chosen", "shares no opening text"),
    ],
)
def test_implicit_prompt_errors(tmp_path, chosen, rejected, field, text):
    err = bad(tmp_path, "preference", [{"chosen": chosen, "rejected": rejected}])
    assert err.field == field and text in err.message


def test_explicit_completion_must_be_assistant_turns(tmp_path):
    record = {"prompt": [user("q")], "chosen": [user("x"), bot("a")], "rejected": [bot("b")]}
    err = bad(tmp_path, "preference", [record])
    assert err.field == "chosen[0].role" and "earlier turns belong in 'prompt'" in err.message


# ------------------------------------------------------------------------------------------ ranked


@pytest.mark.parametrize(
    ("responses", "ranks", "field", "text"),
    [
        (["a"], [1], "responses", "at least 2 responses"),
        (["a", "b"], [1, 2, 3], "ranks", "has 3 ranks but 'responses' has 2"),
        (["a", "b"], [1, "first"], "ranks[1]", "expected a number"),
        (["a", 3], [1, 2], "responses[1]", "got int"),
    ],
)
def test_ranked_errors(tmp_path, responses, ranks, field, text):
    # CSV: JSONL would already refuse a list mixing strings and numbers when loading (see test_data_io)
    err = bad(tmp_path, "ranked", [{"prompt": "p", "responses": responses, "ranks": ranks}], writer=write_csv)
    assert err.field == field and text in err.message


# ----------------------------------------------------------------------------------------- unpaired


def test_unpaired_labels_from_csv_strings(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion,label\np,a,true\np,b,False\np,c,1\np,d,0\np,e, TRUE \n")
    ds, info = load_dataset_file(path, "unpaired")
    labels = [to_conversation(ds[i], info.kind, info.variant)["label"] for i in range(len(ds))]
    assert labels == [True, False, True, False, True]


def test_unpaired_bad_label(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion,label\np,a,true\np,b,maybe\n")
    with pytest.raises(AlignError) as info:
        load_dataset_file(path, "unpaired")
    assert str(info.value) == f"{path}:3, field 'label': expected true or false, got 'maybe'"


# ---------------------------------------------------------------------------------------------- CSV


def test_csv_text_that_starts_with_a_bracket_stays_text(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,completion\n[INST] hi [/INST],hello\n")
    ds, info = load_dataset_file(path, "sft")
    assert to_conversation(ds[0], "sft", info.variant) == {
        "messages": [user("[INST] hi [/INST]"), bot("hello")]
    }


def test_csv_messages_with_broken_json(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('messages\n"[{""role"": ""user"", ""content"": ""hi""}"\n')
    with pytest.raises(AlignError) as info:
        load_dataset_file(path, "sft")
    assert (info.value.line, info.value.field) == (2, "messages")
    assert "not valid JSON" in info.value.message


def test_detect_variant_without_validating():
    ds = datasets.Dataset.from_list([{"chosen": "x y", "rejected": "x z"}])
    assert detect_variant(ds, "preference", "mem") == FormatInfo("preference", "implicit_prompt", False)


def test_to_conversation_rejects_an_invalid_record():
    with pytest.raises(AlignError) as info:
        to_conversation({"text": 3}, "sft", "text")
    assert info.value.field == "text"
