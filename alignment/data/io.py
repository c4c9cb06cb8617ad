"""Load records from JSONL, JSON, CSV, Parquet or a saved ``datasets`` directory.

Every loader returns a :class:`datasets.Dataset` with one extra column, ``__line__``, holding where each
record came from, so that validation run much later can still say ``data.jsonl:17``:

- JSONL (and JSON-lines content in a ``.json`` file): the physical line in the file, blank lines counted;
- CSV: the file line the row starts on (the header is line 1, so the first row is line 2);
- a JSON array, Parquet, a saved ``datasets`` directory: the 1-based record index.

Why not ``datasets.load_dataset("json", ...)``: it forgets line numbers, reports a bad line as a pyarrow
traceback, and writes a cache under ``~/.cache``. We parse text formats with :mod:`json` / :mod:`csv` and
hand the rows to :meth:`datasets.Dataset.from_dict`; binary formats go straight through pyarrow/datasets.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets.table import InMemoryTable

from alignment.errors import AlignError

LINE_COLUMN = "__line__"
JSONL_SUFFIXES = (".jsonl", ".ndjson")
SUFFIXES = (*JSONL_SUFFIXES, ".json", ".csv", ".parquet")

Row = tuple[int, dict[str, Any]]  # (line in the file, record)

SQLITE_HEADER = b"SQLite format 3\x00"
_cache: dict[Any, Any] | None = None  # see one_read_per_file


@contextmanager
def one_read_per_file() -> Iterator[None]:
    """Within this block each data file is parsed (:func:`load_records`) and validated as one kind
    (:func:`~alignment.data.formats.load_dataset_file`) once: a phase asks for the same file several times
    on its way to training (which kind is it, KTO or DPO, the pairs), and each answer is the same.

    A file counts as unchanged while its resolved path, inode, size and modification times stay the same;
    a saved ``datasets`` folder is read every time. Failures are never kept, so a second call raises the
    same error. Outside the block (and after it) nothing is kept; nested blocks share the outer one. The
    loaders that hand a phase its examples call :func:`release_reads` when done, so the raw records are not
    held through training.
    """
    global _cache
    if _cache is not None:
        yield
        return
    _cache = {}
    try:
        yield
    finally:
        _cache = None


def release_reads() -> None:
    """A phase has its examples: let go of what :func:`one_read_per_file` kept (the block stays open)."""
    if _cache is not None:
        _cache.clear()


def cache_key(path: str | Path) -> tuple[Any, ...] | None:
    """The key under which a file's reads are kept inside :func:`one_read_per_file`; None: not kept."""
    if _cache is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not Path(path).is_file():
        return None
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def cached(key: tuple[Any, ...] | None, what: Any) -> Any:
    """What :func:`keep` kept for this file key (``what``: which read), or None."""
    return None if key is None or _cache is None else _cache.get((key, what))


def keep(key: tuple[Any, ...] | None, what: Any, value: Any) -> Any:
    if key is not None and _cache is not None:
        _cache[(key, what)] = value
    return value


def load_records(path: str | Path) -> datasets.Dataset:
    """Load a data file (or saved ``datasets`` directory) into a Dataset with a ``__line__`` column.

    ``DIR::split`` picks a split of a saved ``DatasetDict`` (default ``train``). Raises :class:`AlignError`
    naming the file and line for anything a user must fix: a missing file, an unknown extension, a line
    that is not a JSON object, no records at all, or a field whose type changes from record to record.
    """
    key = cache_key(path)
    if (ds := cached(key, "records")) is not None:
        return ds
    return keep(key, "records", _load_records(path))


def _load_records(path: str | Path) -> datasets.Dataset:
    source = str(path)
    path, split = _split_spec(Path(path))
    if not path.exists():
        if _looks_like_store(source):
            raise AlignError(STORE_HINT, file=source)
        raise AlignError("file not found", file=source)
    if path.is_dir():
        return _with_lines(_load_saved(path, split, source), source)
    if split is not None:
        raise AlignError("'::split' only applies to a saved datasets directory", file=source)
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        rows = _jsonl_rows(_read_text(path, source), source)
    elif suffix == ".json":
        rows = _json_rows(_read_text(path, source), source)
    elif suffix == ".csv":
        rows = _csv_rows(_read_text(path, source), source)
    elif suffix == ".parquet":
        return _with_lines(_load_parquet(path, source), source)
    elif _looks_like_store(source):
        raise AlignError(STORE_HINT, file=source)
    else:
        raise AlignError(
            f"unsupported file type '{path.suffix or path.name}'; use {', '.join(SUFFIXES)}, "
            "or a directory written by Dataset.save_to_disk",
            file=source,
        )
    if not rows:
        raise AlignError("empty file: no records", file=source)
    return _from_rows(rows, source)


