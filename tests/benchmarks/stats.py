"""Percentiles for the benchmark scripts, printed the same way by all."""

from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank: no interpolation."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(label: str, seconds: list[float]) -> str:
    """One line: count, median, p90, p99 and max, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return (
        f"{label:<44} n={len(ms):<5} median={statistics.median(ms):8.1f} ms  "
        f"p90={percentile(ms, 90):8.1f} ms  p99={percentile(ms, 99):8.1f} ms  "
        f"max={max(ms):8.1f} ms"
    )
