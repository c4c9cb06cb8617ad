"""Checks of feedback_app.agreement against hand-computed numbers.

Every expected value is worked out in the comments (pair counts for tau-b, coincidence matrices for alpha) or
taken from Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability"; none is copied from running the
code. The only machine-made reference is scipy's kendalltau, used when scipy is installed.
"""

from __future__ import annotations

import math
import random

import pytest

from feedback_app.agreement import AgreementReport, agreement, kendall_tau_b, krippendorff_alpha

# ---------------------------------------------------------------------------------------------------------------
# Kendall's tau-b


def test_tau_b_identical_is_one() -> None:
    assert kendall_tau_b([1, 2, 3, 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    # With ties: a = b = [1, 1, 2]. Pairs (0,1) tied in both, (0,2) and (1,2) concordant:
    # C=2, D=0, n0=3, n1=n2=1 -> 2 / sqrt(2 * 2) = 1.
    assert kendall_tau_b([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)


def test_tau_b_reversed_is_minus_one() -> None:
    assert kendall_tau_b([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)


def test_tau_b_with_ties_by_hand() -> None:
    # a = [1, 2, 2, 3], b = [1, 3, 2, 2]; the 6 pairs:
    #   (0,1): a 1<2, b 1<3 -> concordant
    #   (0,2): a 1<2, b 1<2 -> concordant
    #   (0,3): a 1<3, b 1<2 -> concordant
    #   (1,2): a 2=2 (tie in a), b 3>2 -> tie in a only
    #   (1,3): a 2<3, b 3>2 -> discordant
    #   (2,3): a 2<3, b 2=2 -> tie in b only
    # C=3, D=1, n0=6, n1 (ties in a)=1, n2 (ties in b)=1 -> tau_b = (3-1) / sqrt((6-1)(6-1)) = 2/5.
    assert kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 2]) == pytest.approx(0.4)
    # a = [1, 1, 2], b = [1, 2, 3]: (0,1) tie in a only, (0,2) and (1,2) concordant.
    # C=2, D=0, n0=3, n1=1, n2=0 -> 2 / sqrt(2 * 3) = 2/sqrt(6).
    assert kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))


def test_tau_b_symmetric_and_scale_free() -> None:
    a, b = [1, 2, 2, 3], [1, 3, 2, 2]
    assert kendall_tau_b(b, a) == pytest.approx(0.4)
    # Only the order of the ranks matters, not their spacing.
    assert kendall_tau_b([10, 25, 25, 99], [0.5, 7, 2, 2]) == pytest.approx(0.4)


def test_tau_b_undefined_is_none() -> None:
    assert kendall_tau_b([2, 2, 2], [1, 2, 3]) is None  # a all ties
    assert kendall_tau_b([1, 2, 3], [4, 4, 4]) is None  # b all ties
    assert kendall_tau_b([1], [1]) is None  # fewer than 2 candidates
    assert kendall_tau_b([], []) is None


