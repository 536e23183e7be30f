"""The resume lock against Redis servers of its own, one or three masters."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from outbox.errors import LockNotAcquiredError
from resumer import locks
from resumer.locks import LockManager
from tests.integration import redis_nodes

pytestmark = pytest.mark.integration

# Fixtures are found by module attribute; this makes the shared ones visible.
redis_node = redis_nodes.redis_node
redis_trio = redis_nodes.redis_trio

TTL_S = 1.0


def _key(correlation_id: str) -> str:
    return f"pausewire:lock:{correlation_id}"


def _count(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
def managers() -> Iterator[list[LockManager]]:
    """Managers made by a test, closed at its end."""
    made: list[LockManager] = []
    yield made
    for manager in made:
        manager.close()


def _manager(
    made: list[LockManager], nodes: list[redis_nodes.RedisNode]
) -> LockManager:
    manager = LockManager([n.url for n in nodes], ttl_seconds=TTL_S)
    made.append(manager)
    return manager


def test_lock_excludes_a_second_holder(redis_node, managers, correlation_id):
    first = _manager(managers, [redis_node])
    second = _manager(managers, [redis_node])

    with first.resume_lock(correlation_id):
        assert redis_node.client().exists(_key(correlation_id)) == 1
        with (
            pytest.raises(LockNotAcquiredError) as caught,
            second.resume_lock(correlation_id),
        ):
            pytest.fail("a second holder entered the lock")

    assert caught.value.correlation_id == correlation_id


def test_renewal_keeps_lock_past_its_ttl(redis_node, managers, correlation_id):
    holder = _manager(managers, [redis_node])
    rival = LockManager([redis_node.url], ttl_seconds=TTL_S, retry_count=1)
    managers.append(rival)
    client = redis_node.client()

    with holder.resume_lock(correlation_id):
        held_until = time.monotonic() + 2.5 * TTL_S
        checks = 0
        while time.monotonic() < held_until and checks < 50:
            assert client.pttl(_key(correlation_id)) > 0, "the lock lapsed while held"
            with pytest.raises(LockNotAcquiredError), rival.resume_lock(correlation_id):
                pass
            checks += 1
            time.sleep(0.2)

    assert checks >= 5, "the loop ended before the TTL had passed"


def test_quorum_with_one_of_three_masters_stopped(redis_trio, managers, correlation_id):
    manager = _manager(managers, redis_trio)
    redis_trio[0].stop()

    with manager.resume_lock(correlation_id):
        live = [node.client().exists(_key(correlation_id)) for node in redis_trio[1:]]
        assert live == [1, 1], "the lock is not on both live masters"


def test_two_of_three_stopped_fails_after_retries(
    redis_trio, managers, correlation_id, monkeypatch
):
    manager = _manager(managers, redis_trio)
    redis_trio[0].stop()
    redis_trio[1].stop()
    attempts: list[float] = []
    real_acquire = locks._ResumeRedlock.acquire

    def counted_acquire(self, **kwargs):
        attempts.append(time.monotonic())
        return real_acquire(self, **kwargs)

    monkeypatch.setattr(locks._ResumeRedlock, "acquire", counted_acquire)
    failures = _count("pausewire_lock_failures_total")
    waits = _count("pausewire_lock_waits_total")

    with (
        pytest.raises(LockNotAcquiredError) as caught,
        manager.resume_lock(correlation_id),
    ):
        pytest.fail("the body ran without a quorum")

    assert caught.value.attempts == 3 and len(attempts) == 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert all(0.18 <= gap <= 0.6 for gap in gaps), f"attempts not 200 ms apart: {gaps}"
    assert _count("pausewire_lock_failures_total") - failures == 1
    assert _count("pausewire_lock_waits_total") - waits == 2
    assert redis_trio[2].client().exists(_key(correlation_id)) == 0, (
        "a failed attempt left its key behind on the live master"
    )


def _assert_released(nodes: list[redis_nodes.RedisNode], correlation_id: str) -> None:
    """Released on a quorum at once, and on every master well within the TTL.

    pottery returns from a release once a majority confirmed it; the last
    master's delete is still on its way then. A key that lapsed instead of
    being deleted would linger for the whole TTL.
    """
    left = [n.client().exists(_key(correlation_id)) for n in nodes]
    assert sum(left) <= (len(nodes) - 1) // 2, f"a quorum still holds the lock: {left}"
    deadline = time.monotonic() + TTL_S / 3
    while any(left) and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [n.client().exists(_key(correlation_id)) for n in nodes]
    assert not any(left), f"the release missed a master, the key lapses instead: {left}"


def test_lock_released_on_exit(redis_trio, managers, correlation_id):
    manager = _manager(managers, redis_trio)
    other = _manager(managers, redis_trio)

    with manager.resume_lock(correlation_id):
        pass
    _assert_released(redis_trio, correlation_id)

    with pytest.raises(RuntimeError), manager.resume_lock(correlation_id):
        raise RuntimeError("the resume failed")
    _assert_released(redis_trio, correlation_id)

    started = time.monotonic()
    with other.resume_lock(correlation_id):
        pass
    assert time.monotonic() - started < 0.15, "the next holder had to wait"


def test_wait_time_is_recorded(redis_node, managers, correlation_id):
    manager = _manager(managers, [redis_node])
    observed = _count("pausewire_lock_wait_seconds_count")

    with manager.resume_lock(correlation_id):
        pass

    assert _count("pausewire_lock_wait_seconds_count") - observed == 1
