"""The handle cache against a Redis of its own and the stack's Postgres."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from resumer.cache import HandleCache, HandleView, cache_key
from tests.integration import redis_nodes

pytestmark = pytest.mark.integration

# Fixtures are found by module attribute; this makes the shared one visible.
redis_node = redis_nodes.redis_node

DEADLINE_S = 5.0
RESUME_HANDLE = {"schema": {"type": "object"}, "mode": "suspend", "keyset": {}}


@pytest.fixture
def pool(stack) -> Iterator[ConnectionPool[Any]]:
    with ConnectionPool(stack.app_dsn, min_size=1, max_size=2, open=True) as pool:
        yield pool


@pytest.fixture
def cache(pool, redis_node) -> Iterator[HandleCache]:
    cache = HandleCache(pool, redis_node.url, redis_retry_seconds=0.1)
    yield cache
    cache.close()


@pytest.fixture
def stored_handle(pool, correlation_id) -> Iterator[str]:
    """A real PAUSED row for the test's correlation id; returns its id."""
    with pool.connection() as conn:
        row = conn.execute(
            "INSERT INTO flow_resume_handles (correlation_id, flow_run_id, status, "
            "timeout_seconds, expires_at, resume_handle) VALUES (%s, "
            "gen_random_uuid(), 'PAUSED', 600, now() + interval '10 minutes', %s) "
            "RETURNING id::text",
            (correlation_id, Jsonb(RESUME_HANDLE)),
        ).fetchone()
    assert row is not None
    yield str(row[0])
    with pool.connection() as conn:
        conn.execute(
            "DELETE FROM flow_resume_handles WHERE correlation_id = %s",
            (correlation_id,),
        )


def _view(
    correlation_id: str,
    *,
    status: str = "PAUSED",
    handle_id: str | None = None,
    expires_in: timedelta = timedelta(minutes=10),
) -> HandleView:
    return HandleView(
        handle_id=handle_id or str(uuid.uuid4()),
        correlation_id=correlation_id,
        flow_run_id=str(uuid.uuid4()),
        status=status,
        resume_payload=None,
        expires_at=datetime.now(UTC) + expires_in,
        resume_handle=RESUME_HANDLE,
    )


def _count(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


class Counters:
    """The cache counters' movement since this object was made."""

    NAMES = ("hits", "misses", "errors")

    def __init__(self) -> None:
        self._start = {n: _count(f"pausewire_cache_{n}_total") for n in self.NAMES}

    def moved(self) -> dict[str, float]:
        return {
            n: _count(f"pausewire_cache_{n}_total") - self._start[n] for n in self.NAMES
        }


def _cache_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "resumer.cache" and r.levelno == logging.WARNING
    ]


def test_put_then_get_round_trips(cache, correlation_id):
    view = _view(correlation_id)
    counters = Counters()

    cache.put(view, version=10)

    assert cache.get(correlation_id) == view, "the cached snapshot came back changed"
    assert counters.moved() == {"hits": 1, "misses": 0, "errors": 0}


def test_older_version_does_not_overwrite_newer(cache, correlation_id):
    paused = _view(correlation_id, status="PAUSED")
    pending = _view(correlation_id, status="PENDING_PAUSE", handle_id=paused.handle_id)

    cache.put(paused, version=20)
    cache.put(pending, version=10)  # a redelivered older change
    assert cache.get(correlation_id) == paused, "an older change moved the handle back"

    resumed = _view(correlation_id, status="RESUMED", handle_id=paused.handle_id)
    cache.put(resumed, version=30)
    assert cache.get(correlation_id) == resumed, "a newer change was not cached"


def test_late_change_of_finished_handle_keeps_active_wait(cache, correlation_id):
    old = _view(correlation_id, status="EXPIRED")
    active = _view(correlation_id, status="PAUSED")

    cache.put(old, version=10)
    cache.put(active, version=20)
    cache.put(old, version=30)  # e.g. a person editing the finished row

    assert cache.get(correlation_id) == active, "the active wait was hidden"


def test_ttl_follows_expires_at(cache, redis_node, correlation_id):
    client = redis_node.client()
    key = cache_key(correlation_id)

    cache.put(_view(correlation_id, expires_in=timedelta(minutes=10)), version=1)
    # 10 minutes until expiry plus the 60 s grace.
    assert 655_000 <= client.pttl(key) <= 660_000

    gone = _view(correlation_id, expires_in=-timedelta(hours=1))
    client.delete(key)
    cache.put(gone, version=2)
    assert 0 < client.pttl(key) <= 1_000, "an expired handle must not linger"

    resumed = _view(correlation_id, status="RESUMED", handle_id=gone.handle_id)
    cache.put(resumed, version=3)
    assert 295_000 <= client.pttl(key) <= 300_000, "terminal handles keep 300 s"


