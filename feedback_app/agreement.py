"""Agreement between annotators who rank candidate responses.

Each judgment ranks the K candidate responses to one prompt: lower rank = better, equal numbers are ties.
Several annotators may judge the same item. This module gives

* :func:`kendall_tau_b`: rank correlation between two rankings of the same candidates (ties handled);
* :func:`krippendorff_alpha`: Krippendorff's alpha (nominal, ordinal or interval) for any number of coders
  with missing data, following Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability";
* :func:`agreement`: the summary the admin dashboard shows (mean pairwise tau-b, ordinal alpha over
  (item, candidate) units, per annotator pair means and the items with the worst agreement);
* :func:`decide`: what the export does with one direction of a comparison that several annotators ordered,
  under each of :data:`AGGREGATIONS` (``feedback_app.export`` counts the votes).

Standard library only; the sizes involved (a handful of candidates per item) make O(K^2) loops fine.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

__all__ = ["AGGREGATIONS", "AgreementReport", "Decision", "agreement", "decide", "kendall_tau_b", "krippendorff_alpha"]

LEVELS = ("nominal", "ordinal", "interval")


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b between two rankings of the same candidates (ties handled); None when undefined
    (fewer than 2 candidates, or one ranking is all ties).

    ``a[i]`` and ``b[i]`` are the two ranks given to candidate ``i``. With n0 = n(n-1)/2 pairs, C concordant
    and D discordant pairs, n1 pairs tied in ``a`` and n2 pairs tied in ``b`` (a pair tied in both counts in
    both), tau_b = (C - D) / sqrt((n0 - n1) * (n0 - n2)).

    Raises ValueError when the lengths differ or a rank is NaN.
    """
    if len(a) != len(b):
        raise ValueError(f"rankings have different lengths: {len(a)} != {len(b)}")
    if any(math.isnan(x) for x in a) or any(math.isnan(x) for x in b):
        raise ValueError("rankings must not contain NaN")
    n = len(a)
    if n < 2:
        return None
    n0 = n * (n - 1) // 2
    concordant = discordant = ties_a = ties_b = 0
    for i, j in combinations(range(n), 2):
        sa = _sign(a[i] - a[j])
        sb = _sign(b[i] - b[j])
        if sa == 0:
            ties_a += 1
        if sb == 0:
            ties_b += 1
        if sa * sb > 0:
            concordant += 1
        elif sa * sb < 0:
            discordant += 1
    denom = (n0 - ties_a) * (n0 - ties_b)
    if denom == 0:
        return None
    tau = (concordant - discordant) / math.sqrt(denom)
    return max(-1.0, min(1.0, tau))  # guard against rounding just outside [-1, 1]


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def krippendorff_alpha(units: Iterable[Mapping[str, float]], level: str = "ordinal") -> float | None:
    """Krippendorff's alpha. Each unit maps coder id -> value (missing coders simply absent).
    Units with fewer than 2 values are not pairable and ignored. level: 'nominal', 'ordinal', 'interval'.
    Ordinal uses Krippendorff's rank-based metric over the observed value frequencies
    (delta_ck = (sum_{g=c..k} n_g - (n_c + n_k)/2)^2). None when there are no pairable values or expected
    disagreement is 0.

    alpha = 1 - D_o / D_e = 1 - (n - 1) * sum_{c,k} o_ck delta_ck / sum_{c,k} n_c n_k delta_ck, where
    o_ck = sum_u n_uc * n_uk / (m_u - 1) (for c != k) is the coincidence matrix, n_c its margins and n the
    number of pairable values. A value of None or NaN counts as missing. Raises ValueError for an unknown
    level.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")

    # Value counts of each pairable unit (m_u >= 2 values).
    unit_counts: list[tuple[Counter, int]] = []
    for unit in units:
        values = [v for v in unit.values() if not _is_missing(v)]
        if len(values) >= 2:
            unit_counts.append((Counter(values), len(values)))
    if not unit_counts:
        return None

    margins: Counter = Counter()  # n_c
    for counts, _ in unit_counts:
        margins.update(counts)
    n = sum(margins.values())
    values = sorted(margins)

    if level == "nominal":
        def delta(c: float, k: float) -> float:
            return 0.0 if c == k else 1.0
    elif level == "interval":
        def delta(c: float, k: float) -> float:
            return float(c - k) ** 2
    else:
        # Cumulative margins over the sorted values: sum_{g=c..k} n_g = cum[k] - cum[c] + n_c.
        position = {v: i for i, v in enumerate(values)}
        cumulative = []
        running = 0
        for v in values:
            running += margins[v]
            cumulative.append(running)

        def delta(c: float, k: float) -> float:
            lo, hi = sorted((position[c], position[k]))
            between = cumulative[hi] - cumulative[lo] + margins[values[lo]]
            return (between - (margins[c] + margins[k]) / 2) ** 2

    # delta(c, c) == 0 for every metric, so only c != k terms matter (both orders, hence the factor 2).
    observed = math.fsum(
        2 * counts[c] * counts[k] * delta(c, k) / (m - 1)
        for counts, m in unit_counts
        for c, k in combinations(sorted(counts), 2)
    )
    expected = math.fsum(2 * margins[c] * margins[k] * delta(c, k) for c, k in combinations(values, 2))
    if expected == 0:
        return None
    return 1.0 - (n - 1) * observed / expected


@dataclass
class AgreementReport:
    """Inter-annotator agreement over ranking judgments (see :func:`agreement`)."""

    items: int  # items judged by >= 2 annotators
    mean_tau: float | None  # mean over items of the mean pairwise tau-b between annotators
    alpha: float | None  # ordinal Krippendorff's alpha over all (item, candidate) units, value = rank
    per_pair: dict[tuple[str, str], float]  # annotator pair (sorted) -> mean tau over the items both judged
    disagreements: list[tuple[str, float]]  # (item id, mean pairwise tau) with tau <= threshold, worst first


def _mean(xs: Sequence[float]) -> float | None:
    return math.fsum(xs) / len(xs) if xs else None


def agreement(rankings: Mapping[str, Mapping[str, Mapping[str, float]]], threshold: float = 0.0) -> AgreementReport:
    """rankings: item id -> annotator id -> candidate id -> rank. Candidates missing from one annotator's
    ranking are ignored for pairs involving them. Items with only one annotator are skipped.

    For every item with >= 2 annotators (an annotator with an empty ranking does not count), tau-b is computed
    for each annotator pair over the candidates both ranked. A pair whose tau-b is undefined (fewer than 2
    shared candidates, or one side all ties on them) is left out of the item's mean and of ``per_pair``; an
    item with no defined pair still counts in ``items`` but has no tau, so it is left out of ``mean_tau`` and
    ``disagreements``. ``disagreements`` lists items whose mean pairwise tau is <= ``threshold``, lowest tau
    first (ties by item id). ``alpha`` is ordinal Krippendorff's alpha with one unit per (item, candidate),
    coders = annotators and value = rank.
    """
    item_taus: dict[str, float] = {}
    pair_taus: dict[tuple[str, str], list[float]] = {}
    units: list[dict[str, float]] = []
    items = 0

    for item_id, by_annotator in rankings.items():
        judged = {ann: ranks for ann, ranks in by_annotator.items() if ranks}
        if len(judged) < 2:
            continue
        items += 1

        candidates = sorted({cand for ranks in judged.values() for cand in ranks})
        for cand in candidates:
            units.append({ann: ranks[cand] for ann, ranks in judged.items() if cand in ranks})

        taus: list[float] = []
        for ann_a, ann_b in combinations(sorted(judged), 2):
            ranks_a, ranks_b = judged[ann_a], judged[ann_b]
            shared = sorted(set(ranks_a) & set(ranks_b))
            tau = kendall_tau_b([ranks_a[c] for c in shared], [ranks_b[c] for c in shared])
            if tau is None:
                continue
            taus.append(tau)
            pair_taus.setdefault((ann_a, ann_b), []).append(tau)
        item_tau = _mean(taus)
        if item_tau is not None:
            item_taus[item_id] = item_tau

    disagreements = sorted(
        ((item_id, tau) for item_id, tau in item_taus.items() if tau <= threshold),
        key=lambda pair: (pair[1], pair[0]),
    )
    return AgreementReport(
        items=items,
        mean_tau=_mean(list(item_taus.values())),
        alpha=krippendorff_alpha(units, level="ordinal"),
        per_pair={pair: math.fsum(ts) / len(ts) for pair, ts in sorted(pair_taus.items())},
        disagreements=disagreements,
    )


# ------------------------------------------------------------------------------ pairs across annotators

AGGREGATIONS: tuple[str, ...] = ("all", "majority", "drop_contradicted", "agreement_weight")


@dataclass(frozen=True)
class Decision:
    """The fate of one direction ("a over b") of a comparison: kept (with a loss weight) or dropped, and why."""

    keep: bool
    weight: float  # the kept row's loss weight; 1 except under agreement_weight
    reason: str  # "kept", "contradicted" (other annotators ordered the two answers the other way) or "tie"


def decide(mode: str, votes_for: int, votes_against: int) -> Decision:
    """What becomes of the direction "a over b" that ``votes_for`` annotators chose and ``votes_against`` chose
    the other way round ("b over a"); an annotator who tied the two, or did not judge both, votes neither way.

    - ``all``: kept, weight 1, whatever the votes (every annotator's pairs go to training as they are);
    - ``majority``: kept when ``votes_for > votes_against``; dropped as ``tie`` when they are equal and as
      ``contradicted`` when outvoted;
    - ``drop_contradicted``: kept only when ``votes_against == 0``;
    - ``agreement_weight``: kept, weight ``votes_for / (votes_for + votes_against)``: the share of the annotators
      who ordered the two answers that chose this direction. Both directions of a disputed comparison are kept
      with weights summing to 1, so the Bradley-Terry loss is minimised where the model's
      ``P(a over b) = sigmoid(r_a - r_b)`` equals that share, rather than pushed to certainty either way.

    Raises ValueError for an unknown mode or a negative count.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; expected one of {', '.join(AGGREGATIONS)}")
    if votes_for < 0 or votes_against < 0:
        raise ValueError(f"vote counts must be >= 0, got {votes_for} and {votes_against}")
    if mode == "all":
        return Decision(True, 1.0, "kept")
    if mode == "majority":
        if votes_for > votes_against:
            return Decision(True, 1.0, "kept")
        return Decision(False, 0.0, "tie" if votes_for == votes_against else "contradicted")
    if mode == "drop_contradicted":
        return Decision(True, 1.0, "kept") if votes_against == 0 else Decision(False, 0.0, "contradicted")
    voters = votes_for + votes_against
    return Decision(True, votes_for / voters if voters else 1.0, "kept")
