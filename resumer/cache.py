"""Handle snapshots by correlation id: Redis first, Postgres on a miss.

The worker fills the cache from the handle change log (`put`), each change
with its Debezium `__source_lsn` as version; look-ups (`get`) read Redis and
fall back to the newest row in Postgres, which then fills the cache too.

Ordering: the change log is at-least-once, so a redelivered older change
may arrive after a newer one. A Lua script compares versions inside Redis,
atomically, so an older state never replaces a newer one of the same
handle, and a late change to a finished handle never hides the active
wait of the same correlation id. A row read from Postgres is written only
where Redis holds nothing, with version 0: any change from the log wins
over it, because the log is what the join state follows.

Redis down: every call falls back to Postgres and the outage is logged
once. While Redis is down it is tried again at most once per
`redis_retry_seconds`, so a dead server costs the worker one short timeout
per interval, not one per look-up. Changes put during the outage are kept
(newest per handle, bounded) and written once Redis answers again; the
version check makes that late write safe.

Limits: a worker that stops during an outage loses the changes it kept;
replaying the change log rewrites them. Versions travel as Lua numbers,
exact up to 2**53, which a WAL position will not reach.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from redis.backoff import NoBackoff
from redis.retry import Retry

from outbox.errors import StoreUnavailableError
from outbox.settings import Settings, get_settings
from resumer.metrics import CACHE_ERRORS, CACHE_HITS, CACHE_MISSES

logger = logging.getLogger(__name__)

# Invariant: the Redis key of a correlation id's snapshot. Every worker
# version reads and writes the same keys; changing the format strands the
# cached entries and splits the cache between old and new workers.
KEY_FORMAT = "pausewire:handle:{correlation_id}"

# The waiting statuses of `handle_status`; the Lua script spells them too.
ACTIVE_STATUSES = frozenset({"PENDING_PAUSE", "PAUSED"})

# KEYS[1]: the snapshot key; ARGV[1]: the new value; ARGV[2]: its TTL in ms.
# Returns 1 when written, 0 when Redis already holds something newer.
_PUT_SCRIPT = """
local function active(view)
    return view.status == 'PENDING_PAUSE' or view.status == 'PAUSED'
end
local new = cjson.decode(ARGV[1])
local raw = redis.call('GET', KEYS[1])
if raw then
    local old = cjson.decode(raw)
    local same = old.handle_id == new.handle_id
    if not same and active(old) and not active(new) then
        return 0
    end
    if new.version < old.version then
        return 0
    end
    -- A Debezium snapshot gives every row one LSN: on a tie only an active
    -- wait may replace another handle's finished one.
    if new.version == old.version and (same or active(old) or not active(new)) then
        return 0
    end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_SELECT_LATEST = """
SELECT id::text AS handle_id, correlation_id, flow_run_id::text AS flow_run_id,
       status::text AS status, resume_payload, expires_at, resume_handle
  FROM flow_resume_handles
 WHERE correlation_id = %s
 ORDER BY created_at DESC
 LIMIT 1
"""

# The version of a snapshot read from Postgres: below every LSN.
_STORE_VERSION = 0


