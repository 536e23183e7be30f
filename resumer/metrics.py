"""The resumer's Prometheus metrics, one module-level object each.

Every metric lives here so the `/metrics` endpoint and the dashboard have
one list to follow. Names are part of the dashboard and the alert rules:
renaming one breaks them.

Handle cache: every look-up counts once as a hit (answered by Redis) or a
miss (answered by Postgres); a Redis call that failed counts as an error
too, on top of the miss it turns into.

Resume lock: a wait is one pause between two acquisition attempts; a
failure is a lock given up after the last attempt; the histogram holds the
time from the first attempt to the lock or to giving up.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

CACHE_HITS = Counter(
    "pausewire_cache_hits_total",
    "Handle look-ups answered from Redis",
)
CACHE_MISSES = Counter(
    "pausewire_cache_misses_total",
    "Handle look-ups answered from Postgres",
)
CACHE_ERRORS = Counter(
    "pausewire_cache_errors_total",
    "Redis calls of the handle cache that failed to connect or timed out",
)

LOCK_WAITS = Counter(
    "pausewire_lock_waits_total",
    "Pauses between attempts to take a resume lock",
)
LOCK_FAILURES = Counter(
    "pausewire_lock_failures_total",
    "Resume locks given up without a quorum of Redis masters",
)
LOCK_WAIT_SECONDS = Histogram(
    "pausewire_lock_wait_seconds",
    "Time from the first attempt to take a resume lock to holding it or giving up",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
