"""The resumer against the real stack, with real Prefect flows waiting.

Flows wait in threads of the test process; callbacks go to Kafka; the
resumer runs as its own process (`python -m resumer`), so it can be killed.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import redis
from confluent_kafka import Consumer, TopicPartition
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.input import RunInput

from flows.pause import wait_for_user_input
from outbox.topics import header_map
from tests.integration.conftest import handle_row, wait_for
from tests.integration.redis_nodes import redis_node
from tests.integration.resumers import produce_callback, resumer_env, resumers
from tests.integration.waits import FlowRunner, paused_handle

pytestmark = pytest.mark.integration

# Fixtures defined in sibling modules, used here by name.
__all__ = ["redis_node", "resumer_env", "resumers"]

ANSWER = {"user_response": "yes", "additional_data": {"ticket": 7}, "skipped": False}
DLQ_TOPIC = "dlq.prefect.callbacks"


class Approval(RunInput):
    approved: bool
    note: str = ""


@flow(persist_result=False)
def waiting(correlation_id: str) -> dict[str, Any]:
    return wait_for_user_input(correlation_id, timeout_seconds=300).model_dump()


@flow(persist_result=False)
def waiting_for_approval(correlation_id: str) -> dict[str, Any]:
    return wait_for_user_input(
        correlation_id, Approval, timeout_seconds=300
    ).model_dump()


@pytest.fixture
def runner(pausing: None) -> Any:
    with ThreadPoolExecutor(max_workers=6, thread_name_prefix="flow") as pool:
        yield FlowRunner(pool)


def _resumes(flow_run_id: uuid.UUID) -> int:
    """How often Prefect moved the run from Paused to Running."""
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run_id)
    ordered = sorted(states, key=lambda s: s.timestamp)
    return sum(
        1
        for before, after in itertools.pairwise(ordered)
        if before.is_paused() and after.is_running()
    )


def _status(stack: Any, correlation_id: str) -> str | None:
    row = handle_row(stack.admin_dsn, correlation_id)
    return None if row is None else str(row["status"])


def _parked(stack: Any, correlation_id: str) -> int:
    """Callbacks of `correlation_id` parked in early_callbacks."""
    with psycopg.connect(stack.admin_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM early_callbacks WHERE correlation_id = %s",
            (correlation_id,),
        ).fetchone()
    return int(row[0]) if row else 0


class DlqReader:
    """The dead-letter topic from its end at creation time."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"test-dlq-{uuid.uuid4()}",
                "enable.auto.commit": False,
            }
        )
        metadata = self.consumer.list_topics(DLQ_TOPIC, timeout=10)
        assignment = []
        for partition in metadata.topics[DLQ_TOPIC].partitions:
            tp = TopicPartition(DLQ_TOPIC, partition)
            high = self.consumer.get_watermark_offsets(tp, timeout=10)[1]
            assignment.append(TopicPartition(DLQ_TOPIC, partition, high))
        self.consumer.assign(assignment)

    def reasons(self, keys: set[bytes], timeout_s: float = 30.0) -> dict[bytes, str]:
        found: dict[bytes, str] = {}
        deadline = time.monotonic() + timeout_s
        while len(found) < len(keys) and time.monotonic() < deadline:
            message = self.consumer.poll(0.2)
            if message is None or message.error() or message.key() not in keys:
                continue
            reason = header_map(message.headers()).get("pausewire.dlq.reason", b"")
            found[message.key() or b""] = reason.decode()
        self.consumer.close()
        return found


def test_a_callback_resumes_the_waiting_flow_with_its_payload(
    stack, runner, resumers, correlation_id
):
    worker = resumers().start()
    future = runner.submit(waiting, correlation_id)
    row = paused_handle(stack, correlation_id)

    produce_callback(stack.kafka, correlation_id, ANSWER)

    assert future.result(timeout=30) == ANSWER
    assert _status(stack, correlation_id) == "RESUMED"
    assert _resumes(row["flow_run_id"]) == 1
    wait_for(
        "the resumed metric",
        lambda: worker.metric("prefect_handles_resumed_total") >= 1,
    )
    assert worker.metric("prefect_resume_latency_seconds_count") >= 1