def record_location(ds: datasets.Dataset, i: int) -> int:
    """The line (or 1-based record index) that row ``i`` of ``ds`` came from, for error messages."""
    if LINE_COLUMN in ds.column_names:
        return int(ds[i][LINE_COLUMN])
    return i + 1


def iter_records(ds: datasets.Dataset, batch_size: int = 1000) -> Iterator[Row]:
    """Yield ``(line, record)`` for every row, without the ``__line__`` column.

    Reads in batches: row-by-row ``ds[i]`` is an order of magnitude slower on large files.
    """
    names = [c for c in ds.column_names if c != LINE_COLUMN]
    index = 0
    for batch in ds.iter(batch_size=batch_size):
        n = len(next(iter(batch.values()))) if batch else 0
        lines = batch.get(LINE_COLUMN) or range(index + 1, index + n + 1)
        for j in range(n):
            yield int(lines[j]), {name: batch[name][j] for name in names}
        index += n


STORE_HINT = ("is a feedback store, not a data file: `align` (rm, dpo, sft, run) exports a store named as an RM "
              "or DPO phase's data.train/data.validation (data.kind auto or feedback) or as SFT's data.preferred "
              "to JSONL in the run folder before the phase starts; anywhere else, export it first with "
              "`align feedback export --store STORE --out FILE`")


def _looks_like_store(source: str) -> bool:
    """A database URL or an SQLite file, ``#project`` allowed (the data layer reads files, never a store)."""
    if "://" in source and not source.startswith("file://"):
        return True
    for candidate in (source, source.rsplit("#", 1)[0]):
        p = Path(candidate)
        if p.is_file():
            with p.open("rb") as f:
                return f.read(16) == SQLITE_HEADER
    return False


# ---------------------------------------------------------------------------------------------- text


def _split_spec(path: Path) -> tuple[Path, str | None]:
    """``data_dir::validation`` -> (data_dir, "validation"); a real path containing '::' wins."""
    text = str(path)
    if "::" in text and not path.exists():
        base, split = text.rsplit("::", 1)
        return Path(base), split
    return path, None


def _read_text(path: Path, source: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: Excel writes a BOM before the CSV header
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise AlignError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=source, line=line) from None


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "a JSON array"
    if isinstance(value, str):
        return "a JSON string"
    if isinstance(value, bool) or value is None:
        return f"JSON {json.dumps(value)}"
    return "a JSON number"


def _jsonl_rows(text: str, source: str) -> list[Row]:
    """One JSON object per line; blank lines are skipped but still counted."""
    rows = []
    # "\n" only: str.splitlines also splits at U+2028, U+0085 and others, which a JSON string may hold raw
    # (json.dumps(..., ensure_ascii=False) writes them so); a "\r" left before "\n" is JSON whitespace.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            hint = ""
            if not rows and line.strip() in ("[", "{"):
                hint = (
                    "; this looks like pretty-printed JSON: name the file .json, or write one object per line"
                )
            raise AlignError(
                f"invalid JSON: {e.msg} (column {e.colno}){hint}", file=source, line=number
            ) from None
        if not isinstance(record, dict):
            raise AlignError(
                f"expected a JSON object, got {_json_type(record)}; each line must hold one record",
                file=source,
                line=number,
            )
        rows.append((number, record))
    return rows


def _json_rows(text: str, source: str) -> list[Row]:
    """A JSON array of objects (record index as the line), or JSON-lines content under a .json name."""
    if not text.lstrip().startswith("["):
        try:
            return _jsonl_rows(text, source)
        except AlignError:
            if not _is_one_object(text):
                raise
            raise AlignError(
                "holds one JSON object; expected a list of records [{...}, ...] or one object per line",
                file=source,
            ) from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise AlignError(f"invalid JSON: {e.msg} (column {e.colno})", file=source, line=e.lineno) from None
    rows = []
    for index, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise AlignError(
                f"record {index} is {_json_type(record)}, not an object; the file must be a list of objects",
                file=source,
                line=index,
            )
        rows.append((index, record))
    return rows


