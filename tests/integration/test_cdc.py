"""Rows written in Postgres reach Kafka through Debezium, keyed and intact."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.integration.conftest import keyed, value_json

pytestmark = pytest.mark.integration

HANDLE_TOPIC = "pausewire.public.flow_resume_handles"
OUTBOX_TOPIC = "pausewire.waits"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

INSERT_HANDLE = """
    INSERT INTO flow_resume_handles
        (correlation_id, flow_run_id, timeout_seconds, expires_at)
    VALUES (%s, gen_random_uuid(), 600, now() + interval '10 minutes')
    RETURNING id
"""
INSERT_EVENT = """
    INSERT INTO outbox_events
        (aggregatetype, aggregateid, type, payload, traceparent)
    VALUES ('waits', %s, 'input_requested', %s, %s)
"""


def _write_wait(conn: psycopg.Connection[tuple[object, ...]], cid: str) -> None:
    conn.execute(INSERT_HANDLE, (cid,))
    conn.execute(INSERT_EVENT, (cid, json.dumps({"question": cid}), TRACEPARENT))


def test_handle_and_outbox_rows_of_one_transaction_reach_their_topics(
    stack, app_conn, topic_reader, correlation_id
):
    reader = topic_reader([HANDLE_TOPIC, OUTBOX_TOPIC])

    with app_conn.transaction():
        _write_wait(app_conn, correlation_id)

    messages = reader.collect(keyed(correlation_id), count=2)
    by_topic = {m.topic(): m for m in messages}
    assert set(by_topic) == {HANDLE_TOPIC, OUTBOX_TOPIC}, (
        f"both rows must reach Kafka; got topics {sorted(by_topic)}"
    )
    handle = value_json(by_topic[HANDLE_TOPIC])
    assert handle["correlation_id"] == correlation_id
    assert handle["status"] == "PENDING_PAUSE"
    event = by_topic[OUTBOX_TOPIC]
    assert value_json(event) == {"question": correlation_id}
    headers = dict(event.headers() or [])
    assert headers.get("traceparent") == TRACEPARENT.encode(), (
        "the trace context must cross Kafka in a header, or traces break here"
    )
    assert headers.get("eventType") == b"input_requested"


def test_both_topics_put_one_correlation_id_on_the_same_partition(
    stack, app_conn, topic_reader, correlation_id
):
    from confluent_kafka import Producer

    from outbox.topics import PARTITIONER

    reader = topic_reader([HANDLE_TOPIC, "genesis.callbacks"])
    with app_conn.transaction():
        _write_wait(app_conn, correlation_id)
    producer = Producer({"bootstrap.servers": stack.kafka, "partitioner": PARTITIONER})
    producer.produce("genesis.callbacks", key=correlation_id, value=b"{}")
    producer.flush(10)

    messages = reader.collect(keyed(correlation_id), count=2)
    partitions = {m.topic(): m.partition() for m in messages}
    assert len(partitions) == 2, f"expected both topics, got {partitions}"
    assert partitions[HANDLE_TOPIC] == partitions["genesis.callbacks"], (
        "a handle and its callback on different partitions would be joined by "
        f"two different resumers: {partitions}"
    )


def test_status_update_reaches_the_change_topic(
    stack, app_conn, topic_reader, correlation_id
):
    # The reader starts before the insert: the insert's own change event may
    # still be on its way through Debezium when the update commits, and the
    # test must see both, in commit order, to say the update arrived.
    reader = topic_reader([HANDLE_TOPIC])
    with app_conn.transaction():
        handle_id = app_conn.execute(INSERT_HANDLE, (correlation_id,)).fetchone()[0]

    with app_conn.transaction():
        app_conn.execute(
            "UPDATE flow_resume_handles SET status = 'PAUSED', paused_at = now() "
            "WHERE id = %s",
            (handle_id,),
        )

    changes = [value_json(m) for m in reader.collect(keyed(correlation_id), count=2)]
    assert [(c["__op"], c["status"]) for c in changes] == [
        ("c", "PENDING_PAUSE"),
        ("u", "PAUSED"),
    ], f"expected the insert then the update on the change topic, got {changes}"
    assert {c["id"] for c in changes} == {str(handle_id)}


def test_rolled_back_transaction_sends_nothing(
    stack, app_conn, topic_reader, correlation_id
):
    reader = topic_reader([HANDLE_TOPIC, OUTBOX_TOPIC])
    marker = f"{correlation_id}-after"

    with pytest.raises(RuntimeError), app_conn.transaction():
        _write_wait(app_conn, correlation_id)
        raise RuntimeError("abort the transaction")
    # A committed transaction after the rolled-back one: once its rows
    # arrive, anything of the first would have arrived before them.
    with app_conn.transaction():
        _write_wait(app_conn, marker)

    rolled_back_key, marker_key = correlation_id.encode(), marker.encode()
    seen = reader.collect(lambda m: m.key() in (rolled_back_key, marker_key), count=2)
    assert [m.key() for m in seen] == [marker_key, marker_key], (
        "a rolled-back wait must never reach Kafka"
    )
