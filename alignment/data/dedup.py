"""Drop repeated records before training.

Duplicates inflate the weight of a few examples and, once split, leak training data into validation.
Two records are duplicates when their normalised content (:func:`to_conversation`) is equal, so a
record written as ``prompt`` + ``completion`` strings and the same one as messages count as one;
``__line__`` and metadata columns (ids, sources, timestamps) are ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Literal

import datasets

from alignment.data.formats import to_conversation
from alignment.data.io import iter_records
from alignment.errors import AlignError

DedupMode = Literal["exact", "whitespace", "none"]
MODES = ("exact", "whitespace", "none")

_WHITESPACE = re.compile(r"\s+")


def normalise_whitespace(text: str) -> str:
    """Collapse runs of whitespace to one space and strip the ends; case is kept.

    Scraped and pasted data differ mostly in trailing newlines and double spaces, not in meaning.
    """
    return _WHITESPACE.sub(" ", text).strip()


def normalise_strings(value: Any) -> Any:
    """``value`` (a string, or lists and dicts holding strings: a record, a message list) with every string's
    whitespace normalised (:func:`normalise_whitespace`); other values as they are. Already-normal content comes
    back equal, so a key made of it is the key of the content as written."""
    return _map_strings(value, normalise_whitespace)


def record_key(record: dict[str, Any], kind: str, variant: str, mode: DedupMode = "exact") -> str:
    """Canonical JSON of a record's normalised content: equal keys mean duplicate records."""
    content = to_conversation(record, kind, variant)
    if mode == "whitespace":
        content = normalise_strings(content)
    return json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def deduplicate(
    ds: datasets.Dataset, kind: str, variant: str, mode: DedupMode = "exact"
) -> tuple[datasets.Dataset, int]:
    """Keep the first occurrence of each record, in order; return the kept rows and how many were removed.

    ``ds`` must be valid ``kind`` data (see :func:`~alignment.data.formats.validate`).
    """
    _check_mode(mode)
    if mode == "none":
        return ds, 0
    keep = _first_occurrences(ds, kind, variant, mode)
    removed = len(ds) - len(keep)
    return (ds if removed == 0 else ds.select(keep)), removed


def count_duplicates(ds: datasets.Dataset, kind: str, variant: str, mode: DedupMode = "exact") -> int:
    """How many records :func:`deduplicate` would remove (for the ``align data validate`` summary)."""
    _check_mode(mode)
    return 0 if mode == "none" else len(ds) - len(_first_occurrences(ds, kind, variant, mode))


def _first_occurrences(ds: datasets.Dataset, kind: str, variant: str, mode: DedupMode) -> list[int]:
    seen: set[str] = set()
    keep = []
    for i, (_, record) in enumerate(iter_records(ds)):
        key = record_key(record, kind, variant, mode)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise AlignError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}", field="dedup")


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    return value