def _is_one_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _csv_rows(text: str, source: str) -> list[Row]:
    """Rows keyed by the header; every cell stays a string and an empty cell becomes None (missing).

    Message columns holding JSON (``[{"role": ...}]``) are parsed later, by validation, which knows
    which columns hold messages.
    """
    reader = csv.reader(text.splitlines(keepends=True))
    header: list[str] | None = None
    rows = []
    end = 0  # last physical line consumed; a quoted cell may span several lines
    for cells in reader:
        start, end = end + 1, reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if header is None:
            header = [cell.strip() for cell in cells]
            _check_header(header, source, start)
            continue
        if len(cells) != len(header):
            raise AlignError(
                f"row has {len(cells)} cells but the header has {len(header)} columns",
                file=source,
                line=start,
            )
        rows.append(
            (start, {name: (cell if cell != "" else None) for name, cell in zip(header, cells, strict=True)})
        )
    if header is not None and not rows:
        raise AlignError("no data rows after the header", file=source, line=1)
    return rows


def _check_header(header: list[str], source: str, line: int) -> None:
    for i, name in enumerate(header):
        if not name:
            raise AlignError(f"column {i + 1} of the header has no name", file=source, line=line)
        if name in header[:i]:
            raise AlignError(f"column '{name}' appears twice in the header", file=source, line=line)


def _from_rows(rows: list[Row], source: str) -> datasets.Dataset:
    """Build the Dataset column-wise, so a key missing from the first record is not dropped."""
    names: dict[str, None] = {}
    for _, record in rows:
        names.update(dict.fromkeys(record))
    names.pop(LINE_COLUMN, None)
    columns: dict[str, list[Any]] = {name: [record.get(name) for _, record in rows] for name in names}
    columns[LINE_COLUMN] = [line for line, _ in rows]
    try:
        return datasets.Dataset.from_dict(columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise _type_clash(rows, source) or AlignError(f"cannot build a table: {e}", file=source) from None


# ------------------------------------------------------------------------------------- type clashes


def _shape(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"  # pyarrow unifies int and float
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _walk(value: Any, path: str, template: str) -> Iterator[tuple[str, str, Any]]:
    """(concrete path, path template, value) per node: ``messages[2].content``, ``messages[].content``."""
    yield path, template, value
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]", f"{template}[]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}", f"{template}.{key}")


def _type_clash(rows: list[Row], source: str) -> AlignError | None:
    """Find the first field whose type differs from the first record that had it.

    pyarrow needs one type per column; its own error ("Expected bytes, got a 'list' object") names
    neither the line nor the field.
    """
    seen: dict[str, tuple[str, str, int]] = {}  # template -> (shape, concrete path, line) first seen
    for line, record in rows:
        for key, value in record.items():
            for path, template, node in _walk(value, key, key):
                shape = _shape(node)
                if shape is None:
                    continue
                first_shape, first_path, first_line = seen.setdefault(template, (shape, path, line))
                if first_shape != shape:
                    where = "" if first_path == path else f" in {first_path}"
                    return AlignError(
                        f"is {shape} here but {first_shape}{where} on line {first_line}; a field must have "
                        "the same type in every record and list item (e.g. all strings or all message lists)",
                        file=source,
                        line=line,
                        field=path,
                    )
    return None


# ------------------------------------------------------------------------------------------- binary


def _load_parquet(path: Path, source: str) -> datasets.Dataset:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise AlignError(f"not a readable Parquet file: {e}", file=source) from None
    return datasets.Dataset(InMemoryTable(table))


def _load_saved(path: Path, split: str | None, source: str) -> datasets.Dataset:
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise AlignError(
            "is a directory but not one written by Dataset.save_to_disk or DatasetDict.save_to_disk",
            file=source,
        ) from None
    if isinstance(loaded, datasets.Dataset):
        if split is not None:
            raise AlignError(f"has no splits (asked for '{split}'); drop '::{split}'", file=source)
        return loaded
    name = split or "train"
    if name not in loaded:
        raise AlignError(
            f"has no '{name}' split; it has {', '.join(loaded)}. Pick one with PATH::SPLIT",
            file=source,
        )
    return loaded[name]


def _with_lines(ds: datasets.Dataset, source: str) -> datasets.Dataset:
    """Add ``__line__`` as the 1-based record index, replacing one saved by an earlier run."""
    if len(ds) == 0:
        raise AlignError("empty dataset: no records", file=source)
    if LINE_COLUMN in ds.column_names:
        ds = ds.remove_columns(LINE_COLUMN)
    return ds.add_column(LINE_COLUMN, list(range(1, len(ds) + 1)))
