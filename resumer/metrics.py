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

import json
import logging
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from urllib.request import urlopen

import psycopg
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from psycopg_pool import ConnectionPool

from outbox.store import Conn

logger = logging.getLogger(__name__)

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
RESUMES_DEFERRED = Counter(
    "pausewire_resumes_deferred_total",
    "Resume attempts that could not start (no lock quorum, Postgres away); "
    "tried again without counting towards the last attempt",
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

# ── read when Prometheus scrapes ────────────────────────────────────────────
#
# Two gauges describe the world outside the resumer rather than its own
# work, so they are read at scrape time instead of being kept up to date:
# Postgres's view of the handles, and Kafka Connect's view of the Debezium
# connector. Each answer is reused for a while, so that frequent scrapes do
# not turn into load; each call has a short timeout, so that a scrape never
# hangs on them.

HANDLE_STATISTICS_MAX_AGE_SECONDS = 5.0
CONNECTOR_MAX_AGE_SECONDS = 15.0
_CALL_TIMEOUT_SECONDS = 2.0

_STATISTICS = """
    SELECT status::text AS status, handles, past_expiry
      FROM flow_resume_handle_statistics
"""


class _Reused:
    """The last families a collector read, kept for `max_age_seconds`."""

    def __init__(self, max_age_seconds: float) -> None:
        self.max_age_seconds = max_age_seconds
        self.lock = threading.Lock()
        self.read_at = -math.inf
        self.families: list[Metric] = []

    def get(self, read: Callable[[], list[Metric]]) -> list[Metric]:
        with self.lock:
            if time.monotonic() - self.read_at >= self.max_age_seconds:
                self.families = read()
                self.read_at = time.monotonic()
            return self.families


class HandleStatistics(Collector):
    """`pausewire_handles{status}` and `pausewire_handles_past_expiry`.

    Read from the flow_resume_handle_statistics view, over every handle in
    Postgres (not only this resumer's partitions). Silent until `watch`
    gives it a pool, and for a scrape on which Postgres does not answer.
    """

    def __init__(self) -> None:
        self.pool: ConnectionPool[Conn] | None = None
        self._reused = _Reused(HANDLE_STATISTICS_MAX_AGE_SECONDS)

    def watch(self, pool: ConnectionPool[Conn]) -> None:
        self.pool = pool

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        pool = self.pool
        if pool is None:
            return []
        return self._reused.get(lambda: self._read(pool))

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "pausewire_handles",
                "Resume handles in Postgres, by status",
                labels=["status"],
            ),
            GaugeMetricFamily(
                "pausewire_handles_past_expiry",
                "Active handles (PENDING_PAUSE or PAUSED) past their expires_at",
            ),
        )

    def _read(self, pool: ConnectionPool[Conn]) -> list[Metric]:
        try:
            with (
                pool.connection(timeout=_CALL_TIMEOUT_SECONDS) as conn,
                conn.transaction(),
            ):
                conn.execute("SET LOCAL statement_timeout = '2s'")
                rows = conn.execute(_STATISTICS).fetchall()
        except psycopg.Error as exc:
            logger.warning("Handle statistics unavailable for this scrape: %s", exc)
            return []
        by_status, past_expiry = self._families()
        for row in rows:
            by_status.add_metric([row["status"]], row["handles"])
        past_expiry.add_metric([], sum(row["past_expiry"] for row in rows))
        return [by_status, past_expiry]


class ConnectorStatus(Collector):
    """`pausewire_connector_running{connector}`: 1 when the connector and
    all its tasks are RUNNING in Kafka Connect, else 0.

    Kafka Connect unreachable counts as not running: no change reaches
    Kafka either way. Silent until `watch` gives it Connect's address.
    """

    def __init__(self) -> None:
        self.url: str | None = None
        self.name = ""
        self._reused = _Reused(CONNECTOR_MAX_AGE_SECONDS)

    def watch(self, connect_url: str, connector_name: str) -> None:
        if urllib.parse.urlsplit(connect_url).scheme not in ("http", "https"):
            raise ValueError(f"Kafka Connect URL must be http(s): {connect_url!r}")
        self.url = connect_url.rstrip("/")
        self.name = connector_name

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        return [] if self.url is None else self._reused.get(self._read)

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "pausewire_connector_running",
            "1 when the Debezium connector and all its tasks are RUNNING",
            labels=["connector"],
        )

    def _read(self) -> list[Metric]:
        family = self._family()
        family.add_metric([self.name], 1.0 if self._running() else 0.0)
        return [family]

    def _running(self) -> bool:
        url = f"{self.url}/connectors/{urllib.parse.quote(self.name)}/status"
        try:
            # The scheme was checked to be http(s) in `watch`.
            with urlopen(url, timeout=_CALL_TIMEOUT_SECONDS) as reply:  # noqa: S310
                status = json.loads(reply.read())
        except (OSError, ValueError) as exc:
            logger.warning("Connector %s status unavailable: %s", self.name, exc)
            return False
        tasks = status.get("tasks") or []
        states = [status.get("connector", {}).get("state")]
        states += [task.get("state") for task in tasks]
        return bool(tasks) and all(state == "RUNNING" for state in states)


HANDLE_STATISTICS = HandleStatistics()
CONNECTOR_STATUS = ConnectorStatus()
REGISTRY.register(HANDLE_STATISTICS)
REGISTRY.register(CONNECTOR_STATUS)
