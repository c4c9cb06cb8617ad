"""Is this reward model worth hours of PPO? Diagnostics on held-out preference pairs.

- pairwise accuracy: how often the chosen response scores higher;
- score distributions of chosen and rejected responses;
- length bias: the correlation between score and response length among responses of the same label
  (chosen with chosen, rejected with rejected: across labels, length and quality are confounded
  whenever the data's better answers are longer), and how often the model prefers the longer response
  compared with how often the data does (a reward model that learned "longer is better" is the
  classic reward hack PPO then exploits);
- calibration: predicted preference probability ``sigmoid(s_c - s_r)`` against the observed rate, in
  bins, each pair counted in both orders so the bins cover [0, 1] (Bradley-Terry models are
  probabilistic; a badly calibrated one gives PPO rewards on the wrong scale).

Numpy and pure Python, no torch, so the maths is testable without a model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from alignment.evaluation.stats import pearson


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """:func:`pearson` with NaN for undefined: this report's numbers are floats (NaN skipped by
    :func:`_mean_defined`, printed as "nan" by :func:`verdict`), never None."""
    r = pearson(x.tolist(), y.tolist())
    return float("nan") if r is None else r


def _mean_defined(values: list[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else float("nan")


def calibration_bins(chosen: np.ndarray, rejected: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Predicted vs observed preference probability per bin (both orders of every pair)."""
    p = 1.0 / (1.0 + np.exp(-(chosen - rejected)))  # (N,) P(chosen preferred)
    preds = np.concatenate([p, 1.0 - p])  # (2N,)
    observed = np.concatenate([np.ones_like(p), np.zeros_like(p)])  # (2N,)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(preds, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = idx == b
        if mask.any():
            out.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": int(mask.sum()),
                        "predicted": float(preds[mask].mean()), "observed": float(observed[mask].mean())})
    return out


def expected_calibration_error(bins: list[dict[str, float]]) -> float:
    total = sum(b["count"] for b in bins)
    return sum(b["count"] / total * abs(b["predicted"] - b["observed"]) for b in bins) if total else float("nan")


def diagnose(chosen: Any, rejected: Any, chosen_len: Any, rejected_len: Any) -> dict[str, Any]:
    """All diagnostics from per-pair scores (N,) and response lengths in tokens (N,)."""
    c, r = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    lc, lr = np.asarray(chosen_len, dtype=float), np.asarray(rejected_len, dtype=float)
    scores, lengths = np.concatenate([c, r]), np.concatenate([lc, lr])
    differ = lc != lr
    longer_first = np.where(lc > lr, c, r)[differ]  # score of the longer response in each pair
    shorter = np.where(lc > lr, r, c)[differ]
    bins = calibration_bins(c, r)
    return {
        "pairs": len(c),
        "accuracy": float((c > r).mean()) if len(c) else float("nan"),
        "chosen_mean": float(c.mean()), "chosen_std": float(c.std()),
        "rejected_mean": float(r.mean()), "rejected_std": float(r.std()),
        "margin_mean": float((c - r).mean()),
        "length_correlation": _pearson(scores, lengths),
        "length_correlation_within": _mean_defined([_pearson(c, lc), _pearson(r, lr)]),
        "prefers_longer": float((longer_first > shorter).mean()) if differ.any() else float("nan"),
        "data_prefers_longer": float((lc > lr)[differ].mean()) if differ.any() else float("nan"),
        "calibration": bins,
        "ece": expected_calibration_error(bins),
    }


def length_bias_level(d: dict[str, Any]) -> str:
    """low / moderate / high, from |corr(score, length)| within labels and how far the model's taste for
    longer answers exceeds the data's."""
    within = d.get("length_correlation_within", float("nan"))
    corr = abs(within) if not math.isnan(within) else 0.0
    excess = (d["prefers_longer"] - d["data_prefers_longer"]) if not math.isnan(d["prefers_longer"]) else 0.0
    if corr >= 0.5 or excess >= 0.2:
        return "high"
    if corr >= 0.3 or excess >= 0.1:
        return "moderate"
    return "low"


def verdict(d: dict[str, Any]) -> tuple[str, bool]:
    """A plain sentence, and whether the model looks fit to drive PPO."""
    bias = length_bias_level(d)
    text = (f"accuracy {d['accuracy']:.2f} on {d['pairs']} held-out pairs; length bias {bias} "
            f"(corr within labels {d['length_correlation_within']:+.2f}, prefers longer "
            f"{d['prefers_longer']:.2f} vs data {d['data_prefers_longer']:.2f}); calibration error {d['ece']:.2f}")
    if d["pairs"] < 20:
        return text + ". Too few held-out pairs to judge: add validation data.", False
    if d["accuracy"] < 0.6:
        return (text + ". It learned little: do not run PPO on it (more data, more steps, or a check of the "
                "labels)."), False
    if bias == "high":
        return text + ". It rewards length: PPO would learn to ramble. Balance lengths in the data first.", False
    if d["accuracy"] < 0.75:
        return text + ". Usable, but weak: expect a noisy PPO signal.", True
    if bias == "moderate":
        return text + ". Fit for PPO; watch rollout/response_length, it partly rewards length.", True
    return text + ". Fit for PPO.", True
