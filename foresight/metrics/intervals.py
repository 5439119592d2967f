"""Success rates with their uncertainty: the 95 % Wilson score interval, and mean +- std over seeds.

A success rate from n trials is a binomial estimate; with the few trials a CPU evaluation affords (8 of 25 has a
95 % interval of about 0.17-0.51) a table without intervals cannot tell methods apart. The Wilson interval stays
inside [0, 1] and is sensible at 0 and n successes, where the normal approximation collapses to a point.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

Z95 = 1.959964  # two-sided 95 % normal quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval ``(low, high)`` of ``successes / n`` (``(0, 1)`` when ``n`` is 0)."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def success_summary(successes: int, trials: int, seed_rates: Sequence[float] | None = None) -> dict[str, Any]:
    """``{"rate", "successes", "trials", "ci95": [low, high]}`` pooled over all trials, plus ``"seed_mean"`` and
    ``"seed_std"`` (population std) of per-seed rates when more than one seed is given."""
    lo, hi = wilson_interval(successes, trials)
    out: dict[str, Any] = {"rate": successes / trials if trials else float("nan"), "successes": int(successes),
                           "trials": int(trials), "ci95": [lo, hi]}
    if seed_rates is not None and len(seed_rates) > 1:
        mean = sum(seed_rates) / len(seed_rates)
        out["seed_mean"] = mean
        out["seed_std"] = math.sqrt(sum((r - mean) ** 2 for r in seed_rates) / len(seed_rates))
        out["seeds"] = len(seed_rates)
    return out
