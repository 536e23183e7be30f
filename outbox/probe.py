"""Sends one probe wait through the pipeline and shows where it arrives.

    python -m outbox.probe

Writes a handle row and an outbox event in one transaction, as the pause
helper does, then waits for both on their Kafka topics and prints the key,
partition, headers and the time each took. The probe handle is expired at
the end, so that nothing ever waits on it. Operators use it to check that
Postgres, Debezium and Kafka are wired together.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid

import psycopg
from confluent_kafka import Consumer, Message, TopicPartition

from outbox.settings import Settings, get_settings
from outbox.topics import header_map

logger = logging.getLogger(__name__)


def _consumer_at_end(settings: Settings, topics: list[str]) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"pausewire-probe-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    metadata = consumer.list_topics(timeout=10)
    assignment = []
    for topic in topics:
        for partition in metadata.topics[topic].partitions:
            _, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10
            )
            assignment.append(TopicPartition(topic, partition, high))
    consumer.assign(assignment)
    return consumer


def _write_probe(settings: Settings, correlation_id: str) -> float:
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        with conn.transaction():
            conn.execute(
                "INSERT INTO flow_resume_handles (correlation_id, flow_run_id, "
                "task_name, timeout_seconds, expires_at) VALUES (%s, "
                "gen_random_uuid(), 'probe', 60, now() + interval '1 minute')",
                (correlation_id,),
            )
            conn.execute(
                "INSERT INTO outbox_events (aggregatetype, aggregateid, type, "
                "payload) VALUES ('waits', %s, 'probe', %s)",
                (correlation_id, json.dumps({"probe": True})),
            )
        committed = time.monotonic()
        conn.execute(
            "UPDATE flow_resume_handles SET status = 'EXPIRED' "
            "WHERE correlation_id = %s AND status = 'PENDING_PAUSE'",
            (correlation_id,),
        )
        conn.commit()
    return committed


def _show(message: Message, took_s: float) -> None:
    headers = header_map(message.headers())
    shown = {k: v.decode() for k, v in headers.items() if not k.startswith("__")}
    print(
        f"  {message.topic()}[{message.partition()}]@{message.offset()} "
        f"key={message.key()!r} after {took_s * 1000:.0f} ms"
    )
    print(f"    value   {(message.value() or b'').decode()[:160]}")
    print(f"    headers {shown}")


def run(settings: Settings, timeout_s: float = 30.0) -> bool:
    """True when both rows of the probe reached Kafka before the timeout."""
    topics = [settings.handle_topic, settings.outbox_topic]
    consumer = _consumer_at_end(settings, topics)
    correlation_id = f"probe-{uuid.uuid4()}"
    print(f"Writing handle + outbox event for {correlation_id} in one transaction")
    committed = _write_probe(settings, correlation_id)
    pending = set(topics)
    deadline = time.monotonic() + timeout_s
    try:
        while pending and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            if message.key() == correlation_id.encode() and message.topic() in pending:
                pending.discard(message.topic())
                _show(message, time.monotonic() - committed)
    finally:
        consumer.close()
    for topic in sorted(pending):
        logger.error(
            "Probe %s never reached %s within %.0f s; check the connector with "
            "`python3 compose/native.py status` and its log",
            correlation_id,
            topic,
            timeout_s,
        )
    return not pending


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return 0 if run(get_settings()) else 1


if __name__ == "__main__":
    sys.exit(main())
