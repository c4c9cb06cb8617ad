"""Prompts files read into conversations: what PPO trains on, ``align eval`` asks, the feedback app loads.

One reader for all three, so they accept the same files and refuse a blank prompt with the same error. As a
format a blank prompt is valid (:func:`alignment.data.formats.validate` lets it pass) because the app may
skip such rows; whether to refuse or skip is decided here. A module of its own, not part of ``formats``,
because it also de-duplicates, and ``dedup`` imports ``formats``.
"""

from __future__ import annotations

from pathlib import Path

from alignment.data.dedup import DedupMode, deduplicate
from alignment.data.formats import FormatInfo, Message, blank_prompt, load_dataset_file, to_conversation
from alignment.data.io import iter_records
from alignment.errors import AlignError


def load_prompt_file(path: str | Path, *, dedup: DedupMode = "none",
                     blank_lines: list[int] | None = None) -> tuple[list[list[Message]], FormatInfo]:
    """The prompts of a prompts-format file (``prompt`` or ``messages``; JSONL/JSON/CSV/Parquet/datasets
    dir) as message lists, in file order, and the file's format.

    ``dedup`` drops repeated prompts first, keeping the first of each (PPO does, like every phase with its
    data). A blank prompt (no text in its last turn) is refused with an AlignError naming the file, line and
    field; given a ``blank_lines`` list, it is left out instead and its line appended there, for a caller
    that skips such rows and says which (the feedback app).
    """
    ds, info = load_dataset_file(path, "prompts")
    # Before the blank check, which still names the first blank line: that row is the first of its kind,
    # so de-duplication keeps it.
    ds, _ = deduplicate(ds, "prompts", info.variant, dedup)
    prompts = []
    for line, record in iter_records(ds):
        turns = to_conversation(record, "prompts", info.variant)["prompt"]
        if not blank_prompt(turns):
            prompts.append(turns)
        elif blank_lines is not None:
            blank_lines.append(line)
        else:
            field = "prompt" if info.variant == "prompt" else f"messages[{len(turns) - 1}].content"
            raise AlignError("is empty; a prompt needs the text the answer responds to", file=str(path),
                             line=line, field=field)
    return prompts, info
