"""Turn the store's judgments into training data: preference pairs and unpaired examples.

What each judgment (the latest revision of each annotator's judgment of an item) becomes:

- a **ranking** -> preference pairs through :func:`alignment.data.pairs.ranking_to_pairs` with the chosen
  policy (``all`` / ``best-vs-rest`` / ``adjacent``); ties make no pair. Not when the annotator ticked
  "all unacceptable": a ranking of bad answers says which is least bad, not what is good;
- a **corrected answer** -> chosen over the response it corrects (over every response when all were
  unacceptable), and an unpaired ``label: true`` example;
- a **negative example** -> an unpaired ``label: false`` example and, where a good answer exists (the
  correction, else the responses ranked first), rejected against it;
- "all unacceptable" -> every response as an unpaired ``label: false`` example.

Every row carries ``provenance``: annotator, time, revision, guideline version, item and judgment ids,
and for each side of a pair the model that generated it and its decoding settings (JSON text, so rows
from different models share one column type).

A store named as a phase's data (``data.train: feedback.db[#project]``) becomes a file through
:func:`materialise`, which the top layer (``align``, pipelines: :func:`alignment.pipeline.export_feedback_stores`)
calls before the phase: the training library reads files and never imports this app.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alignment.data.pairs import PAIR_POLICIES, ranking_to_pairs
from feedback_app.store import Candidate, Item, Project, Store, StoredJudgment, StoreError, is_store

Row = dict[str, Any]


@dataclass
class Export:
    pairs: list[Row] = field(default_factory=list)  # prompt / chosen / rejected / margin / provenance
    unpaired: list[Row] = field(default_factory=list)  # prompt / completion / label / provenance
    judgments: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str, n: int = 1) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + n


def split_store_spec(spec: str | Path) -> tuple[str, str | None]:
    """``feedback.db#project`` -> ("feedback.db", "project"); no ``#`` -> every project."""
    text = str(spec)
    if "#" in text and not Path(text).exists():
        base, project = text.rsplit("#", 1)
        return base, project or None
    return text, None


def export_store(store: Store, *, project: str | None = None, pairs: str = "all") -> Export:
    """Every project's (or one project's) current judgments as training rows."""
    if pairs not in PAIR_POLICIES:
        raise StoreError(f"--pairs must be one of {', '.join(PAIR_POLICIES)}, not '{pairs}'")
    chosen_projects = store.list_projects()
    if project is not None:
        chosen_projects = [p for p in chosen_projects if p.name == project]
        if not chosen_projects:
            names = ", ".join(p.name for p in store.list_projects()) or "none"
            raise StoreError(f"no project '{project}' in the store (projects: {names})")
    out = Export()
    for proj in chosen_projects:
        cache: dict[int, Item] = {}
        for sj in store.latest_judgments(proj.id):
            item = cache.get(sj.item_id) or store.item(sj.item_id)
            assert item is not None
            cache[sj.item_id] = item
            judgment_rows(item, sj, proj, pairs, out)
    return out


def judgment_rows(item: Item, sj: StoredJudgment, project: Project, policy: str, out: Export) -> None:
    """Append the rows one judgment yields to ``out`` (see the module docstring)."""
    j = sj.judgment
    out.judgments += 1
    by_id = {c.id: c for c in item.candidates}
    base = _provenance(item, sj, project)
    prompt = item.prompt

    def pair(kind: str, chosen: str, rejected: str, chosen_c: Candidate | None, rejected_c: Candidate | None,
             margin: float | None = None) -> None:
        out.pairs.append({"prompt": prompt, "chosen": _answer(chosen), "rejected": _answer(rejected),
                          "margin": margin,
                          "provenance": {**base, "kind": kind, **_side("chosen", chosen_c, sj.user_name),
                                         **_side("rejected", rejected_c, sj.user_name)}})
        out.count(kind)

    def single(kind: str, text: str, label: bool, cand: Candidate | None) -> None:
        out.unpaired.append({"prompt": prompt, "completion": _answer(text), "label": label,
                             "provenance": {**base, "kind": kind, **_side("completion", cand, sj.user_name)}})
        out.count(f"{kind} (unpaired)")

    if not j.all_unacceptable and j.ranks:
        ids = [cid for cid in by_id if cid in j.ranks]
        for p in ranking_to_pairs([by_id[i].text for i in ids], [j.ranks[i] for i in ids], policy):
            pair("ranking", p.chosen, p.rejected, by_id[ids[p.chosen_index]], by_id[ids[p.rejected_index]],
                 float(p.rejected_rank - p.chosen_rank))
    correction = j.correction.strip()
    if correction:
        replaced = list(by_id.values()) if j.all_unacceptable else [by_id[j.correction_of]]
        for cand in replaced:
            if cand.text.strip() != correction:
                pair("correction", correction, cand.text, None, cand)
        single("correction", correction, True, None)
    if j.all_unacceptable:
        for cand in by_id.values():
            single("unacceptable", cand.text, False, cand)
    negative = j.negative.strip()
    if negative:
        single("negative", negative, False, None)
        if correction:
            good: list[tuple[str, Candidate | None]] = [(correction, None)]
        elif not j.all_unacceptable and j.ranks:
            best = min(j.ranks.values())
            good = [(by_id[i].text, by_id[i]) for i in by_id if j.ranks.get(i) == best]
        else:
            good = []
        for text, cand in good:
            if text.strip() != negative:
                pair("negative", text, negative, cand, None)
        if not good:
            out.count("negative without a good answer")


