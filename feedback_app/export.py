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

Head-to-head evaluation projects (:mod:`feedback_app.headtohead`) are never exported: an export of every project
leaves them out and says so (:attr:`Export.skipped_evaluations`), and naming one is refused. Their judgments grade
two models on held-out prompts; training on them would leak the test set into the next round.

Every row carries ``provenance``: annotator, time, revision, guideline version, item and judgment ids,
and for each side of a pair the model that generated it and its decoding settings (JSON text, so rows
from different models share one column type).

**Across annotators** (``aggregate``, one of :data:`~feedback_app.agreement.AGGREGATIONS`). Several annotators
judge one item, and their pairs may contradict each other. The pairs of one item are compared by their two
answers (content, surrounding whitespace stripped; a model answer or text an annotator wrote):

- an annotator *votes* "a over b" when their judgment gives that pair under the ``all`` pair policy (every
  strictly ordered pair of their ranking, whatever policy the export uses, plus their correction and negative
  pairs). A tie is no vote, and so is a ranking made with "all unacceptable" ticked, as it makes no pairs;
- the *proposed* rows are the pairs each judgment gives under the export's pair policy (today's rows). Rows
  with the same direction ("a over b") are one candidate row; what becomes of it is
  :func:`~feedback_app.agreement.decide` on its votes for and against: ``all`` keeps every proposed row as it
  is (no merging: today's export); the other modes write at most one row per direction: ``majority`` keeps a
  direction with more votes than the other (ties dropped), ``drop_contradicted`` one nobody voted against,
  ``agreement_weight`` every direction with ``weight`` = votes for / (votes for + votes against);
- a merged row is the first proposed row of its direction (in store order) with ``margin`` the mean of the
  merged rows' margins (None when none has one), and provenance gaining ``aggregate``, ``votes_for`` and
  ``votes_against`` (annotator names) and ``merged_rows``. A direction only some annotators' policy proposed
  is written only if it is kept; a direction no policy proposed is never written (the pair policy picks the
  comparisons, the votes decide their fate).

Counts (:attr:`Export.aggregation`), in proposed rows: ``rows`` = ``kept`` + ``merged`` (rows folded into an
agreeing row) + ``dropped_contradicted`` + ``dropped_ties``. ``weight`` is written on every pair row under
``agreement_weight`` and on none otherwise (every row then weighs 1). Unpaired rows are never aggregated.

A store named as a phase's data (``data.train: feedback.db[#project]``) becomes a file through
:func:`materialise`, which the top layer (``align``, pipelines: :func:`alignment.pipeline.export_feedback_stores`)
calls before the phase: the training library reads files and never imports this app.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alignment.data.pairs import PAIR_POLICIES, ranking_to_pairs
from alignment.files import atomic_write
from feedback_app.agreement import AGGREGATIONS, decide
from feedback_app.store import (
    LINEAGE_FILE,
    Candidate,
    Item,
    Project,
    Store,
    StoredJudgment,
    StoreError,
    database_url,
    is_store,
    public_url,
    read_lineage,
)

Row = dict[str, Any]
PairKey = tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]  # (chosen, rejected) content
AGGREGATION_COUNTS = ("rows", "kept", "merged", "dropped_contradicted", "dropped_ties")


@dataclass
class Export:
    pairs: list[Row] = field(default_factory=list)  # prompt / chosen / rejected / margin [/ weight] / provenance
    unpaired: list[Row] = field(default_factory=list)  # prompt / completion / label / provenance
    judgments: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)  # pair rows written per kind, unpaired rows, orphans
    aggregate: str = "all"
    aggregation: dict[str, int] = field(default_factory=lambda: dict.fromkeys(AGGREGATION_COUNTS, 0))
    # The snapshot the rows are: the newest judgment included (judgment ids only grow, so a later export with
    # the same id holds the same judgments) and who judged. None / empty when no judgment was included.
    latest_judgment_id: int | None = None
    annotators: set[str] = field(default_factory=set)
    # Head-to-head evaluation projects an export of every project left out: their judgments measure two models
    # on held-out prompts, and a model trained on them would be graded on its own training data.
    skipped_evaluations: list[str] = field(default_factory=list)
    # Personal data found in the rows (:func:`scan_personal_data`) and what was done about it; None: not scanned.
    pii_action: str | None = None
    pii: list[PiiFinding] = field(default_factory=list)
    pii_dropped: dict[str, int] = field(default_factory=dict)  # "pairs" / "unpaired" -> rows left out

    def count(self, kind: str, n: int = 1) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + n


