"""Reward-model diagnostics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from alignment.evaluation.rm_diagnostics import calibration_bins, diagnose, expected_calibration_error, verdict


def test_accuracy_and_score_stats():
    d = diagnose([2.0, 1.0, 0.0, 3.0], [1.0, 2.0, -1.0, 0.0], [5, 5, 5, 5], [5, 5, 5, 5])
    assert d["accuracy"] == 0.75
    assert d["chosen_mean"] == 1.5 and d["rejected_mean"] == 0.5
    assert d["margin_mean"] == 1.0
    assert math.isnan(d["prefers_longer"])  # no pair differs in length


def test_calibration_counts_both_orders():
    # one pair with margin 0 -> p = 0.5 in both orders; one with margin log(3) -> p = 0.75 / 0.25
    bins = calibration_bins(__import__("numpy").array([0.0, math.log(3)]), __import__("numpy").array([0.0, 0.0]))
    by_low = {round(b["low"], 1): b for b in bins}
    assert by_low[0.5]["count"] == 2 and by_low[0.5]["predicted"] == pytest.approx(0.5)
    assert by_low[0.5]["observed"] == pytest.approx(0.5)
    assert by_low[0.7]["predicted"] == pytest.approx(0.75) and by_low[0.7]["observed"] == 1.0
    assert by_low[0.2]["predicted"] == pytest.approx(0.25) and by_low[0.2]["observed"] == 0.0
    # ECE = (2*0 + 1*0.25 + 1*0.25) / 4
    assert expected_calibration_error(bins) == pytest.approx(0.125)


def test_length_bias_is_judged_within_labels():
    """Chosen answers are longer and score higher, but within each label score ignores length:
    the overall correlation is high, the within-label one is ~0, so the verdict must not cry bias."""
    chosen = [3.0, 3.1, 2.9, 3.05, 2.95, 3.0] * 5
    rejected = [0.0, 0.1, -0.1, 0.05, -0.05, 0.0] * 5
    chosen_len = [40, 41, 39, 38, 42, 40] * 5
    rejected_len = [20, 19, 21, 22, 18, 20] * 5
    d = diagnose(chosen, rejected, chosen_len, rejected_len)
    assert d["length_correlation"] > 0.9
    assert abs(d["length_correlation_within"]) < 0.3
    assert d["prefers_longer"] == d["data_prefers_longer"] == 1.0
    text, fit = verdict(d)
    assert "length bias low" in text and fit


def test_length_hacking_reward_model_is_flagged():
    # score = length within each label: the model rewards length itself
    chosen_len = [10, 20, 30, 40, 50] * 5
    rejected_len = [5, 15, 25, 35, 45] * 5
    chosen = [n / 10 for n in chosen_len]
    rejected = [n / 10 for n in rejected_len]
    d = diagnose(chosen, rejected, chosen_len, rejected_len)
    assert d["accuracy"] == 1.0
    assert d["length_correlation_within"] > 0.99
    text, fit = verdict(d)
    assert "length bias high" in text and "ramble" in text and not fit


def test_verdicts():
    weak = diagnose([0.0, 1.0] * 15, [1.0, 0.0] * 15, [5] * 30, [5] * 30)
    text, fit = verdict(weak)
    assert text.startswith("accuracy 0.50 on 30 held-out pairs") and "learned little" in text and not fit
    few = diagnose([1.0] * 5, [0.0] * 5, [5] * 5, [5] * 5)
    assert "Too few held-out pairs" in verdict(few)[0]