@dataclass(frozen=True)
class HandleView:
    """One handle as the resumer needs it to answer a callback.

    `resume_handle` holds the waiting flow's input "schema", the pause
    "mode" and the run input "keyset".
    """

    handle_id: str
    correlation_id: str
    flow_run_id: str
    status: str
    resume_payload: dict[str, Any] | None
    expires_at: datetime
    resume_handle: dict[str, Any]

    def __post_init__(self) -> None:
        if self.expires_at.utcoffset() is None:
            raise ValueError(
                f"expires_at of handle {self.handle_id} must carry a time zone"
            )

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def to_json(self, version: int) -> str:
        data = {**asdict(self), "expires_at": self.expires_at.isoformat()}
        return json.dumps({**data, "version": version}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> HandleView:
        data = json.loads(raw)
        data.pop("version", None)
        data["expires_at"] = datetime.fromisoformat(data["expires_at"])
        return cls(**data)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> HandleView:
        return cls(**row)


def cache_key(correlation_id: str) -> str:
    return KEY_FORMAT.format(correlation_id=correlation_id)


class _RedisUnavailable(Exception):
    """Redis did not answer, or is being left alone during an outage."""


class _Outage:
    """Whether Redis is down; logs each outage once, not once per call."""

    def __init__(self, where: str, retry_seconds: float) -> None:
        self._where = where
        self._retry_seconds = retry_seconds
        self._lock = threading.Lock()
        self._since: float | None = None
        self._next_try = 0.0

    def may_try(self) -> bool:
        with self._lock:
            return self._since is None or time.monotonic() >= self._next_try

    def failed(self, correlation_id: str, error: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            self._next_try = now + self._retry_seconds
            if self._since is not None:
                return
            self._since = now
        logger.warning(
            "Redis at %s unreachable (%s) for correlation_id=%s; answering "
            "handle look-ups from Postgres, trying Redis again every %g s",
            self._where,
            error,
            correlation_id,
            self._retry_seconds,
        )

    def succeeded(self) -> bool:
        """Record an answer; True when it ends an outage."""
        with self._lock:
            since, self._since = self._since, None
        if since is None:
            return False
        logger.info(
            "Redis at %s answers again after %.1f s; handle cache in use",
            self._where,
            time.monotonic() - since,
        )
        return True


class _MissedPuts:
    """Changes put while Redis was down, newest per handle, oldest first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._views: OrderedDict[str, tuple[HandleView, int]] = OrderedDict()

    def keep(self, view: HandleView, version: int) -> None:
        with self._lock:
            self._views.pop(view.handle_id, None)
            self._views[view.handle_id] = (view, version)
            if len(self._views) <= self._limit:
                return
            _, (dropped, _) = self._views.popitem(last=False)
        logger.warning(
            "More than %d handle changes missed during the Redis outage; "
            "correlation_id=%s stays stale in Redis until it expires or the "
            "change log is replayed",
            self._limit,
            dropped.correlation_id,
        )

    def take(self) -> list[tuple[HandleView, int]]:
        with self._lock:
            taken = list(self._views.values())
            self._views.clear()
        return taken


def connect_redis(url: str, timeout_seconds: float) -> redis.Redis:
    """A client that fails fast: no retries of its own, short timeouts.

    The callers have their fallbacks (Postgres, the lock's own attempts);
    redis-py's default backoff would stall the worker for seconds instead.
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        retry=Retry(NoBackoff(), 0),
    )


class HandleCache:
    """Redis-first look-up of handle snapshots, Postgres behind it.

    Thread safe: the Redis client and the Postgres pool are, and the
    outage state is guarded.
    """

    def __init__(
        self,
        pool: ConnectionPool[psycopg.Connection[Any]],
        redis_url: str,
        *,
        grace_seconds: float = 60.0,
        terminal_ttl_seconds: float = 300.0,
        timeout_seconds: float = 0.2,
        redis_retry_seconds: float = 1.0,
        max_missed_puts: int = 10_000,
    ) -> None:
        self._pool = pool
        self._client = connect_redis(redis_url, timeout_seconds)
        self._put_script = self._client.register_script(_PUT_SCRIPT)
        self._grace_seconds = grace_seconds
        self._terminal_ttl_seconds = terminal_ttl_seconds
        kwargs = self._client.connection_pool.connection_kwargs
        # host:port only: the URL may carry a password.
        where = f"{kwargs.get('host')}:{kwargs.get('port')}"
        self._outage = _Outage(where, redis_retry_seconds)
        self._missed = _MissedPuts(max_missed_puts)

    @classmethod
    def from_settings(
        cls,
        pool: ConnectionPool[psycopg.Connection[Any]],
        settings: Settings | None = None,
    ) -> HandleCache:
        settings = settings or get_settings()
        return cls(pool, settings.redis_url)

    def close(self) -> None:
        self._client.close()

    def put(self, view: HandleView, version: int) -> None:
        """Cache a handle change from the change log unless a newer one is.

        `version` is the change's `__source_lsn`. Never raises for Redis
        being down: the change is kept and written when Redis is back.
        """
        try:
            with self._redis(view.correlation_id) as client:
                self._put_script(
                    keys=[cache_key(view.correlation_id)],
                    args=[view.to_json(version), self.ttl_ms(view)],
                    client=client,
                )
        except _RedisUnavailable:
            self._missed.keep(view, version)

    def get(self, correlation_id: str) -> HandleView | None:
        """The newest handle of a correlation id, or None when it has none.

        Raises StoreUnavailableError when Redis cannot answer and neither
        can Postgres.
        """
        cached = self._cached(correlation_id)
        if cached is not None:
            CACHE_HITS.inc()
            return cached

        CACHE_MISSES.inc()
        view = self._load(correlation_id)
        # No entry for an unknown id: its handle may be written any moment,
        # and the change log then fills the cache.
        if view is not None:
            self._fill(view)
        return view

    def ttl_ms(self, view: HandleView, now: datetime | None = None) -> int:
        """Keep an active handle until it expires, plus a grace.

        A finished one is kept a short while, so redelivered and duplicate
        callbacks are still answered from Redis.
        """
        if view.is_active:
            now = now or datetime.now(UTC)
            left = (view.expires_at - now).total_seconds()
            seconds = left + self._grace_seconds
        else:
            seconds = self._terminal_ttl_seconds
        return max(1000, int(seconds * 1000))

    def _cached(self, correlation_id: str) -> HandleView | None:
        try:
            with self._redis(correlation_id) as client:
                raw = client.get(cache_key(correlation_id))
        except _RedisUnavailable:
            return None
        return None if raw is None else HandleView.from_json(raw)

    def _fill(self, view: HandleView) -> None:
        # NX: whatever the change log wrote meanwhile is at least as new.
        try:
            with self._redis(view.correlation_id) as client:
                client.set(
                    cache_key(view.correlation_id),
                    view.to_json(_STORE_VERSION),
                    px=self.ttl_ms(view),
                    nx=True,
                )
        except _RedisUnavailable:
            pass

    def _load(self, correlation_id: str) -> HandleView | None:
        try:
            with (
                self._pool.connection() as conn,
                conn.cursor(row_factory=dict_row) as cursor,
            ):
                row = cursor.execute(_SELECT_LATEST, (correlation_id,)).fetchone()
        except psycopg.Error as exc:
            raise StoreUnavailableError(
                f"looking up the handle of correlation id {correlation_id!r} "
                f"in Postgres failed: {exc}"
            ) from exc
        return None if row is None else HandleView.from_row(row)

    @contextmanager
    def _redis(self, correlation_id: str) -> Iterator[redis.Redis]:
        """The client, with outage bookkeeping around one Redis call.

        Raises _RedisUnavailable for a failed call, and without calling
        while an outage is fresh.
        """
        if not self._outage.may_try():
            raise _RedisUnavailable
        try:
            yield self._client
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            CACHE_ERRORS.inc()
            self._outage.failed(correlation_id, exc)
            raise _RedisUnavailable from exc
        if self._outage.succeeded():
            self._replay_missed()

    def _replay_missed(self) -> None:
        missed = self._missed.take()
        if missed:
            logger.info("Writing %d handle changes missed by Redis", len(missed))
        for view, version in missed:
            self.put(view, version)