@dataclass(frozen=True)
class PiiFinding:
    """Personal data in one exported row: which file (``pairs`` or ``unpaired``, or the file's name), its row (1-based,
    before any row was dropped), field, and the judgment it came from; ``shown`` is a masked hint, never the data."""

    kind: str
    file: str
    row: int
    field: str
    item_id: int | None
    judgment_id: int | None
    annotator: str | None
    shown: str

    def __str__(self) -> str:
        from alignment.data.pii import LABELS

        return (f"{self.file} row {self.row}, field '{self.field}' (item {self.item_id}, judgment {self.judgment_id} "
                f"by {self.annotator}): {LABELS[self.kind]} {self.shown}")


def split_store_spec(spec: str | Path) -> tuple[str, str | None]:
    """``feedback.db#project`` -> ("feedback.db", "project"); no ``#`` -> every project."""
    text = str(spec)
    if "#" in text and not Path(text).exists():
        base, project = text.rsplit("#", 1)
        return base, project or None
    return text, None


def export_store(store: Store, *, project: str | None = None, pairs: str = "all", aggregate: str = "all") -> Export:
    """Every project's (or one project's) current judgments as training rows, pairs merged across the annotators
    of each item by ``aggregate`` (see the module docstring)."""
    if pairs not in PAIR_POLICIES:
        raise StoreError(f"--pairs must be one of {', '.join(PAIR_POLICIES)}, not '{pairs}'")
    if aggregate not in AGGREGATIONS:
        raise StoreError(f"--aggregate must be one of {', '.join(AGGREGATIONS)}, not '{aggregate}'")
    chosen_projects = store.list_projects()
    if project is not None:
        chosen_projects = [p for p in chosen_projects if p.name == project]
        if not chosen_projects:
            names = ", ".join(p.name for p in store.list_projects()) or "none"
            raise StoreError(f"no project '{project}' in the store (projects: {names})")
        if chosen_projects[0].is_head_to_head:
            raise StoreError(f"project '{project}' is a head-to-head evaluation: its judgments compare two models on "
                             "held-out prompts and are never exported as training data (see `align feedback h2h "
                             "report`)")
    out = Export(aggregate=aggregate)
    out.skipped_evaluations = [p.name for p in chosen_projects if p.is_head_to_head]
    for proj in chosen_projects:
        if proj.is_head_to_head:
            continue
        by_item: dict[int, list[StoredJudgment]] = {}
        for sj in store.latest_judgments(proj.id):
            by_item.setdefault(sj.item_id, []).append(sj)
            out.latest_judgment_id = max(out.latest_judgment_id or 0, sj.id)
            out.annotators.add(sj.user_name)
        for item_id, judged in by_item.items():
            item = store.item(item_id)
            assert item is not None
            item_rows(item, judged, proj, pairs, aggregate, out)
    return out


def item_rows(item: Item, judged: list[StoredJudgment], project: Project, policy: str, aggregate: str,
              out: Export) -> None:
    """Append to ``out`` the rows of every annotator's judgment of one item, pairs merged by ``aggregate``."""
    proposed: list[Row] = []
    votes: dict[str, set[PairKey]] = {}  # annotator -> the directions they chose
    for sj in judged:
        out.judgments += 1
        pairs, unpaired, orphans = judgment_rows(item, sj, project, policy)
        proposed += pairs
        for row in unpaired:
            out.unpaired.append(row)
            out.count(f"{row['provenance']['kind']} (unpaired)")
        if orphans:
            out.count("negative without a good answer", orphans)
        if aggregate != "all":
            every = pairs if policy == "all" else judgment_rows(item, sj, project, "all")[0]
            votes.setdefault(sj.user_name, set()).update(pair_key(r) for r in every)
    for row in aggregate_pairs(proposed, votes, aggregate, out.aggregation):
        out.pairs.append(row)
        out.count(row["provenance"]["kind"])