def test_miss_falls_back_to_postgres_and_fills_cache(
    cache, redis_node, correlation_id, stored_handle
):
    counters = Counters()

    view = cache.get(correlation_id)

    assert view is not None and view.handle_id == stored_handle
    assert view.status == "PAUSED" and view.expires_at.utcoffset() is not None
    assert view.resume_handle["mode"] == "suspend"
    assert redis_node.client().exists(cache_key(correlation_id)) == 1
    assert cache.get(correlation_id) == view, "the filled entry differs from the row"
    assert counters.moved() == {"hits": 1, "misses": 1, "errors": 0}


def test_change_log_overrides_postgres_fill(cache, correlation_id, stored_handle):
    filled = cache.get(correlation_id)
    assert filled is not None

    resumed = _view(correlation_id, status="RESUMED", handle_id=stored_handle)
    cache.put(resumed, version=1)

    assert cache.get(correlation_id) == resumed, "a change lost against a fill"


def test_fill_racing_a_change_keeps_the_change(
    cache, correlation_id, stored_handle, monkeypatch
):
    resumed = _view(correlation_id, status="RESUMED", handle_id=stored_handle)
    read_postgres = cache._load

    def read_while_change_lands(cid):
        row = read_postgres(cid)
        cache.put(resumed, version=7)  # the change log, between read and fill
        return row

    monkeypatch.setattr(cache, "_load", read_while_change_lands)

    assert cache.get(correlation_id).status == "PAUSED"
    assert cache.get(correlation_id) == resumed, "a stale fill replaced a change"


def test_unknown_correlation_id_is_a_miss_and_not_cached(
    cache, redis_node, correlation_id
):
    counters = Counters()

    assert cache.get(correlation_id) is None

    assert redis_node.client().exists(cache_key(correlation_id)) == 0
    assert counters.moved() == {"hits": 0, "misses": 1, "errors": 0}


def test_redis_stopped_answers_from_postgres_and_warns_once(
    pool, redis_node, correlation_id, stored_handle, caplog
):
    # Retry Redis on every call, so each look-up meets the dead server.
    cache = HandleCache(pool, redis_node.url, redis_retry_seconds=0.0)
    assert cache.get(correlation_id) is not None
    redis_node.stop()
    counters = Counters()

    with caplog.at_level(logging.WARNING, logger="resumer.cache"):
        started = time.monotonic()
        views = [cache.get(correlation_id) for _ in range(3)]
        elapsed = time.monotonic() - started

    assert all(v is not None and v.handle_id == stored_handle for v in views)
    assert len(_cache_warnings(caplog)) == 1, "the outage must be logged once"
    assert correlation_id in _cache_warnings(caplog)[0].getMessage()
    # Each look-up meets the dead server twice: the read, then the fill.
    assert counters.moved() == {"hits": 0, "misses": 3, "errors": 6}
    assert elapsed < 2.0, "a dead Redis stalled the look-ups"
    cache.close()


def test_redis_restarted_cache_used_again(
    cache, redis_node, correlation_id, stored_handle, caplog
):
    redis_node.stop()
    assert cache.get(correlation_id) is not None
    redis_node.start()
    counters = Counters()

    deadline = time.monotonic() + DEADLINE_S
    with caplog.at_level(logging.INFO, logger="resumer.cache"):
        for _ in range(100):
            if counters.moved()["hits"] >= 1 or time.monotonic() > deadline:
                break
            assert cache.get(correlation_id) is not None
            time.sleep(0.05)

    assert counters.moved()["hits"] >= 1, "the cache was not used after the restart"
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_changes_put_during_outage_written_when_redis_returns(
    cache, redis_node, correlation_id
):
    view = _view(correlation_id)
    redis_node.stop()
    cache.put(view, version=5)
    redis_node.start()

    deadline = time.monotonic() + DEADLINE_S
    client = redis_node.client()
    for _ in range(100):
        cache.get(f"probe-{uuid.uuid4()}")  # any call notices the recovery
        if client.exists(cache_key(correlation_id)) or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    assert cache.get(correlation_id) == view, "a change missed in the outage was lost"


def test_hit_and_miss_counters(cache, correlation_id):
    counters = Counters()

    assert cache.get(correlation_id) is None
    cache.put(_view(correlation_id), version=1)
    cache.get(correlation_id)
    cache.get(correlation_id)

    assert counters.moved() == {"hits": 2, "misses": 1, "errors": 0}
