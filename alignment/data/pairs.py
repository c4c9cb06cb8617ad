"""Turn a ranking of N responses into (chosen, rejected) preference pairs.

Pairwise losses (DPO, Bradley-Terry reward models) consume pairs, but annotators and the expert
feedback app produce rankings: ``responses`` + ``ranks``, lower rank = better, ties allowed. This module
is the one place that conversion happens, so the ranked data loaders and the feedback app agree on it.

Stdlib only, so the feedback app and unit tests can import it without torch or ``datasets``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any, Literal

PairPolicy = Literal["all", "best-vs-rest", "adjacent"]
PAIR_POLICIES: tuple[str, ...] = ("all", "best-vs-rest", "adjacent")


@dataclass(frozen=True)
class PreferencePair:
    """One preference judgment taken from a ranking: ``chosen`` ranked strictly better than ``rejected``."""

    chosen: Any  # the response as given: a string or a list of {"role", "content"} messages
    rejected: Any
    chosen_rank: float  # lower = better; always < rejected_rank
    rejected_rank: float
    chosen_index: int  # position in the input ``responses`` list
    rejected_index: int


def ranking_to_pairs(
    responses: Sequence[Any], ranks: Sequence[float], policy: PairPolicy = "all"
) -> list[PreferencePair]:
    """Preference pairs implied by ``ranks`` (lower = better) under ``policy``.

    Policies, for N responses:

    - ``"all"``: every (i, j) with ``rank_i < rank_j``; up to N(N-1)/2 pairs. Uses every judgment the
      ranking makes, as InstructGPT's reward model does with the K-choose-2 comparisons of each
      ranking (Ouyang et al., 2022, sec. 3.5).
    - ``"best-vs-rest"``: every response tied for the best (minimum) rank against every strictly worse
      one. Annotators are most reliable about their top choice, and each pair carries the best response,
      which suits DPO's "prefer the good answer" reading; fewer pairs per prompt also means a prompt with
      many responses does not dominate the data set.
    - ``"adjacent"``: group responses by rank value and sort the groups; every member of group k against
      every member of group k+1. Only neighbouring judgments, the hardest and least redundant ones
      (the rest follow by transitivity); N-1 pairs when ranks are distinct.

    Rules common to all policies:

    - Ties never produce a pair (a tie is no preference); if every rank is equal there are no pairs.
    - A pair whose two responses have the same content is dropped: it teaches nothing (for DPO the two
      log-ratios cancel and the gradient is zero). Strings compare after stripping surrounding whitespace; message
      lists compare by their (role, content) sequence, content stripped.
    - The same (chosen content, rejected content) pair is emitted once (see :func:`dedupe_pairs`), so
      a response repeated at two ranks does not double the weight of its comparisons.
    - Order is deterministic: sorted by (chosen rank, rejected rank, chosen index, rejected index).
      When a repeat is dropped, the first one in that order is kept.

    Contradictory pairs (A > B and B > A, possible when a response repeats at different ranks) are
    kept: the ranking says both, and it is the data layer's job to flag such rows.

    Raises:
        ValueError: ``responses`` and ``ranks`` differ in length, a rank is not a finite number, or
            ``policy`` is unknown. Fewer than 2 responses is not an error: it gives no pairs.
    """
    if policy not in PAIR_POLICIES:
        raise ValueError(f"unknown pair policy {policy!r}; expected one of {', '.join(PAIR_POLICIES)}")
    if len(responses) != len(ranks):
        raise ValueError(f"got {len(responses)} responses but {len(ranks)} ranks; need one rank per response")
    values = [_check_rank(rank, i) for i, rank in enumerate(ranks)]
    if len(responses) < 2:
        return []

    # Distinct rank values, best first; group k holds the indices ranked levels[k].
    levels = sorted(set(values))
    groups = [[i for i, v in enumerate(values) if v == level] for level in levels]
    if policy == "all":
        # Naive loop: for i, for j, keep (i, j) if rank_i < rank_j; grouping makes ties skip themselves.
        index_pairs = [
            (i, j) for k, better in enumerate(groups) for worse in groups[k + 1 :] for i in better for j in worse
        ]
    elif policy == "best-vs-rest":
        index_pairs = [(i, j) for worse in groups[1:] for i in groups[0] for j in worse]
    else:  # adjacent
        index_pairs = [(i, j) for better, worse in zip(groups, groups[1:]) for i in better for j in worse]

    keys = [_content_key(r) for r in responses]
    index_pairs = [(i, j) for i, j in index_pairs if keys[i] != keys[j]]
    index_pairs.sort(key=lambda p: (values[p[0]], values[p[1]], p[0], p[1]))
    pairs = [PreferencePair(responses[i], responses[j], values[i], values[j], i, j) for i, j in index_pairs]
    return dedupe_pairs(pairs)


def dedupe_pairs(pairs: Iterable[PreferencePair]) -> list[PreferencePair]:
    """Drop pairs whose (chosen, rejected) content repeats an earlier pair; keep the first, in order.

    Content is compared as in :func:`ranking_to_pairs` (surrounding whitespace stripped), so the same
    judgment reached through duplicate responses, or merged from several rankings, counts once.
    """
    seen: set[tuple[Any, Any]] = set()
    kept = []
    for pair in pairs:
        key = (_content_key(pair.chosen), _content_key(pair.rejected))
        if key not in seen:
            seen.add(key)
            kept.append(pair)
    return kept


def _check_rank(rank: Any, i: int) -> float:
    if isinstance(rank, bool) or not isinstance(rank, Real):
        raise ValueError(f"ranks[{i}] must be a number (lower = better), got {rank!r}")
    value = float(rank)
    if not math.isfinite(value):
        raise ValueError(f"ranks[{i}] must be a finite number (lower = better), got {rank!r}")
    return value


def _content_key(response: Any) -> tuple[Any, ...]:
    """A hashable key equal for responses with the same content (see :func:`ranking_to_pairs`)."""
    if isinstance(response, str):
        return ("text", response.strip())
    if isinstance(response, (list, tuple)) and all(isinstance(m, dict) for m in response):
        return ("messages", tuple((m.get("role"), _strip_content(m.get("content"))) for m in response))
    # Anything else (not produced by the data layer, but keep it total): its canonical JSON.
    return ("other", json.dumps(response, sort_keys=True, ensure_ascii=False, default=str))


def _strip_content(content: Any) -> Any:
    if isinstance(content, str):
        return content.strip()
    # Multimodal content parts and the like: compare their canonical JSON, unstripped.
    return json.dumps(content, sort_keys=True, ensure_ascii=False, default=str)