def test_a_callback_before_the_handle_exists_is_applied_once_it_is_paused(
    stack, runner, resumers, correlation_id
):
    resumers().start()
    produce_callback(stack.kafka, correlation_id, ANSWER)
    time.sleep(0.5)  # let the resumer park it before the flow even starts

    started = time.monotonic()
    answer = runner.submit(waiting, correlation_id).result(timeout=30)

    assert answer == ANSWER
    assert time.monotonic() - started < 10, "the early answer must not wait long"
    assert _parked(stack, correlation_id) == 0, (
        "an applied early callback must not stay parked"
    )


def test_an_invalid_early_callback_does_not_block_the_valid_one_behind_it(
    stack, runner, resumers, correlation_id
):
    # Both answers come before the flow has even opened its wait, so neither
    # can be checked against its schema on arrival. Were the first kept as
    # the answer, Prefect would refuse it until the wait was given up.
    resumers().start()
    dlq = DlqReader(stack.kafka)
    produce_callback(stack.kafka, correlation_id, {"approved": "perhaps"})
    produce_callback(stack.kafka, correlation_id, {"approved": True, "note": "2nd"})

    wait_for(
        "the resumer to park the early callback",
        lambda: _parked(stack, correlation_id),
    )
    answer = runner.submit(waiting_for_approval, correlation_id).result(timeout=30)

    assert answer == {"approved": True, "note": "2nd"}
    assert dlq.reasons({correlation_id.encode()}) == {
        correlation_id.encode(): "invalid_payload"
    }, "the invalid early answer must be dead-lettered with its reason"
    stored = handle_row(stack.admin_dsn, correlation_id)
    assert stored is not None and stored["status"] == "RESUMED"
    assert stored["resume_payload"] == {"approved": True, "note": "2nd"}
    assert _parked(stack, correlation_id) == 0, (
        "a settled early callback must not stay parked"
    )


def test_duplicate_callbacks_resume_once_with_the_first_payload(
    stack, runner, resumers, correlation_id
):
    resumers().start()
    future = runner.submit(waiting, correlation_id)
    row = paused_handle(stack, correlation_id)
    second = {**ANSWER, "user_response": "no"}

    produce_callback(stack.kafka, correlation_id, ANSWER)
    produce_callback(stack.kafka, correlation_id, ANSWER)
    produce_callback(stack.kafka, correlation_id, second)

    assert future.result(timeout=30) == ANSWER
    time.sleep(1.0)  # give the duplicates every chance to do harm
    assert _resumes(row["flow_run_id"]) == 1, "a duplicate must never resume again"
    stored = handle_row(stack.admin_dsn, correlation_id)
    assert stored is not None and stored["resume_payload"] == ANSWER


def test_malformed_callbacks_go_to_the_dead_letter_topic_with_a_reason(
    stack, runner, resumers, correlation_id
):
    worker = resumers().start()
    dlq = DlqReader(stack.kafka)
    future = runner.submit(waiting_for_approval, correlation_id)
    paused_handle(stack, correlation_id)
    not_json, no_id = f"{correlation_id}-nj", f"{correlation_id}-ni"

    produce_callback(stack.kafka, not_json, None, raw=b"{not json")
    produce_callback(stack.kafka, no_id, None, raw=b'{"result": {}}')
    produce_callback(stack.kafka, correlation_id, {"approved": "perhaps"})

    reasons = dlq.reasons({not_json.encode(), no_id.encode(), correlation_id.encode()})
    assert reasons == {
        not_json.encode(): "not_json",
        no_id.encode(): "no_correlation_id",
        correlation_id.encode(): "invalid_payload",
    }
    assert worker.metric("pausewire_dlq_messages_total") >= 3
    # The wait is still open: a valid answer after the bad one still lands.
    produce_callback(stack.kafka, correlation_id, {"approved": True})
    assert future.result(timeout=30) == {"approved": True, "note": ""}


def test_redis_stopped_mid_run_loses_no_callback(
    stack, runner, resumers, redis_node, correlation_id
):
    worker = resumers(REDIS_URL=redis_node.url).start()
    future = runner.submit(waiting, correlation_id)
    paused_handle(stack, correlation_id)

    redis_node.stop()
    produce_callback(stack.kafka, correlation_id, ANSWER)
    time.sleep(2.0)
    assert worker.healthz().get("ready"), "the resumer must stay up without Redis"
    redis_node.start()

    assert future.result(timeout=60) == ANSWER
    assert _status(stack, correlation_id) == "RESUMED"