def write_export(export: Export, out: str | Path) -> tuple[Path, Path]:
    """Preference pairs to ``out``, unpaired rows beside it (``X.jsonl`` -> ``X.unpaired.jsonl``); atomic."""
    path = Path(out)
    unpaired = path.with_name(path.name.removesuffix(".jsonl") + ".unpaired.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, rows in ((path, export.pairs), (unpaired, export.unpaired)):
        _atomic_jsonl(target, rows)
    return path, unpaired


def preference_examples(spec: str | Path, pair_policy: str = "all") -> tuple[list[Any], dict[str, Any]]:
    """The store's preference pairs (``feedback.db[#project]`` or a URL): what :func:`materialise` writes."""
    from alignment.data.preferences import PreferenceExample
    from alignment.errors import AlignError

    url, project = split_store_spec(spec)
    try:
        store = Store(url, create=False)
        export = export_store(store, project=project, pairs=pair_policy)
        store.close()
    except StoreError as e:
        raise AlignError(str(e), file=str(spec)) from None
    examples = [PreferenceExample(r["prompt"], r["chosen"], r["rejected"], r["margin"]) for r in export.pairs]
    orphans = export.by_kind.get("negative without a good answer", 0)
    return examples, {"kind": "feedback", "variant": "store", "duplicates_removed": 0, "rows": export.judgments,
                      "pairs": len(examples), "orphan_negatives": orphans, "by_kind": dict(export.by_kind)}


# ------------------------------------------------------------------------------------- store as data

EMPTY_STORE = "the feedback store holds no judgments that make preference pairs yet"


def is_store_spec(spec: str | Path) -> bool:
    """A feedback store named as data: ``feedback.db``, ``feedback.db#project`` or a database URL."""
    return is_store(split_store_spec(spec)[0])


def provenance_path(out: str | Path) -> Path:
    """``DIR/train.jsonl`` -> ``DIR/train.provenance.json``."""
    path = Path(out)
    return path.with_name(path.name.removesuffix(".jsonl") + ".provenance.json")


def materialise(spec: str | Path, out: str | Path, pair_policy: str = "all") -> dict[str, Any]:
    """Export the store's preference pairs to ``out`` for a training phase; returns the provenance.

    The rows are exactly :func:`preference_examples`, in its order, in the ``preference`` format the data
    loaders read (``prompt`` / ``chosen`` / ``rejected`` message lists, ``margin`` when known). Beside them,
    ``<name>.provenance.json``: the store, project, pair policy, export time and counts. When the file already
    holds these exact rows neither file is rewritten, so a re-run keeps the time the rows were exported.
    Raises AlignError (naming ``spec``) for a missing store or project, and for a store with no pairs yet.
    """
    from alignment.errors import AlignError

    examples, info = preference_examples(spec, pair_policy)
    if not examples:
        raise AlignError(EMPTY_STORE, file=str(spec))
    rows = [{"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected,
             **({"margin": e.margin} if e.margin is not None else {})} for e in examples]
    text = _jsonl_bytes(rows)
    path, prov_path = Path(out), provenance_path(out)
    if path.is_file() and prov_path.is_file() and path.read_bytes() == text:
        return json.loads(prov_path.read_text(encoding="utf-8"))
    url, project = split_store_spec(spec)
    provenance = {
        "source": _public(url) + (f"#{project}" if project else ""), "store": _public(url), "project": project,
        "pair_policy": pair_policy, "exported_at": _iso(time.time()), "format": "preference",
        "file": path.name, "sha256": hashlib.sha256(text).hexdigest(), "judgments": info["rows"],
        "pairs": len(rows), "orphan_negatives": info["orphan_negatives"], "by_kind": info["by_kind"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, text)
    _atomic_write(prov_path, (json.dumps(provenance, indent=2) + "\n").encode("utf-8"))
    return provenance


def summary_lines(export: Export) -> list[str]:
    lines = [f"{export.judgments} judgments -> {len(export.pairs)} preference pairs, "
             f"{len(export.unpaired)} unpaired rows"]
    lines += [f"  {kind}: {n}" for kind, n in sorted(export.by_kind.items())]
    return lines


# ------------------------------------------------------------------------------------------------ helpers


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


def _provenance(item: Item, sj: StoredJudgment, project: Project) -> dict[str, Any]:
    return {"source": "feedback", "project": project.name, "item_id": item.id, "judgment_id": sj.id,
            "annotator": sj.user_name, "annotator_id": sj.user_id, "annotated_at": _iso(sj.created_at),
            "revision": sj.revision, "guideline_version": sj.guideline_version}


def _side(name: str, cand: Candidate | None, annotator: str) -> dict[str, Any]:
    """Where one side of a row came from: a model with its decoding settings, or the annotator's own text."""
    if cand is None:
        return {f"{name}_model": f"annotator:{annotator}", f"{name}_generation": "{}"}
    return {f"{name}_model": cand.model, f"{name}_generation": json.dumps(cand.generation, sort_keys=True)}


def _jsonl_bytes(rows: Iterable[Row]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def _atomic_jsonl(path: Path, rows: Iterable[Row]) -> None:
    _atomic_write(path, _jsonl_bytes(rows))


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename: readers see the old file or the new."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _public(store: str) -> str:
    """A store (path or database URL, no ``#project``) fit for a file others read: a URL's password hidden."""
    if "://" not in store:
        return store
    from sqlalchemy.engine import make_url

    try:
        return make_url(store).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: say only its scheme
        return store.split("://", 1)[0] + "://..."