def test_tau_b_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        kendall_tau_b([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        kendall_tau_b([1, float("nan")], [1, 2])


def test_tau_b_matches_scipy_on_random_rankings_with_ties() -> None:
    from scipy import stats  # the dev extra installs it: a cross-check that skipped silently would check nothing
    rng = random.Random(1234)
    checked = 0
    for _ in range(300):
        k = rng.randint(2, 9)
        a = [rng.randint(1, 4) for _ in range(k)]  # few distinct ranks -> plenty of ties
        b = [rng.randint(1, 4) for _ in range(k)]
        ours = kendall_tau_b(a, b)
        if len(set(a)) < 2 or len(set(b)) < 2:
            assert ours is None
            continue
        assert ours == pytest.approx(stats.kendalltau(a, b, variant="b").statistic, abs=1e-12)
        checked += 1
    assert checked > 200


# ---------------------------------------------------------------------------------------------------------------
# Krippendorff's alpha

# Krippendorff (2011), section C: 4 coders, 12 units, values 1-5, '.' = missing.
_CLASSIC = {
    "A": "1 2 3 3 2 1 4 1 2 . . .",
    "B": "1 2 3 3 2 2 4 1 2 5 . 3",
    "C": ". 3 3 3 2 3 4 2 2 5 1 .",
    "D": "1 2 3 3 2 4 4 1 2 5 1 .",
}


def _classic_units() -> list[dict[str, float]]:
    units: list[dict[str, float]] = [{} for _ in range(12)]
    for coder, row in _CLASSIC.items():
        for u, value in enumerate(row.split()):
            if value != ".":
                units[u][coder] = int(value)
    return units


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_alpha_matches_the_krippendorff_package_on_random_units_with_missing_values(level: str) -> None:
    """Ours against the reference implementation on PyPI (coders x units, NaN where a coder gave no value)."""
    import krippendorff
    import numpy as np

    rng = random.Random(7)
    checked = 0
    for _ in range(60):
        coders, n_units = rng.randint(2, 5), rng.randint(3, 12)
        units: list[dict[str, float]] = [{} for _ in range(n_units)]
        matrix = np.full((coders, n_units), np.nan)
        for u in range(n_units):
            for c in range(coders):
                if rng.random() < 0.75:
                    value = rng.randint(1, 4)
                    units[u][f"c{c}"] = value
                    matrix[c, u] = value
        ours = krippendorff_alpha(units, level=level)
        pairable = sum(1 for unit in units if len(unit) >= 2)
        if ours is None or pairable < 2:
            continue
        theirs = krippendorff.alpha(reliability_data=matrix, level_of_measurement=level)
        assert ours == pytest.approx(theirs, abs=1e-9), (level, units)
        checked += 1
    assert checked > 40


@pytest.mark.parametrize(("level", "expected"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_alpha_krippendorff_2011_example(level: str, expected: float) -> None:
    alpha = krippendorff_alpha(_classic_units(), level=level)
    assert alpha is not None
    assert round(alpha, 3) == expected


def test_alpha_accepts_a_generator() -> None:
    alpha = krippendorff_alpha((u for u in _classic_units()), level="nominal")
    assert alpha is not None and round(alpha, 3) == 0.743


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_alpha_perfect_agreement_is_one(level: str) -> None:
    units = [{"a": 1, "b": 1, "c": 1}, {"a": 2, "b": 2}, {"a": 3, "c": 3}, {"b": 5, "c": 5}]
    assert krippendorff_alpha(units, level=level) == pytest.approx(1.0)


def test_alpha_two_coder_nominal_by_hand() -> None:
    # Units (coder x, coder y): (1,1), (1,2), (2,2), (2,2); plus a unit with one value, which is ignored.
    # Every pairable unit has m_u = 2, so each ordered pair of values adds 1/(m_u - 1) = 1:
    #   o_11 = 2, o_12 = o_21 = 1, o_22 = 2 + 2 = 4   ->   n_1 = 3, n_2 = 5, n = 8.
    # D_o = (o_12 + o_21) / n = 2/8; D_e = (n_1 n_2 + n_2 n_1) / (n (n-1)) = 30/56.
    # alpha = 1 - (2/8) / (30/56) = 1 - 112/240 = 8/15.
    units = [{"x": 1, "y": 1}, {"x": 1, "y": 2}, {"x": 2, "y": 2}, {"x": 2, "y": 2}, {"x": 1}]
    assert krippendorff_alpha(units, level="nominal") == pytest.approx(8 / 15)
    # With only two distinct values every metric gives the same constant delta_12, so alpha is the same.
    assert krippendorff_alpha(units, level="ordinal") == pytest.approx(8 / 15)
    assert krippendorff_alpha(units, level="interval") == pytest.approx(8 / 15)
    # Nominal values need not be numbers in order: relabelling 1 -> 7, 2 -> 3 changes nothing.
    relabelled = [{k: {1: 7, 2: 3}[v] for k, v in u.items()} for u in units]
    assert krippendorff_alpha(relabelled, level="nominal") == pytest.approx(8 / 15)


def test_alpha_none_and_nan_values_count_as_missing() -> None:
    units = [{"x": 1, "y": 1, "z": None}, {"x": 1, "y": 2, "z": float("nan")}, {"x": 2, "y": 2}, {"x": 2, "y": 2}]
    assert krippendorff_alpha(units, level="nominal") == pytest.approx(8 / 15)  # same data as above


def test_alpha_undefined_is_none() -> None:
    assert krippendorff_alpha([]) is None
    assert krippendorff_alpha([{"a": 1}, {"b": 2}]) is None  # no unit has 2 values
    assert krippendorff_alpha([{"a": 3, "b": 3}, {"a": 3, "c": 3}]) is None  # one value only: D_e = 0


def test_alpha_unknown_level() -> None:
    with pytest.raises(ValueError):
        krippendorff_alpha(_classic_units(), level="ratio")


# ---------------------------------------------------------------------------------------------------------------
# agreement()

# Item "b-bad": X and Y agree, Z reverses them.
#   tau(X,Y) = 1, tau(X,Z) = -1, tau(Y,Z) = -1           -> item mean -1/3.
# Item "a-good": Z did not rank r, so pairs with Z use {p, q} only.
#   tau(X,Y): (p,q) C, (p,r) C, (q,r) X 2<3 / Y 3>2 D   -> C=2, D=1, no ties -> 1/3
#   tau(X,Z) over {p,q}: 1<2 vs 1<2                       -> 1
#   tau(Y,Z) over {p,q}: 1<3 vs 1<2                       -> 1
#   item mean (1/3 + 1 + 1) / 3 = 7/9.
# Item "c-solo": one annotator -> skipped.
# mean_tau = (-1/3 + 7/9) / 2 = 2/9.
# per_pair: (X,Y) = (1 + 1/3)/2 = 2/3; (X,Z) = (-1 + 1)/2 = 0; (Y,Z) = (-1 + 1)/2 = 0.
_RANKINGS = {
    "a-good": {"X": {"p": 1, "q": 2, "r": 3}, "Y": {"p": 1, "q": 3, "r": 2}, "Z": {"p": 1, "q": 2}},
    "b-bad": {"X": {"p": 1, "q": 2, "r": 3}, "Y": {"p": 1, "q": 2, "r": 3}, "Z": {"p": 3, "q": 2, "r": 1}},
    "c-solo": {"X": {"p": 2, "q": 1, "r": 3}},
}


def test_agreement_three_annotators_by_hand() -> None:
    report = agreement(_RANKINGS)
    assert isinstance(report, AgreementReport)
    assert report.items == 2
    assert report.mean_tau == pytest.approx(2 / 9)
    assert set(report.per_pair) == {("X", "Y"), ("X", "Z"), ("Y", "Z")}
    assert report.per_pair[("X", "Y")] == pytest.approx(2 / 3)
    assert report.per_pair[("X", "Z")] == pytest.approx(0.0, abs=1e-12)
    assert report.per_pair[("Y", "Z")] == pytest.approx(0.0, abs=1e-12)
    # Default threshold 0: only "b-bad" (-1/3).
    assert [item for item, _ in report.disagreements] == ["b-bad"]
    assert report.disagreements[0][1] == pytest.approx(-1 / 3)


def test_agreement_alpha_by_hand() -> None:
    # Units (item, candidate) -> ranks; "c-solo" units have one value and do not count.
    #   b-bad p [1,1,3], q [2,2,2], r [3,3,1]; a-good p [1,1,1], q [2,3,2], r [3,2].
    # Coincidences (weight 1/(m_u - 1); 1/2 for 3-value units, 1 for the 2-value unit):
    #   [1,1,3]: o_11 += 1, o_13 += 1, o_31 += 1     [2,2,2]: o_22 += 3
    #   [3,3,1]: o_33 += 1, o_13 += 1, o_31 += 1     [1,1,1]: o_11 += 3
    #   [2,3,2]: o_22 += 1, o_23 += 1, o_32 += 1     [3,2]:   o_23 += 1, o_32 += 1
    #   o_11 = 4, o_22 = 4, o_33 = 1, o_13 = o_31 = 2, o_23 = o_32 = 2, o_12 = o_21 = 0
    #   n_1 = 6, n_2 = 6, n_3 = 5, n = 17.
    # Ordinal deltas: d_12 = (6+6 - 12/2)^2 = 36; d_23 = (6+5 - 11/2)^2 = 30.25; d_13 = (17 - 11/2)^2 = 132.25.
    # sum o d = 2 * (2 * 132.25 + 2 * 30.25) = 650
    # sum n_c n_k d = 2 * (36 * 36 + 30 * 132.25 + 30 * 30.25) = 12342
    # alpha = 1 - 16 * 650 / 12342 = 1942 / 12342 = 971 / 6171.
    report = agreement(_RANKINGS)
    assert report.alpha == pytest.approx(971 / 6171)


def test_agreement_threshold_and_worst_first_order() -> None:
    # "b-bad" (-1/3) sorts after "a-good" (7/9) by name but comes first as the worse item.
    report = agreement(_RANKINGS, threshold=0.8)
    assert [item for item, _ in report.disagreements] == ["b-bad", "a-good"]
    assert [tau for _, tau in report.disagreements] == pytest.approx([-1 / 3, 7 / 9])
    # The threshold is inclusive.
    report = agreement(_RANKINGS, threshold=7 / 9)
    assert [item for item, _ in report.disagreements] == ["b-bad", "a-good"]
    assert agreement(_RANKINGS, threshold=-0.5).disagreements == []


def test_agreement_per_pair_averages_only_items_both_judged() -> None:
    # u: X = Y                                   -> XY = 1;              item 1
    # v: Y reverses X, Z = X                     -> XY = -1, XZ = 1, YZ = -1; item -1/3
    # w: X [1,2,3], Y [1,3,2] (see "a-good")     -> XY = 1/3;            item 1/3
    # per_pair: XY = (1 - 1 + 1/3)/3 = 1/9; XZ = 1 (v only); YZ = -1 (v only). mean_tau = (1 - 1/3 + 1/3)/3 = 1/3.
    rankings = {
        "u": {"X": {"p": 1, "q": 2, "r": 3}, "Y": {"p": 1, "q": 2, "r": 3}},
        "v": {"X": {"p": 1, "q": 2, "r": 3}, "Y": {"p": 3, "q": 2, "r": 1}, "Z": {"p": 1, "q": 2, "r": 3}},
        "w": {"X": {"p": 1, "q": 2, "r": 3}, "Y": {"p": 1, "q": 3, "r": 2}},
    }
    report = agreement(rankings)
    assert report.items == 3
    assert report.per_pair == pytest.approx({("X", "Y"): 1 / 9, ("X", "Z"): 1.0, ("Y", "Z"): -1.0})
    assert report.mean_tau == pytest.approx(1 / 3)
    assert report.disagreements == [("v", pytest.approx(-1 / 3))]


def test_agreement_pair_keys_are_sorted() -> None:
    rankings = {"i": {"zoe": {"p": 1, "q": 2}, "adam": {"p": 2, "q": 1}}}
    report = agreement(rankings)
    assert report.per_pair == {("adam", "zoe"): pytest.approx(-1.0)}


def test_agreement_skips_single_annotator_items() -> None:
    rankings = {
        "solo": {"X": {"p": 1, "q": 2}},
        "empty-second": {"X": {"p": 1, "q": 2}, "Y": {}},  # an empty ranking is no judgment
    }
    report = agreement(rankings)
    assert report == AgreementReport(items=0, mean_tau=None, alpha=None, per_pair={}, disagreements=[])


def test_agreement_empty_input() -> None:
    assert agreement({}) == AgreementReport(items=0, mean_tau=None, alpha=None, per_pair={}, disagreements=[])


def test_agreement_undefined_pair_tau_is_left_out() -> None:
    # Y ties everything: tau(X,Y) is undefined. X and Z share only "p": also undefined.
    # The item still counts as judged by >= 2 annotators, but it has no tau.
    rankings = {"i": {"X": {"p": 1, "q": 2, "r": 3}, "Y": {"p": 1, "q": 1, "r": 1}, "Z": {"p": 1, "s": 2}}}
    report = agreement(rankings)
    assert report.items == 1
    assert report.mean_tau is None
    assert report.per_pair == {}
    assert report.disagreements == []
