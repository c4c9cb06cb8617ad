"""Statistics shared by the evaluation reports (judged answers, reward-model diagnostics).

Pure Python, no numpy or torch: :mod:`alignment.evaluation.judge` keeps its maths import-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation in [-1, 1]; None when undefined: fewer than 3 points, or either side constant.

    "Constant" means every value is equal. Checked on the values themselves, not on the variance: the mean
    of equal floats can round away from them (three 0.1s average to 0.10000000000000002), which leaves a
    tiny variance and a meaningless correlation of rounding errors instead of "undefined".
    """
    if len(x) != len(y):
        raise ValueError(f"expected sequences of the same length, got {len(x)} and {len(y)}")
    n = len(x)
    if n < 3 or min(x) == max(x) or min(y) == max(y):
        return None
    xs, ys = [float(a) for a in x], [float(b) for b in y]  # numpy scalars in, a Python float out
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((a - mx) ** 2 for a in xs)
    syy = sum((b - my) ** 2 for b in ys)
    if sxx <= 0 or syy <= 0:  # differing values so close that their squared deviations underflow to 0
        return None
    sxy = sum((a - mx) * (b - my) for a, b in zip(xs, ys))
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))
