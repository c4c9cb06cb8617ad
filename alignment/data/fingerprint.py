"""What a phase's data is, as a short hash: a pipeline re-runs a complete phase when its data changed.

A data file (or a saved dataset folder) is hashed by content, so a new export under the same name counts as
new data and a touched file with the same bytes does not. A feedback store named as data is exported to a
file in the run folder before the phase (:func:`alignment.pipeline.export_feedback_stores`) and that file is
hashed, so new or revised judgments that change the exported pairs re-run the phases that train on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# files a phase recipe reads
DATA_FIELDS = ("data.train", "data.validation", "data.test", "data.preferred", "data.curate.seeds", "policies")
CHUNK = 1 << 20


def file_digest(path: Path, h: Any) -> None:
    """Feed a file's bytes to the hash ``h`` a chunk at a time (a model's weights need not fit in memory)."""
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)


def source_digest(spec: str) -> str:
    """A content hash of one data source: a file or a saved dataset folder (``DIR`` or ``DIR::split``).
    "missing" when absent."""
    h = hashlib.sha256()
    path = Path(spec)
    if not path.exists() and "::" in spec:
        path = Path(spec.rsplit("::", 1)[0])  # a split of a saved DatasetDict: the whole folder counts
    if path.is_file():
        file_digest(path, h)
    elif path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0")
            file_digest(f, h)
    else:
        return "missing"
    return h.hexdigest()[:16]


def config_sources(cfg: Any, fields: Iterable[str] = DATA_FIELDS) -> dict[str, str]:
    """``{dotted field: path}`` of the data sources a phase config names (unset fields left out)."""
    found: dict[str, str] = {}
    for dotted in fields:
        node: Any = cfg
        for part in dotted.split("."):
            node = getattr(node, part, None)
        if isinstance(node, str) and node:
            found[dotted] = node
    return found


def data_fingerprint(sources: dict[str, str]) -> dict[str, str]:
    """``{dotted field: content hash}`` of each source."""
    return {name: source_digest(spec) for name, spec in sources.items()}