def test_a_lock_outage_longer_than_every_attempt_gives_no_wait_up(
    stack, runner, resumers, redis_node, correlation_id
):
    # Attempts come 0.2 s apart here, so the outage outlasts twelve of them:
    # were a missing lock quorum a failed attempt, the wait would be given
    # up (RESUME_FAILED) and its answer dead-lettered before Redis returned.
    worker = resumers(
        REDIS_URL=redis_node.url, PAUSEWIRE_RESUME_RETRY_CAP_SECONDS="0.2"
    ).start()
    future = runner.submit(waiting, correlation_id)
    paused_handle(stack, correlation_id)

    redis_node.stop()
    produce_callback(stack.kafka, correlation_id, ANSWER)
    wait_for(
        "more deferred attempts than a wait has attempts",
        lambda: worker.metric("pausewire_resumes_deferred_total") > 12,
        timeout_s=60,
    )
    assert _status(stack, correlation_id) == "PAUSED", "the outage gave the wait up"
    redis_node.start()

    assert future.result(timeout=60) == ANSWER
    assert _status(stack, correlation_id) == "RESUMED"
    assert worker.metric("pausewire_handles_failed_total") == 0
    assert worker.metric("prefect_resume_failures_total") == 0, (
        "an attempt that never reached Prefect was counted as a failure"
    )


def test_killed_between_prefect_resume_and_commit_resumes_only_once(
    stack, runner, resumers, correlation_id, monkeypatch
):
    # The flow's own safety poll would hide the recovery: keep it away.
    monkeypatch.setenv("PAUSEWIRE_SAFETY_POLL_SECONDS", "600")
    from outbox.settings import get_settings

    get_settings.cache_clear()
    crashing = resumers(PAUSEWIRE_CRASH_POINT="after_prefect_resume").start()
    future = runner.submit(waiting, correlation_id)
    row = paused_handle(stack, correlation_id)

    produce_callback(stack.kafka, correlation_id, ANSWER)
    assert crashing.wait_exit() == -signal.SIGKILL
    assert _status(stack, correlation_id) == "PAUSED", (
        "the crash point lies before the handle is marked"
    )

    _restart_same_group(resumers, crashing)

    assert future.result(timeout=60) == ANSWER
    assert _status(stack, correlation_id) == "RESUMED"
    assert _resumes(row["flow_run_id"]) == 1, "the restarted resumer resumed again"


def _restart_same_group(resumers: Any, crashed: Any) -> Any:
    group = crashed.env["KAFKA_CONSUMER_GROUP"]
    return resumers(KAFKA_CONSUMER_GROUP=group).start()


def test_two_resumers_in_one_group_share_the_work_without_double_resumes(
    stack, runner, resumers, correlation_id
):
    first = resumers().start()
    group = first.env["KAFKA_CONSUMER_GROUP"]
    second = resumers(KAFKA_CONSUMER_GROUP=group).start()
    ids = [f"{correlation_id}-{i}" for i in range(6)]
    futures = {cid: runner.submit(waiting, cid) for cid in ids}
    rows = {cid: paused_handle(stack, cid, timeout_s=30) for cid in ids}

    for cid in ids[:3]:
        produce_callback(stack.kafka, cid, ANSWER)
    # One member leaves mid-way; its partitions move to the other.
    first.signal(signal.SIGTERM)
    assert first.wait_exit() == 0, first.tail()
    for cid in ids[3:]:
        produce_callback(stack.kafka, cid, ANSWER)

    for cid in ids:
        assert futures[cid].result(timeout=60) == ANSWER
        assert _resumes(rows[cid]["flow_run_id"]) == 1, cid
    assert second.healthz().get("ready")


def test_replay_after_a_redis_flush_rebuilds_the_cache_and_matches_postgres(
    stack, runner, resumers, resumer_env, correlation_id
):
    resumers().start()
    future = runner.submit(waiting, correlation_id)
    paused_handle(stack, correlation_id)
    produce_callback(stack.kafka, correlation_id, ANSWER)
    future.result(timeout=30)
    client = redis.Redis.from_url(stack.redis_url)
    wait_for(
        "the RESUMED change in the cache",
        lambda: b"RESUMED" in (client.get(f"pausewire:handle:{correlation_id}") or b""),
    )

    client.flushall()
    replay = subprocess.run(
        [sys.executable, "-m", "resumer", "replay"],
        check=False,
        env=resumer_env,
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert "0 difference(s)" in replay.stdout, replay.stdout + replay.stderr
    assert replay.returncode == 0
    cached = json.loads(client.get(f"pausewire:handle:{correlation_id}") or b"{}")
    assert cached.get("status") == "RESUMED", "replay must refill the cache"
