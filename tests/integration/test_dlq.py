"""The dead-letter queue and `pausewire-dlq` against the stack's Kafka.

Each test makes its own dead-letter and callback topics (3 partitions,
like the real ones), so no test sees another's records.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from outbox.errors import DeadLetterError
from outbox.settings import get_settings
from outbox.topics import header_map
from resumer.dlq import (
    REASON_HEADER,
    REDRIVEN_FROM_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
    TIME_HEADER,
    DeadLetterQueue,
    DeadLetterRecord,
    WorkerDeadLetterReason,
    main,
    producer_config,
    read_dead_letters,
)
from resumer.join import DeadLetterReason, SourcePosition
from tests.integration.conftest import keyed, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 3
READ_TIMEOUT_S = 20.0
# A repeated name on purpose: Kafka allows it and a redrive must keep both.
ORIGINAL_HEADERS = [
    ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("x-origin", b"crm"),
    ("x-origin", b"retry"),
]


@dataclass(frozen=True)
class Topics:
    dlq: str
    callbacks: str


@pytest.fixture
def topics(stack) -> Iterator[Topics]:
    """A fresh dead-letter topic and callback topic, deleted afterwards."""
    suffix = uuid.uuid4().hex[:12]
    made = Topics(f"test-dlq-{suffix}", f"test-callbacks-{suffix}")
    admin = AdminClient({"bootstrap.servers": stack.kafka})
    futures = admin.create_topics(
        [NewTopic(t, PARTITIONS, 1) for t in (made.dlq, made.callbacks)],
        request_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=30)
    wait_for(
        "the new topics in the cluster metadata",
        lambda: {made.dlq, made.callbacks} <= set(admin.list_topics(timeout=10).topics),
    )
    yield made
    for future in admin.delete_topics([made.dlq, made.callbacks]).values():
        future.result(timeout=30)


@pytest.fixture
def fresh_settings(stack) -> Iterator[None]:
    """The CLI reads settings; make it read the stack's, not a cached copy."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def dlq(stack, topics) -> DeadLetterQueue:
    producer = Producer(producer_config(stack.kafka))
    return DeadLetterQueue(producer, topics.dlq, timeout_seconds=30)


def records(stack, topic: str) -> list[DeadLetterRecord]:
    return list(read_dead_letters(stack.kafka, topic, READ_TIMEOUT_S))


def dead_letter(
    dlq: DeadLetterQueue, topics: Topics, correlation_id: str, offset: int = 42
) -> SourcePosition:
    """Sends one unparseable callback; returns the source position it names."""
    source = SourcePosition(topics.callbacks, 1, offset)
    dlq.send(
        b"\x00not json\xff",
        correlation_id.encode(),
        WorkerDeadLetterReason.NOT_JSON,
        source,
        detail="not JSON: Expecting value",
        headers=ORIGINAL_HEADERS,
    )
    return source


def test_send_keeps_the_original_bytes_and_headers(
    stack, topics, dlq, correlation_id
) -> None:
    source = dead_letter(dlq, topics, correlation_id)

    # send returned, so the record is below the high watermark already.
    [record] = records(stack, topics.dlq)

    assert record.key == correlation_id.encode()
    assert record.value == b"\x00not json\xff", "the original bytes were changed"
    assert record.headers[: len(ORIGINAL_HEADERS)] == ORIGINAL_HEADERS
    added = header_map(record.headers)
    assert added[REASON_HEADER] == b"not_json"
    assert added[SOURCE_TOPIC_HEADER] == topics.callbacks.encode()
    assert added[SOURCE_PARTITION_HEADER] == b"1"
    assert added[SOURCE_OFFSET_HEADER] == b"42"
    assert added[TIME_HEADER].endswith(b"+00:00")
    assert record.source == source