def aggregate_pairs(proposed: list[Row], votes: dict[str, set[PairKey]], aggregate: str,
                    counts: dict[str, int]) -> list[Row]:
    """The pair rows of one item after aggregation across annotators; adds to ``counts`` (AGGREGATION_COUNTS).

    ``proposed``: every annotator's pair rows under the export's pair policy, in store order; ``votes``:
    annotator -> the (chosen, rejected) directions their judgment gives under the ``all`` policy."""
    counts["rows"] += len(proposed)
    if aggregate == "all":
        counts["kept"] += len(proposed)
        return list(proposed)
    directions: dict[PairKey, list[Row]] = {}
    for row in proposed:
        directions.setdefault(pair_key(row), []).append(row)
    kept = []
    for (chosen, rejected), rows in directions.items():
        voters_for = sorted(a for a, chose in votes.items() if (chosen, rejected) in chose)
        voters_against = sorted(a for a, chose in votes.items() if (rejected, chosen) in chose)
        decision = decide(aggregate, len(voters_for), len(voters_against))
        if not decision.keep:
            counts["dropped_ties" if decision.reason == "tie" else "dropped_contradicted"] += len(rows)
            continue
        counts["kept"] += 1
        counts["merged"] += len(rows) - 1
        first = rows[0]
        margins = [r["margin"] for r in rows if r["margin"] is not None]
        merged: Row = {"prompt": first["prompt"], "chosen": first["chosen"], "rejected": first["rejected"],
                       "margin": sum(margins) / len(margins) if margins else None}
        if aggregate == "agreement_weight":
            merged["weight"] = decision.weight
        merged["provenance"] = {**first["provenance"], "aggregate": aggregate, "votes_for": voters_for,
                                "votes_against": voters_against, "merged_rows": len(rows)}
        kept.append(merged)
    return kept


def pair_key(row: Row) -> PairKey:
    """A pair row's direction: its (chosen, rejected) content, surrounding whitespace stripped. Rows of one item
    share the prompt, so within an item equal keys are the same comparison."""
    def side(messages: list[dict[str, str]]) -> tuple[tuple[str, str], ...]:
        return tuple((m["role"], m["content"].strip()) for m in messages)

    return side(row["chosen"]), side(row["rejected"])


def judgment_rows(item: Item, sj: StoredJudgment, project: Project, policy: str) -> tuple[list[Row], list[Row], int]:
    """What one judgment yields (see the module docstring): its pair rows, its unpaired rows, and how many of its
    negative examples had no good answer to be paired with."""
    j = sj.judgment
    by_id = {c.id: c for c in item.candidates}
    base = _provenance(item, sj, project)
    prompt = item.prompt
    pairs: list[Row] = []
    unpaired: list[Row] = []
    orphans = 0

    def pair(kind: str, chosen: str, rejected: str, chosen_c: Candidate | None, rejected_c: Candidate | None,
             margin: float | None = None) -> None:
        pairs.append({"prompt": prompt, "chosen": _answer(chosen), "rejected": _answer(rejected),
                      "margin": margin,
                      "provenance": {**base, "kind": kind, **_side("chosen", chosen_c, sj.user_name),
                                     **_side("rejected", rejected_c, sj.user_name)}})

    def single(kind: str, text: str, label: bool, cand: Candidate | None) -> None:
        unpaired.append({"prompt": prompt, "completion": _answer(text), "label": label,
                         "provenance": {**base, "kind": kind, **_side("completion", cand, sj.user_name)}})

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
            orphans += 1
    return pairs, unpaired, orphans


PII_ACTIONS = ("report", "mask", "drop", "off")
PAIR_FIELDS = ("prompt", "chosen", "rejected")
UNPAIRED_FIELDS = ("prompt", "completion")


