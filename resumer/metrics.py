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

from prometheus_client import Counter, Gauge, Histogram

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

# Raised on every record written to the dead-letter topic; the alert rule
# fires on its rate. `reason` is a DeadLetterReason or WorkerDeadLetterReason
# value, so its values are few and fixed.
DLQ_MESSAGES = Counter(
    "pausewire_dlq_messages_total",
    "Callbacks written to the dead-letter topic",
    ["reason"],
)

# SPEC's four. Handles are counted from the change log: the resumer is the
# one long-running process that sees every handle created.
HANDLES_CREATED = Counter(
    "prefect_handles_created_total",
    "Resume handles created, as seen on the change log",
)
HANDLES_RESUMED = Counter(
    "prefect_handles_resumed_total",
    "Flow runs resumed with their callback's payload",
)
RESUME_FAILURES = Counter(
    "prefect_resume_failures_total",
    "Resume attempts that failed; each is retried until the last",
)
RESUME_LATENCY = Histogram(
    "prefect_resume_latency_seconds",
    "From the callback's Kafka timestamp to Prefect accepting the resume",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

HANDLES_FAILED = Counter(
    "pausewire_handles_failed_total",
    "Handles marked RESUME_FAILED after the last attempt, for a person to see",
)
CALLBACKS = Counter(
    "pausewire_callbacks_total",
    "Callbacks consumed, by what the join decided first",
    ["decision"],
)
CONSUMER_LAG = Gauge(
    "pausewire_consumer_lag",
    "Records between the resumer's position and the end of a partition",
    ["topic", "partition"],
)
CDC_DELAY = Histogram(
    "pausewire_cdc_delay_seconds",
    "From a handle change's commit in Postgres to the resumer reading it",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REPLAY_SECONDS = Histogram(
    "pausewire_replay_seconds",
    "Time to rebuild one partition's join state from the topics",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
