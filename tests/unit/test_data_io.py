"""Loading records: every file type, line numbers true to the file, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alignment.data import LINE_COLUMN, iter_records, load_records, record_location
from alignment.errors import AlignError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_skips_blank_lines_but_keeps_true_line_numbers(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n\n   \n{"text": "b"}\n{"text": "c"}\n')
    ds = load_records(path)
    assert ds[LINE_COLUMN] == [1, 4, 5]
    assert [record_location(ds, i) for i in range(3)] == [1, 4, 5]
    assert [r for _, r in iter_records(ds)] == [{"text": "a"}, {"text": "b"}, {"text": "c"}]


def test_jsonl_lines_end_at_newlines_only(tmp_path):
    """A string may hold U+2028 or U+0085 raw (json.dumps(..., ensure_ascii=False) writes them so), and a
    Windows file ends its lines with \\r\\n: neither splits or breaks a record."""
    rows = [{"text": "one\u2028line"}, {"text": "next\x85line"}]
    text = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n"
    path = tmp_path / "d.jsonl"
    path.write_bytes(text.encode("utf-8"))
    ds = load_records(path)
    assert [r for _, r in iter_records(ds)] == rows and ds[LINE_COLUMN] == [1, 2]


def test_ndjson_and_string_path(tmp_path):
    write(tmp_path / "d.ndjson", '{"text": "a"}\n')
    assert load_records(str(tmp_path / "d.ndjson"))["text"] == ["a"]


def test_keys_missing_from_the_first_record_are_kept(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"a": "x"}\n{"a": "y", "b": 2}\n')
    ds = load_records(path)
    assert ds["b"] == [None, 2]


def test_json_array_uses_record_index(tmp_path):
    path = write(tmp_path / "d.json", json.dumps([{"text": "a"}, {"text": "b"}], indent=2))
    ds = load_records(path)
    assert ds["text"] == ["a", "b"]
    assert ds[LINE_COLUMN] == [1, 2]


def test_json_file_with_json_lines_content(tmp_path):
    path = write(tmp_path / "d.json", '{"text": "a"}\n\n{"text": "b"}\n')
    assert load_records(path)[LINE_COLUMN] == [1, 3]


def test_csv_lines_count_the_header_and_multiline_cells(tmp_path):
    path = write(tmp_path / "d.csv", 'prompt,completion\n"multi\nline",b\n\nc,\n')
    ds = load_records(path)
    assert ds[LINE_COLUMN] == [2, 5]
    assert ds["prompt"] == ["multi\nline", "c"]
    assert ds["completion"] == ["b", None]  # an empty cell is a missing value


def test_csv_with_excel_bom(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("\ufefftext\nhello\n".encode())
    assert load_records(path).column_names == ["text", LINE_COLUMN]


def test_csv_keeps_json_looking_cells_as_strings(tmp_path):
    path = write(tmp_path / "d.csv", 'messages\n"[{""role"": ""user"", ""content"": ""hi""}]"\n')
    assert load_records(path)["messages"] == ['[{"role": "user", "content": "hi"}]']


def test_parquet_uses_record_index(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "a"}, {"text": "b"}]), path)
    ds = load_records(path)
    assert ds["text"] == ["a", "b"]
    assert ds[LINE_COLUMN] == [1, 2]


def test_saved_dataset_and_dataset_dict(tmp_path):
    datasets.Dataset.from_list([{"text": "a"}]).save_to_disk(str(tmp_path / "one"))
    assert load_records(tmp_path / "one")[LINE_COLUMN] == [1]
    datasets.DatasetDict(
        train=datasets.Dataset.from_list([{"text": "t"}]),
        validation=datasets.Dataset.from_list([{"text": "v1"}, {"text": "v2"}]),
    ).save_to_disk(str(tmp_path / "dict"))
    assert load_records(tmp_path / "dict")["text"] == ["t"]
    assert load_records(f"{tmp_path / 'dict'}::validation")["text"] == ["v1", "v2"]
    with pytest.raises(AlignError, match="has no 'test' split; it has train, validation"):
        load_records(f"{tmp_path / 'dict'}::test")


def test_a_saved_line_column_is_replaced(tmp_path):
    datasets.Dataset.from_list([{"text": "a", LINE_COLUMN: 99}]).save_to_disk(str(tmp_path / "d"))
    assert load_records(tmp_path / "d")[LINE_COLUMN] == [1]


# ------------------------------------------------------------------------------------------- errors


def raised(path) -> AlignError:
    with pytest.raises(AlignError) as info:
        load_records(path)
    return info.value


def test_missing_file(tmp_path):
    err = raised(tmp_path / "nope.jsonl")
    assert err.file == str(tmp_path / "nope.jsonl")
    assert "file not found" in str(err)


def test_unknown_extension(tmp_path):
    err = raised(write(tmp_path / "d.txt", "hello"))
    assert "unsupported file type '.txt'" in err.message
    assert ".jsonl" in err.message and ".parquet" in err.message


def test_invalid_json_line_names_the_line_and_the_json_error(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n\n{"text": "b",}\n')
    err = raised(path)
    assert (err.file, err.line) == (str(path), 3)
    assert str(err).startswith(f"{path}:3: invalid JSON: ")
    assert "column" in err.message


def test_line_that_is_not_an_object(tmp_path):
    err = raised(write(tmp_path / "d.jsonl", '{"text": "a"}\n["text"]\n'))
    assert err.line == 2
    assert "expected a JSON object, got a JSON array" in err.message


def test_pretty_printed_json_in_jsonl_gets_a_hint(tmp_path):
    err = raised(write(tmp_path / "d.jsonl", '{\n  "text": "a"\n}\n'))
    assert err.line == 1 and "pretty-printed" in err.message


@pytest.mark.parametrize(
    ("name", "text"),
    [("d.jsonl", ""), ("e.jsonl", "\n\n  \n"), ("f.json", "[]"), ("g.csv", ""), ("h.csv", "text\n")],
)
def test_empty_files(tmp_path, name, text):
    err = raised(write(tmp_path / name, text))
    assert err.file == str(tmp_path / name)
    assert "no" in err.message and ("records" in err.message or "rows" in err.message)


def test_json_file_with_one_pretty_printed_object(tmp_path):
    err = raised(write(tmp_path / "d.json", '{\n  "text": "a"\n}\n'))
    assert "holds one JSON object; expected a list of records" in err.message


def test_json_array_with_a_non_object(tmp_path):
    err = raised(write(tmp_path / "d.json", '[{"text": "a"}, 3]'))
    assert err.line == 2 and "not an object" in err.message


def test_json_syntax_error_names_the_line(tmp_path):
    err = raised(write(tmp_path / "d.json", '[\n{"text": "a"},\n{"text" "b"}\n]'))
    assert err.line == 3 and "invalid JSON" in err.message


def test_type_clash_names_the_line_and_field(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"},
    ]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows))
    err = raised(path)
    assert (err.line, err.field) == (3, "chosen")
    assert "is a list here but a string on line 1" in err.message


def test_nested_type_clash_names_the_message_field(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 7}]},
    ]
    err = raised(write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows)))
    assert (err.line, err.field) == (2, "messages[1].content")
    assert "a number here but a string in messages[0].content on line 1" in err.message


def test_csv_row_with_too_many_cells(tmp_path):
    err = raised(write(tmp_path / "d.csv", "a,b\n1,2\n1,2,3\n"))
    assert err.line == 3 and "3 cells" in err.message


def test_directory_that_is_not_a_saved_dataset(tmp_path):
    (tmp_path / "dir").mkdir()
    assert "save_to_disk" in raised(tmp_path / "dir").message


def test_not_utf8(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    err = raised(path)
    assert err.line == 2 and "UTF-8" in err.message


def test_not_parquet(tmp_path):
    assert "Parquet" in raised(write(tmp_path / "d.parquet", "not parquet")).message


def test_a_feedback_store_given_as_a_data_file_says_what_to_do(tmp_path):
    """The data layer reads files; a store reaches it only if nothing exported it: say so, naming it."""
    import sqlite3

    db = tmp_path / "feedback.db"
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    for spec in (str(db), f"{db}#desk", "postgresql+psycopg://ann@host/feedback"):
        with pytest.raises(AlignError, match="is a feedback store, not a data file") as e:
            load_records(spec)
        assert e.value.file == spec and "align feedback export" in str(e.value)
    with pytest.raises(AlignError, match="unsupported file type '.db'"):
        load_records(write(tmp_path / "notes.db", "just text"))