def scan_personal_data(export: Export, action: str = "report", names: tuple[str, str] = ("pairs", "unpaired")) -> None:
    """Look for personal data (:mod:`alignment.data.pii`) in the rows' text: the prompt and both answers of a pair,
    the prompt and completion of an unpaired row. Annotators type corrections and negative examples freely, and a
    prompt may quote a customer. ``report`` records the findings in ``export.pii``; ``mask`` also replaces each by
    its placeholder (``<EMAIL>``, ...) in the rows; ``drop`` leaves out every row that has one (and takes it off
    ``by_kind``); ``off`` scans nothing. ``names``: what the findings call the pairs and the unpaired file."""
    if action not in PII_ACTIONS:
        raise StoreError(f"--pii must be one of {', '.join(PII_ACTIONS)}, not '{action}'")
    if action == "off":
        return
    from alignment.data.pii import collapsed, scan_record

    export.pii_action = action
    for rows, fields, name, key in ((export.pairs, PAIR_FIELDS, names[0], "pairs"),
                                    (export.unpaired, UNPAIRED_FIELDS, names[1], "unpaired")):
        kept = []
        for number, row in enumerate(rows, start=1):
            masked, found = scan_record(row, file=name, line=number, fields=fields, mask=action == "mask")
            collapsed_pair = action == "mask" and key == "pairs" and bool(found) and collapsed(row, masked)
            prov = row.get("provenance") or {}
            export.pii += [PiiFinding(f.kind, name, number, f.field, prov.get("item_id"), prov.get("judgment_id"),
                                      prov.get("annotator"), f.shown) for f in found]
            if (found and action == "drop") or collapsed_pair:  # a pair masked into two equal answers goes too
                kind = prov.get("kind", "?")
                export.count(kind if key == "pairs" else f"{kind} (unpaired)", -1)
                export.pii_dropped[key] = export.pii_dropped.get(key, 0) + 1
                continue
            kept.append(masked)
        rows[:] = kept
    export.by_kind = {k: n for k, n in export.by_kind.items() if n}


def pii_lines(export: Export) -> list[str]:
    """The personal-data part of the summary: counts per kind, what was done, then one line per finding."""
    from alignment.data.pii import LABELS, count_line

    if export.pii_action is None:
        return []
    if not export.pii:
        return [f"personal data: none found ({', '.join(LABELS.values())}; names are not detected)"]
    counts = {k: n for k in LABELS if (n := sum(f.kind == k for f in export.pii))}
    rows = len({(f.file, f.row) for f in export.pii})
    done = {"report": "left as they are (--pii mask or drop to clean them)",
            "mask": "replaced by placeholders (<EMAIL>, <PHONE>, ...)" + (
                f"; {export.pii_dropped['pairs']} pair row(s) left out, masking made chosen and rejected the same"
                if export.pii_dropped.get("pairs") else ""),
            "drop": f"their rows left out ({export.pii_dropped.get('pairs', 0)} pair rows, "
                    f"{export.pii_dropped.get('unpaired', 0)} unpaired rows)"}[export.pii_action]
    return [f"personal data: {len(export.pii)} finding(s) in {rows} row(s) ({count_line(counts)}); {done}",
            *(f"  {f}" for f in export.pii)]


def export_paths(out: str | Path) -> tuple[Path, Path]:
    """The two files of an export: ``X.jsonl`` (pairs) and ``X.unpaired.jsonl``."""
    path = Path(out)
    return path, path.with_name(path.name.removesuffix(".jsonl") + ".unpaired.jsonl")


