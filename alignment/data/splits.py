"""Deterministic train/validation(/test) splits.

Why hash rows instead of shuffling (``Dataset.train_test_split``): a shuffle assigns a row by its
position, so appending a day of new feedback reshuffles every old row and validation scores stop being
comparable across runs. Here each row's split depends only on its own content and the seed (and, for a row
equal up to whitespace to an earlier one, that one's: see below): the row's
canonical JSON is hashed with blake2b (not Python's ``hash``, which changes with PYTHONHASHSEED) to a
number in [0, 1), and the ratios cut [0, 1) into intervals. Consequences, all intended:

- same data + same seed -> same split, on any machine and in any process;
- adding rows never moves existing ones (unless a whitespace twin of a row is added before it in the file);
- identical rows always land in the same split, so exact duplicates cannot leak across it; and so do rows
  equal up to whitespace (the normaliser of ``data.dedup: whitespace``), so under ``dedup: exact`` or
  ``none`` a record repeated with a trailing space cannot straddle train and a held-out part either: a row
  is placed where the first row equal to it up to whitespace (in file order) is placed by its own content;
- split sizes match the ratios only on average (binomially), which matters only for tiny datasets.

Why place a whitespace twin with the first rather than hash every row's normalised text: SFT answers hold
newlines, so hashing normalised records would have moved nearly every existing row (all 300 of the quickstart's)
to fix a leak that only exists under ``dedup: exact`` or ``none``; this way a row without a twin stays where it
was. Callers that split by prompt (the preference and unpaired loaders) pass a ``key`` that is the
whitespace-normalised prompt's JSON instead: a prompt written with normal whitespace keeps its key (and part),
and prompts rarely hold newlines.

For a tiny dataset where a split would come out empty, the row whose hash lies nearest that split's
interval is moved into it, so every split has a row whenever there are at least as many rows as splits.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import datasets

from alignment.data.dedup import normalise_strings
from alignment.data.io import iter_records
from alignment.errors import AlignError

DEFAULT_NAMES = ("train", "validation", "test")
TOLERANCE = 1e-6

SCHEME = 2
"""How rows are placed, recorded with each checkpoint's split (:func:`alignment.run.split_state`) so a run is
never resumed from a checkpoint whose parts were cut another way. 1: by the key as written (the whole record,
or the prompt's JSON); 2: text equal up to whitespace is one row or one prompt (a record's whitespace twin goes
where the first goes; a prompt's key is its whitespace-normalised JSON). Bump it whenever a row could land in
another part for the same data, settings and seed."""

SCHEME_CHANGES = {2: "rows and prompts equal up to whitespace are placed together, so one written with other "
                     "spacing may have moved between the parts"}
"""What each scheme changed, for the message refusing a resume across it."""


def split_dataset(
    ds: datasets.Dataset,
    ratios: Mapping[str, float] | tuple[float, ...],
    seed: int,
    key: Callable[[dict[str, Any]], str] | None = None,
) -> dict[str, datasets.Dataset]:
    """Split ``ds`` by ``ratios`` (``{"train": 0.9, "validation": 0.1}``, or ``(0.8, 0.1, 0.1)`` for
    train/validation/test). Rows keep their order within each split, and their ``__line__``.

    ``key`` maps a record to the text that is hashed; the default is the whole record without
    ``__line__``, a record equal up to whitespace to an earlier one taking that one's text (so the two land
    together). Pass e.g. ``lambda r: json.dumps(normalise_strings(r["prompt"]))`` to keep every record of a
    prompt (up to whitespace) in one split.
    """
    named = _check_ratios(ratios)
    names = list(named)
    uppers = list(_cumulative(named.values()))  # interval j is [uppers[j-1], uppers[j])
    if key is not None:
        keys = [key(r) for _, r in iter_records(ds)]
    else:
        first: dict[str, str] = {}  # whitespace-normalised record -> the text of the first row equal to it
        keys = [first.setdefault(_canonical(normalise_strings(r)), _canonical(r)) for _, r in iter_records(ds)]
    positions = [_position(k, seed) for k in keys]
    assigned = [min(bisect.bisect_right(uppers, u), len(names) - 1) for u in positions]
    if len(positions) >= len(names):
        _fill_empty(assigned, positions, uppers)
    return {name: ds.select([i for i, a in enumerate(assigned) if a == j]) for j, name in enumerate(names)}


def _check_ratios(ratios: Mapping[str, float] | tuple[float, ...]) -> dict[str, float]:
    """Positive ratios that sum to 1, as {split name: ratio}."""
    if isinstance(ratios, Mapping):
        named = dict(ratios)
    elif isinstance(ratios, (tuple, list)) and 1 <= len(ratios) <= len(DEFAULT_NAMES):
        named = dict(zip(DEFAULT_NAMES, ratios, strict=False))  # (0.9, 0.1): train + validation
    else:
        raise AlignError(
            f"expected ratios like {{train: 0.9, validation: 0.1}} or up to 3 numbers, got {ratios!r}",
            field="split",
        )
    if not named:
        raise AlignError("needs at least one split", field="split")
    for name, ratio in named.items():
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
            raise AlignError(f"ratio for '{name}' must be a number, got {ratio!r}", field="split")
        if ratio <= 0:
            raise AlignError(f"ratio for '{name}' must be positive, got {ratio}", field="split")
    total = sum(named.values())
    if abs(total - 1) > TOLERANCE:
        raise AlignError(f"ratios must sum to 1, these sum to {total:g}", field="split")
    return named


def held_out_ratios(split: Mapping[str, float], files: tuple[str, ...] = ()) -> dict[str, float]:
    """The ratios to cut the training data by: ``split`` without the held-out parts given as files (``files``:
    "validation", "test") or set to 0, whose share stays in train. ``{"train": ...}`` alone: nothing to cut.
    Unchanged (same order, same numbers, so the same rows go where they went) when nothing is left out."""
    dropped = [name for name, r in split.items() if name != "train" and (r <= 0 or name in files)]
    if not dropped:
        return dict(split)
    kept = {name: r for name, r in split.items() if name not in dropped}
    kept["train"] = split.get("train", 0.0) + sum(split[name] for name in dropped)
    return kept


def carve(ds: datasets.Dataset, split: Mapping[str, float], seed: int, files: tuple[str, ...] = (),
          key: Callable[[dict[str, Any]], str] | None = None) -> dict[str, datasets.Dataset]:
    """Cut the held-out parts (validation, test) that are not given as ``files`` out of ``ds`` with
    :func:`split_dataset`; ``{"train": ds}`` when there is none. The parts are disjoint and deterministic."""
    ratios = held_out_ratios(split, files)
    if len(ratios) == 1:
        return {"train": ds}
    return split_dataset(ds, ratios, seed, key=key)


def _cumulative(ratios: Any) -> list[float]:
    uppers, total = [], 0.0
    for ratio in ratios:
        total += ratio
        uppers.append(total)
    uppers[-1] = 1.0  # absorb rounding: every u in [0, 1) falls in some interval
    return uppers


def _canonical(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _position(text: str, seed: int) -> float:
    """A reproducible number in [0, 1) for ``text`` under ``seed``."""
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _fill_empty(assigned: list[int], positions: list[float], uppers: list[float]) -> None:
    """Move into each empty split the row nearest its interval, taken from a split that can spare one."""
    for j in range(len(uppers)):
        if j in assigned:
            continue
        lower, upper = (uppers[j - 1] if j else 0.0), uppers[j]
        counts = [assigned.count(s) for s in range(len(uppers))]
        spare = [i for i, s in enumerate(assigned) if counts[s] > 1]
        nearest = min(spare, key=lambda i: (max(lower - positions[i], positions[i] - upper, 0.0), i))
        assigned[nearest] = j
