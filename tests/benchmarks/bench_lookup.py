"""Handle look-ups of the resumer: Redis first, Postgres on a miss.

    .venv/bin/python -m tests.benchmarks.bench_lookup [--lookups 2000]

Writes a few hundred handles, caches them as the change log would, then
times `HandleCache.get` answered by Redis (hits) and by Postgres (the same
look-ups after the keys were removed from Redis, so each is a miss that
reads Postgres and refills the cache).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import redis

from outbox.settings import get_settings
from outbox.store import get_store
from resumer.cache import HandleCache, HandleView, cache_key
from tests.benchmarks.stats import percentile, summary

HANDLES = 300


def _write_handles(dsn: str, run: str) -> list[str]:
    ids = [f"lookup-{run}-{i}" for i in range(HANDLES)]
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO flow_resume_handles (correlation_id, flow_run_id, "
            "timeout_seconds, expires_at, status) VALUES (%s, %s, 600, "
            "now() + interval '10 minutes', 'EXPIRED')",
            [(cid, uuid.uuid4()) for cid in ids],
        )
    return ids


def _timed(cache: HandleCache, ids: list[str], lookups: int) -> list[float]:
    took = []
    for i in range(lookups):
        started = time.perf_counter()
        view = cache.get(ids[i % len(ids)])
        took.append(time.perf_counter() - started)
        assert view is not None
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lookups", type=int, default=2000)
    args = parser.parse_args()
    settings = get_settings()
    store = get_store()
    cache = HandleCache(store.pool, settings.redis_url)
    client = redis.Redis.from_url(settings.redis_url)
    ids = _write_handles(settings.database_url.get_secret_value(), uuid.uuid4().hex[:8])
    expires = datetime.now(UTC) + timedelta(minutes=10)
    for cid in ids:
        view = HandleView(
            str(uuid.uuid4()), cid, str(uuid.uuid4()), "PAUSED", None, expires, {}
        )
        cache.put(view, 1)

    hits = _timed(cache, ids, args.lookups)
    misses = []
    for _ in range(max(args.lookups // HANDLES, 1)):
        client.delete(*[cache_key(cid) for cid in ids])
        misses += _timed(cache, ids, HANDLES)

    print(f"command: python -m tests.benchmarks.bench_lookup --lookups {args.lookups}")
    for label, values in (("Redis", hits), ("Postgres", misses)):
        print(summary(f"handle look-up answered by {label}", values))
        # Sub-millisecond figures need more digits than summary() shows.
        print(
            f"{'':<44} median={statistics.median(values) * 1e6:8.0f} us  "
            f"p99={percentile(values, 99) * 1e6:8.0f} us"
        )
    cache.close()


if __name__ == "__main__":
    main()