def write_export(export: Export, out: str | Path) -> tuple[Path, Path]:
    """Preference pairs to ``out``, unpaired rows beside it (``X.jsonl`` -> ``X.unpaired.jsonl``); atomic."""
    path, unpaired = export_paths(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, rows in ((path, export.pairs), (unpaired, export.unpaired)):
        _atomic_jsonl(target, rows)
    return path, unpaired


def preference_examples(spec: str | Path, pair_policy: str = "all", aggregate: str = "all") -> tuple[
        list[Any], dict[str, Any]]:
    """The store's preference pairs (``feedback.db[#project]`` or a URL): what :func:`materialise` writes."""
    from alignment.data.preferences import PreferenceExample
    from alignment.errors import AlignError

    url, project = split_store_spec(spec)
    try:
        store = Store(url, create=False)
        export = export_store(store, project=project, pairs=pair_policy, aggregate=aggregate)
        store.close()
    except StoreError as e:
        raise AlignError(str(e), file=str(spec)) from None
    examples = [PreferenceExample(r["prompt"], r["chosen"], r["rejected"], r["margin"], r.get("weight", 1.0))
                for r in export.pairs]
    orphans = export.by_kind.get("negative without a good answer", 0)
    return examples, {"kind": "feedback", "variant": "store", "duplicates_removed": 0, "rows": export.judgments,
                      "pairs": len(examples), "orphan_negatives": orphans, "by_kind": dict(export.by_kind),
                      "aggregate": aggregate, "aggregation": dict(export.aggregation),
                      "latest_judgment_id": export.latest_judgment_id, "annotators": len(export.annotators)}


# ------------------------------------------------------------------------------------- store as data

EMPTY_STORE = "the feedback store holds no judgments that make preference pairs yet"


def is_store_spec(spec: str | Path) -> bool:
    """A feedback store named as data: ``feedback.db``, ``feedback.db#project`` or a database URL."""
    return is_store(split_store_spec(spec)[0])


def provenance_path(out: str | Path) -> Path:
    """``DIR/train.jsonl`` -> ``DIR/train.provenance.json``."""
    path = Path(out)
    return path.with_name(path.name.removesuffix(".jsonl") + ".provenance.json")


def materialise(spec: str | Path, out: str | Path, pair_policy: str = "all", aggregate: str = "all") -> dict[str, Any]:
    """Export the store's preference pairs to ``out`` for a training phase; returns the provenance.

    The rows are exactly :func:`preference_examples`, in its order, in the ``preference`` format the data
    loaders read (``prompt`` / ``chosen`` / ``rejected`` message lists, ``margin`` when known, ``weight`` on every
    row under ``agreement_weight`` and on none otherwise). Beside them, ``<name>.provenance.json``: the store,
    project, pair policy, aggregation across annotators with its counts, export time and counts, and the snapshot
    the rows are (``latest_judgment_id``: the newest judgment included; ``annotators``; ``store_url``: the store
    resolved, which :meth:`~feedback_app.store.Store.rounds` matches a trained model's lineage by). When the files
    already say all this (the same rows, the same provenance but for its time) neither is rewritten, so a re-run
    keeps the time the rows were exported; when only the provenance differs (the same rows under another
    setting) only the provenance is rewritten.
    Raises AlignError (naming ``spec``) for a missing store or project, and for a store with no pairs yet.
    """
    from alignment.errors import AlignError

    examples, info = preference_examples(spec, pair_policy, aggregate)
    if not examples:
        raise AlignError(EMPTY_STORE, file=str(spec))
    weighted = aggregate == "agreement_weight"
    rows = [{"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected,
             **({"margin": e.margin} if e.margin is not None else {}),
             **({"weight": e.weight} if weighted else {})} for e in examples]
    text = _jsonl_bytes(rows)
    path, prov_path = Path(out), provenance_path(out)
    url, project = split_store_spec(spec)
    provenance = {
        "source": public_url(url) + (f"#{project}" if project else ""), "store": public_url(url),
        "store_url": public_url(database_url(url)), "project": project,
        "pair_policy": pair_policy, "aggregate": aggregate, "exported_at": None, "format": "preference",
        "file": path.name, "sha256": hashlib.sha256(text).hexdigest(), "judgments": info["rows"],
        "latest_judgment_id": info["latest_judgment_id"], "annotators": info["annotators"],
        "pairs": len(rows), "orphan_negatives": info["orphan_negatives"], "by_kind": info["by_kind"],
        "aggregation": info["aggregation"],
    }
    same_rows = path.is_file() and path.read_bytes() == text
    saved = _read_json(prov_path) if same_rows else None
    if saved is not None and {**saved, "exported_at": None} == provenance:
        return saved
    provenance["exported_at"] = _iso(time.time())
    path.parent.mkdir(parents=True, exist_ok=True)
    if not same_rows:
        atomic_write(path, text)
    atomic_write(prov_path, (json.dumps(provenance, indent=2) + "\n").encode("utf-8"))
    return provenance


# ------------------------------------------------------------------------------------------------ lineage

# What a lineage.json keeps of each provenance file: the snapshot (store, project, newest judgment, counts) and
# how the rows were made from it.
SNAPSHOT_KEYS = ("source", "store", "store_url", "project", "latest_judgment_id", "judgments", "pairs", "annotators",
                 "pair_policy", "aggregate", "exported_at", "sha256")


def write_lineage(output_dir: str | Path, model_dir: str | Path, data_files: Mapping[str, str | Path], *,
                  phase: str, reward_model: str | Path | None = None) -> Path:
    """After a training phase: ``<output_dir>/lineage.json``, naming the trained weights (their directory and
    :func:`feedback_app.scoring.weights_sha256`; the LoRA ``merged/`` folder beside ``model/`` too, when there
    is one) and the store snapshots it trained on: the ``.provenance.json`` beside each of ``data_files``
    (dotted field -> the file the phase read) that :func:`materialise` wrote. Files that are not store exports
    add nothing. For a PPO policy, ``reward_model``'s own lineage, when it has one for its present weights,
    is kept under ``reward_model``: the judgments reached the policy through it.

    :meth:`feedback_app.store.Store.rounds` reads it to say which judgments a round of candidates came from.
    Raises AlignError (naming the directory) when the model folder holds no weights files."""
    from feedback_app.scoring import weights_sha256

    model = Path(model_dir).resolve()
    models = [{"path": str(model), "weights_sha256": weights_sha256(model, "output_dir")}]
    merged = model.parent / "merged"
    if merged.is_dir() and merged != model and any(merged.glob("*.safetensors")):
        models.append({"path": str(merged), "weights_sha256": weights_sha256(merged, "output_dir")})
    snapshots = []
    for name, file in data_files.items():
        provenance = _read_json(provenance_path(file))
        if isinstance(provenance, dict) and provenance.get("format") == "preference" and "store" in provenance:
            snapshots.append({"field": name, "file": str(Path(file).resolve()),
                              **{k: provenance.get(k) for k in SNAPSHOT_KEYS}})
    lineage: dict[str, Any] = {"phase": phase, "written_at": _iso(time.time()), "models": models,
                               "snapshots": snapshots}
    if reward_model:
        from alignment.errors import AlignError
        from alignment.modeling import resolve_model

        try:
            rm = resolve_model(reward_model)  # a phase folder's model/, as the loaders read it
            digest: str | None = weights_sha256(rm, "reward_model")
        except AlignError:  # not a local directory of weights (a hub name): its identity and data are unknown
            rm, digest = Path(reward_model), None
        found, data, _ = read_lineage(rm, digest) if digest else (None, None, "")
        # "lineage": None when the reward model has none (trained elsewhere, or before lineage): its data is unknown
        lineage["reward_model"] = {"path": str(rm.resolve()) if rm.exists() else str(reward_model),
                                   "weights_sha256": digest, "lineage": str(found) if found else None,
                                   "snapshots": data.get("snapshots", []) if data else []}
    out = Path(output_dir) / LINEAGE_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, (json.dumps(lineage, indent=2) + "\n").encode("utf-8"))
    return out


