"""Preference pairs for reward modeling and DPO, from any source that yields them.

Sources: preference data (``prompt`` + ``chosen`` + ``rejected``), ranked data (turned into pairs by
:func:`alignment.data.pairs.ranking_to_pairs` with the recipe's policy), and unpaired data whose
negative examples (``label: false``) become the rejected side when a good answer (``label: true``)
exists for the same prompt. Files only: a feedback store named as a phase's data is exported to a
preference file in the run folder by the layer above (``align`` and pipelines, see
:func:`alignment.pipeline.export_feedback_stores`) before the phase starts; this library never reads it.

A preference row's optional ``weight`` (>= 0, validated in :mod:`alignment.data.formats`; 1 when absent)
stays with its pair through de-duplication (rows weighing differently are different rows), the split by
prompt, tokenization and collation (``batch["weight"]``), where the RM and DPO losses weigh each pair by it.
Pairs from ranked or unpaired data weigh 1.

Tokenization renders ``prompt + response`` with the chat template and labels only the response turns
(their end-of-turn token included), so DPO's log-probabilities and the reward model's last token
are both taken from what the model would generate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignment.data.chat import IGNORE_INDEX, assistant_spans
from alignment.errors import AlignError

if TYPE_CHECKING:
    from alignment.config import CurateConfig, PreferenceDataConfig

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class PairsLoaded:
    """What loading one preference source did (the phase's data log line)."""

    kind: str  # "preference", "ranked" or "unpaired"
    variant: str  # the file's column layout (see alignment.data.formats)
    duplicates_removed: int
    rows: int  # records read, after de-duplication
    pairs: int  # preference pairs made from them
    orphan_negatives: int  # unpaired: negatives with no good answer of their prompt to pair with (KTO uses them)
    weighted: int  # pairs whose weight is not 1
    zero_weight: int  # pairs that weigh 0
    total_weight: float
    test_prompts_dropped: int = 0  # data.test: train/validation pairs dropped because their prompt is a test one


@dataclass
class PreferenceExample:
    """One comparison: the same prompt, a better and a worse response."""

    prompt: Messages
    chosen: Messages
    rejected: Messages
    margin: float | None = None  # how much better, when the data says (e.g. a rank gap)
    weight: float = 1.0  # the pair's weight in the RM and DPO losses (the data's `weight`, >= 0; 1 when absent)


@dataclass
class TokenizedPair:
    chosen_ids: list[int]  # (Tc,) prompt + chosen, chat template applied
    chosen_labels: list[int]  # (Tc,) response tokens, IGNORE_INDEX on the prompt
    rejected_ids: list[int]  # (Tr,)
    rejected_labels: list[int]  # (Tr,)
    margin: float | None = None
    truncated: bool = False
    weight: float = 1.0  # the example's loss weight, carried into the collated batch


def _key(messages: Messages) -> str:
    return json.dumps([(m["role"], m["content"]) for m in messages])


def load_preference_examples(path: str, *, kind: str | None = None, pair_policy: str = "all",
                             dedup: str = "whitespace", curate: CurateConfig | None = None,
                             curation_dir: Path | None = None, policy_model: str | None = None,
                             ) -> tuple[list[PreferenceExample], PairsLoaded]:
    """Pairs from a preference, ranked or unpaired file (the kind is detected when not given). ``curate``: the
    records are curated after de-duplication (:func:`~alignment.data.curate.curate_dataset`; its report and plot
    in ``curation_dir`` when given; ``policy_model`` embeds with ``embed: policy``)."""
    from alignment.data import deduplicate, load_dataset_file, to_conversation
    from alignment.data.pairs import ranking_to_pairs

    if kind == "feedback":
        raise AlignError("data.kind 'feedback' is for a feedback store, which `align` (rm, dpo, run) exports to a "
                         "preference file in the run folder before the phase starts; the data loaders read files "
                         "only (export a store with `align feedback export`, or set data.kind: auto)", file=path)
    if kind is None:
        kind = detect_kind(path)
    ds, info = load_dataset_file(path, kind)
    ds, removed = deduplicate(ds, kind, info.variant, dedup)
    if curate is not None:
        from alignment.data.curate import curate_dataset

        ds, _ = curate_dataset(ds, kind, info.variant, curate, source=path, policy_model=policy_model,
                               report_dir=curation_dir)
    records = [to_conversation(r, kind, info.variant) for r in ds]
    examples: list[PreferenceExample] = []
    if kind == "preference":
        margins = ds["margin"] if "margin" in ds.column_names else [None] * len(records)
        # The weight travels inside the normalised record (validated there, present only when not 1).
        examples = [PreferenceExample(r["prompt"], r["chosen"], r["rejected"], float(m) if m is not None else None,
                                      r.get("weight", 1.0)) for r, m in zip(records, margins)]
    elif kind == "ranked":
        for r in records:
            for pair in ranking_to_pairs(r["responses"], r["ranks"], pair_policy):
                examples.append(PreferenceExample(r["prompt"], pair.chosen, pair.rejected,
                                                  float(pair.rejected_rank - pair.chosen_rank)))
    elif kind == "unpaired":
        examples = unpaired_to_pairs(records)
        orphans = count_orphan_negatives(records)
    else:
        raise AlignError(f"'{kind}' data holds no preferences", file=path)
    if not examples:
        raise AlignError(f"no preference pairs could be made from this {kind} data", file=path)
    return examples, PairsLoaded(kind, info.variant, removed, len(records), len(examples),
                                 orphans if kind == "unpaired" else 0, **weight_summary(examples))


def weight_summary(examples: list[PreferenceExample]) -> dict[str, Any]:
    """How many pairs carry a weight other than 1, how many weigh 0, and the total weight (a data log line)."""
    return {"weighted": sum(1 for e in examples if e.weight != 1.0),
            "zero_weight": sum(1 for e in examples if e.weight == 0.0),
            "total_weight": float(sum(e.weight for e in examples))}


def split_pairs(examples: list[PreferenceExample], ratios: dict[str, float], seed: int,
                files: tuple[str, ...] = ()) -> dict[str, list]:
    """Deterministic split that keeps every pair of one prompt in the same split (no prompt leaks), prompts
    compared up to whitespace ("What is X?" and "What is X? " are one prompt, as ``data.dedup: whitespace`` and
    the test-prompt check compare them). ``ratios`` is a recipe's ``data.split``; the held-out parts named in
    ``files`` come from files and are not cut."""
    import datasets

    from alignment.data.splits import carve

    keys = [_split_key(ex.prompt) for ex in examples]
    ds = datasets.Dataset.from_dict({"i": list(range(len(examples))), "prompt": keys})
    parts = carve(ds, ratios, seed, files, key=lambda r: r["prompt"])
    return {name: [examples[i] for i in part["i"]] for name, part in parts.items()}


def load_pairs(data: PreferenceDataConfig, seed: int) -> tuple[
        list[PreferenceExample], list[PreferenceExample], PairsLoaded]:
    """Train and validation pairs of a recipe's ``data`` section and what loading did: :func:`load_pair_splits`
    without the test pairs (which are still kept out of train)."""
    train, val, _test, info = load_pair_splits(data, seed)
    return train, val, info


def load_pair_splits(data: PreferenceDataConfig, seed: int, curation_dir: Path | None = None,
                     policy_model: str | None = None) -> tuple[
        list[PreferenceExample], list[PreferenceExample], list[PreferenceExample], PairsLoaded]:
    """Train, validation and test pairs of a recipe's ``data`` section (the RM and DPO phases), plus what
    loading did. Each held-out part is its file (``data.validation``, ``data.test``) when given, else cut out of
    the de-duplicated training pairs by ``data.split`` by prompt with ``seed`` (test: none unless the split has
    a ``test`` fraction). Pairs whose prompt is in a test file are dropped from train and validation.
    ``data.curate`` curates the training file before the split (report and plot in ``curation_dir`` when given);
    the split places each prompt by a hash of it alone, so curation moves no other prompt between the parts.

    Each file is read and validated once, whatever asked before inside the same
    :func:`~alignment.data.io.one_read_per_file` block (the DPO phase's :func:`~alignment.phases.use_kto`)."""
    from alignment.data.io import one_read_per_file, release_reads

    kind = None if data.kind == "auto" else data.kind
    files = tuple(name for name in ("validation", "test") if getattr(data, name, None))

    def read(path: str) -> list[PreferenceExample]:
        return load_preference_examples(path, kind=kind, pair_policy=data.pair_policy, dedup=data.dedup)[0]

    with one_read_per_file():
        train, info = load_preference_examples(data.train, kind=kind, pair_policy=data.pair_policy,
                                               dedup=data.dedup, curate=data.curate, curation_dir=curation_dir,
                                               policy_model=policy_model)
        parts = split_pairs(train, data.split, seed, files)
        train = parts["train"]
        val = read(data.validation) if data.validation else parts.get("validation", [])
        test = read(data.test) if getattr(data, "test", None) else parts.get("test", [])
        release_reads()
    if getattr(data, "test", None):
        # prompts compared up to whitespace, as duplicates are by default: "What is X? " is a test prompt too
        test_prompts = {_prompt_key(ex.prompt) for ex in test}
        kept_train = [ex for ex in train if _prompt_key(ex.prompt) not in test_prompts]
        kept_val = [ex for ex in val if _prompt_key(ex.prompt) not in test_prompts]
        dropped = len(train) - len(kept_train) + len(val) - len(kept_val)
        train, val = kept_train, kept_val
        info = replace(info, test_prompts_dropped=dropped)
    return train, val, test, info


def _prompt_key(prompt: Any) -> str:
    """A prompt compared up to whitespace (and the order of a message's keys): for sets of prompts."""
    from alignment.data.dedup import normalise_strings

    return json.dumps(normalise_strings(prompt), sort_keys=True, ensure_ascii=False)


def _split_key(prompt: Any) -> str:
    """What :func:`split_pairs` hashes: the prompt's JSON with its whitespace normalised (split scheme 2,
    :data:`~alignment.data.splits.SCHEME`). Not :func:`_prompt_key`: this is byte-equal to scheme 1's key,
    ``json.dumps(prompt)``, for a prompt already written with normal whitespace, so only the prompts that had
    odd spacing move; sorting the keys would have moved every prompt."""
    from alignment.data.dedup import normalise_strings

    return json.dumps(normalise_strings(prompt))


def unpaired_to_pairs(records: list[dict[str, Any]]) -> list[PreferenceExample]:
    """Every negative example (label false) against every good answer (label true) to the same prompt.

    A negative example whose prompt has no good answer makes no pair here (KTO can still use it).
    """
    good: dict[str, list[Messages]] = {}
    bad: dict[str, list[Messages]] = {}
    prompts: dict[str, Messages] = {}
    for r in records:
        k = _key(r["prompt"])
        prompts[k] = r["prompt"]
        (good if r["label"] else bad).setdefault(k, []).append(r["completion"])
    return [PreferenceExample(prompts[k], g, b) for k in prompts for g in good.get(k, []) for b in bad.get(k, [])]


def count_orphan_negatives(records: list[dict[str, Any]]) -> int:
    """Negative examples whose prompt has no good answer: they make no DPO pair."""
    good = {_key(r["prompt"]) for r in records if r["label"]}
    return sum(1 for r in records if not r["label"] and _key(r["prompt"]) not in good)


def detect_kind(path: str) -> str:
    """preference, ranked or unpaired from the columns of a data file."""
    from alignment.data import load_records

    columns = set(load_records(path).column_names)
    return "ranked" if {"responses", "ranks"} <= columns else "unpaired" if "label" in columns else "preference"


def tokenize_response(tokenizer: Any, prompt: Messages, response: Messages, max_length: int) -> tuple[
        list[int], list[int], bool]:
    """Ids of ``prompt + response`` and labels on the response turns only; truncated to max_length."""
    messages = prompt + response
    text, spans = assistant_spans(tokenizer, messages)
    n_prompt_assistant = sum(1 for m in prompt if m["role"] == "assistant")
    spans = spans[n_prompt_assistant:]  # earlier assistant turns are context, not the response
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    for t, (start, _end) in enumerate(offsets):
        if any(a <= start < b for a, b in spans):
            labels[t] = ids[t]
    truncated = len(ids) > max_length
    return ids[:max_length], labels[:max_length], truncated


def tokenize_pairs(tokenizer: Any, examples: list[PreferenceExample], max_length: int) -> tuple[
        list[TokenizedPair], dict[str, int]]:
    """Tokenize every pair; pairs left without a response token on either side are dropped (counted)."""
    out: list[TokenizedPair] = []
    stats = {"pairs": len(examples), "truncated": 0, "dropped": 0}
    for ex in examples:
        c_ids, c_labels, c_trunc = tokenize_response(tokenizer, ex.prompt, ex.chosen, max_length)
        r_ids, r_labels, r_trunc = tokenize_response(tokenizer, ex.prompt, ex.rejected, max_length)
        stats["truncated"] += int(c_trunc or r_trunc)
        if all(x == IGNORE_INDEX for x in c_labels) or all(x == IGNORE_INDEX for x in r_labels):
            stats["dropped"] += 1
            continue
        out.append(TokenizedPair(c_ids, c_labels, r_ids, r_labels, ex.margin, c_trunc or r_trunc, ex.weight))
    return out, stats


def describe_test(examples: list[PreferenceExample], pairs: list[TokenizedPair], info: PairsLoaded) -> str:
    """The data log line's test part: "" without test pairs."""
    dropped = (f"; {info.test_prompts_dropped} train/validation pairs with a test prompt removed"
               if info.test_prompts_dropped else "")
    return f"; test {len(pairs)} pairs (scored once, after training){dropped}" if examples else dropped


def describe(stats: dict[str, int], max_length: int, weights: dict[str, Any] | None = None) -> str:
    """One log phrase for a tokenized split; ``weights`` (:func:`weight_summary`) adds the weighted pairs."""
    text = f"{stats['pairs']} pairs"
    if weights and weights.get("weighted"):
        text += (f" ({weights['weighted']} weighted, {weights['zero_weight']} of them 0; total weight "
                 f"{weights['total_weight']:g})")
    if stats["truncated"]:
        text += f"; {stats['truncated']} truncated to max_length={max_length}"
    if stats["dropped"]:
        text += f"; {stats['dropped']} dropped (no response token left after truncation)"
    return text
