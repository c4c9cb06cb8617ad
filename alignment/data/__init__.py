"""The data layer: load a file, recognise and validate its format, de-duplicate, split.

Typical use (what the SFT phase and ``align data validate`` do)::

    ds, info = load_dataset_file("data/train.jsonl", "sft")     # AlignError names file:line and field
    ds, removed = deduplicate(ds, info.kind, info.variant, "exact")
    parts = split_dataset(ds, {"train": 0.95, "validation": 0.05}, seed=0)
    train = normalise_dataset(parts["train"], info)             # {"messages": [...]} per row
"""

from alignment.data.dedup import count_duplicates, deduplicate, normalise_whitespace, record_key
from alignment.data.formats import (
    FORMATS,
    FormatInfo,
    detect_variant,
    load_dataset_file,
    normalise_dataset,
    to_conversation,
    validate,
)
from alignment.data.io import LINE_COLUMN, iter_records, load_records, record_location
from alignment.data.splits import split_dataset

__all__ = [
    "FORMATS",
    "LINE_COLUMN",
    "FormatInfo",
    "count_duplicates",
    "deduplicate",
    "detect_variant",
    "iter_records",
    "load_dataset_file",
    "load_records",
    "normalise_dataset",
    "normalise_whitespace",
    "record_key",
    "record_location",
    "split_dataset",
    "to_conversation",
    "validate",
]