def summary_lines(export: Export, pii: bool = True) -> list[str]:
    """What an export holds, for people: totals, the aggregation across annotators with its counts, rows per kind,
    and (``pii``) the personal data found in it (:func:`pii_lines`)."""
    lines = [f"{export.judgments} judgments -> {len(export.pairs)} preference pairs, "
             f"{len(export.unpaired)} unpaired rows"]
    lines.append(aggregation_line(export.aggregate, export.aggregation))
    lines += [f"  {kind}: {n}" for kind, n in sorted(export.by_kind.items())]
    if export.skipped_evaluations:
        lines.append(f"left out {len(export.skipped_evaluations)} head-to-head evaluation project(s), never training "
                     f"data: {', '.join(export.skipped_evaluations)}")
    return lines + (pii_lines(export) if pii else [])


def aggregation_line(aggregate: str, counts: dict[str, int]) -> str:
    """One summary line, e.g. ``pairs across annotators: majority: 12 annotator pairs -> 7 kept (3 merged into an
    agreeing annotator's pair, 1 dropped as contradicted, 1 dropped as tied votes)``."""
    if aggregate == "all":
        return f"pairs across annotators: all ({counts['rows']} annotator pairs kept as they are)"
    return (f"pairs across annotators: {aggregate}: {counts['rows']} annotator pairs -> {counts['kept']} kept "
            f"({counts['merged']} merged into an agreeing annotator's pair, {counts['dropped_contradicted']} dropped "
            f"as contradicted, {counts['dropped_ties']} dropped as tied votes)")


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


def _read_json(path: Path) -> Any:
    """A JSON file's content; None when it is missing or unreadable (then it is simply written again)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _jsonl_bytes(rows: Iterable[Row]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def _atomic_jsonl(path: Path, rows: Iterable[Row]) -> None:
    atomic_write(path, _jsonl_bytes(rows))
