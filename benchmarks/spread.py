"""The spread the benchmarks report: median with the 10th and 90th percentiles.

One definition for every script, so that "p10–p90" means the same thing across
benchmarks/RESULTS.md (`statistics.quantiles`, inclusive method: the deciles of the
measured values themselves, no extrapolation beyond the smallest and largest).
"""

from __future__ import annotations

import statistics


def median_p10_p90(values: list[float]) -> tuple[float, float, float]:
    """(median, p10, p90) of `values`; one value gives that value three times."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return statistics.median(values), deciles[0], deciles[-1]