def test_list_prints_one_line_per_dead_letter(
    stack, topics, dlq, correlation_id, fresh_settings, capsys
) -> None:
    dead_letter(dlq, topics, correlation_id, offset=7)
    dlq.send(
        b'{"correlation_id": "late", "result": {}}',
        b"late",
        DeadLetterReason.HANDLE_EXPIRED,
        SourcePosition(topics.callbacks, 0, 8),
        correlation_id="late",
    )

    assert main(["list", "--topic", topics.dlq]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert main(["list", "--topic", topics.dlq, "--reason", "handle_expired"]) == 0
    expired = capsys.readouterr().out.splitlines()
    assert main(["list", "--topic", topics.dlq, "--limit", "1"]) == 0
    limited = capsys.readouterr().out.splitlines()

    assert len(lines) == 2, lines
    [not_json] = [line for line in lines if " not_json " in line]
    assert f" {correlation_id} {topics.callbacks}[1]@7 " in not_json
    assert not_json.endswith(repr("\x00not json\ufffd"))
    [line] = expired
    assert f" handle_expired late {topics.callbacks}[0]@8 " in line
    assert len(limited) == 1


def test_redrive_by_offset_puts_the_original_back(
    stack, topics, dlq, correlation_id, fresh_settings, topic_reader, capsys
) -> None:
    dead_letter(dlq, topics, correlation_id)
    [record] = records(stack, topics.dlq)
    where = record.position
    reader = topic_reader([topics.callbacks])

    argv = ["redrive", "--topic", topics.dlq, "--to", topics.callbacks]
    code = main([*argv, "--offsets", f"{where.partition}:{where.offset}"])

    assert code == 0
    assert f"sent {where} -> {topics.callbacks}[" in capsys.readouterr().out
    [back] = reader.collect(keyed(correlation_id), timeout_s=READ_TIMEOUT_S)
    assert back.value() == b"\x00not json\xff"
    assert back.headers() == [
        *ORIGINAL_HEADERS,
        (REDRIVEN_FROM_HEADER, str(where).encode()),
    ], "dead-letter headers leaked into the callback topic, or originals were lost"
    # Both topics have 3 partitions and both producers hash with murmur2,
    # so the key lands on the same partition number: the join needs that.
    assert back.partition() == where.partition


def test_redrive_dry_run_sends_nothing(
    stack, topics, dlq, correlation_id, fresh_settings, topic_reader, capsys
) -> None:
    dead_letter(dlq, topics, correlation_id)
    reader = topic_reader([topics.callbacks])

    argv = ["redrive", "--topic", topics.dlq, "--to", topics.callbacks]
    code = main([*argv, "--reason", "not_json", "--dry-run"])

    assert code == 0
    assert "would redrive" in capsys.readouterr().out
    assert reader.collect(keyed(correlation_id), timeout_s=2.0) == []


def test_redrive_of_an_offset_not_in_the_topic_fails_clearly(
    stack, topics, fresh_settings, caplog
) -> None:
    argv = ["redrive", "--topic", topics.dlq, "--offsets", "0:999"]

    assert main(argv) == 1
    assert "no record 0@999; partition 0 holds no records" in caplog.text


def test_send_to_an_unreachable_broker_raises_instead_of_returning() -> None:
    # Nothing listens on port 9; librdkafka gives the record up after 1.5 s.
    config = {**producer_config("127.0.0.1:9"), "message.timeout.ms": 1500}
    producer = Producer(config)
    queue = DeadLetterQueue(producer, "dlq.unreachable", timeout_seconds=10)
    started = time.monotonic()

    with pytest.raises(DeadLetterError, match="delivery failed") as raised:
        queue.send(b"{}", b"k", "not_json", None, correlation_id="lost")

    assert raised.value.correlation_id == "lost"
    assert time.monotonic() - started < 10


def test_send_that_outlasts_its_timeout_raises() -> None:
    config = {**producer_config("127.0.0.1:9"), "message.timeout.ms": 60_000}
    producer = Producer(config)
    queue = DeadLetterQueue(producer, "dlq.unreachable", timeout_seconds=1)

    with pytest.raises(DeadLetterError, match="not acknowledged within 1 s"):
        queue.send(b"{}", b"k", "not_json", None)
    producer.purge()
