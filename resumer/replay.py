"""Rebuilds the join state of one partition by replaying both topics.

The resumer keeps no state of its own on disk: its durable state is the
handle change topic, the callback topic up to the group's committed
offset, and Postgres. When a partition is assigned (at start, after a
crash, after a rebalance), the change topic's partition is read from its
start to its end and the callback partition from its start to the
committed offset; both are merged by record timestamp and fed to a fresh
`Join`, whose decisions are dropped: they were carried out when first
made. What was in flight comes back from `Join.pending_resumes`. Each
handle change also refills the Redis cache, so a flushed Redis comes back
the same way.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from outbox.errors import ConfigurationError
from outbox.settings import Settings
from resumer.cache import HandleView
from resumer.dlq import ParsedCallback, parse_callback
from resumer.events import parse_handle_change, schema_problem
from resumer.join import (
    Callback,
    CallbackInvalid,
    CallbackReceived,
    Event,
    Join,
    JoinConfig,
    SourcePosition,
)
from resumer.metrics import REPLAY_SECONDS

logger = logging.getLogger(__name__)

# Reading a partition to its end must finish; past this the assignment
# fails loudly instead of leaving a partition silently unprocessed.
REPLAY_TIMEOUT_SECONDS = 300.0


def join_config(settings: Settings) -> JoinConfig:
    """The join's configuration, the same for the live worker and a replay.

    A replay decides as the live machine did only with the same settings.
    """
    return JoinConfig(
        grace_seconds=settings.unknown_grace_seconds,
        retry_base_seconds=min(1.0, settings.resume_retry_cap_seconds),
        retry_cap_seconds=settings.resume_retry_cap_seconds,
        payload_check=schema_problem,
    )


Validator = Callable[[HandleView | None, dict[str, Any]], str | None]
Refill = Callable[[HandleView, int], None]


@dataclass
class Rebuilt:
    """A partition's join, and where live consumption continues."""

    join: Join
    handle_offset: int
    callback_offset: int
    views: dict[str, HandleView] = field(default_factory=dict)
    events: int = 0


def replay_consumer(settings: Settings) -> Consumer:
    """A group-less consumer that reads by assignment, committed data only."""
    return Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"pausewire-replay-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )


def read_range(
    consumer: Consumer, topic: str, partition: int, end: int
) -> list[Message]:
    """Every record of one partition from its start up to `end` (exclusive)."""
    low, high = consumer.get_watermark_offsets(
        TopicPartition(topic, partition), timeout=10
    )
    stop = min(end, high)
    if stop <= low:
        return []
    consumer.assign([TopicPartition(topic, partition, low)])
    records: list[Message] = []
    deadline = time.monotonic() + REPLAY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        message = consumer.poll(0.05)
        if message is None or message.error():
            position = consumer.position([TopicPartition(topic, partition)])[0]
            if position.offset >= stop:
                break
            continue
        offset = position_of(message).offset
        if offset >= stop:
            break
        records.append(message)
        if offset + 1 >= stop:
            break
    else:
        raise ConfigurationError(
            f"replaying {topic}[{partition}] did not reach offset {stop} within "
            f"{REPLAY_TIMEOUT_SECONDS:g} s"
        )
    return records


def rebuild_partition(
    settings: Settings,
    partition: int,
    committed_callback_offset: int,
    *,
    validate: Validator,
    refill: Refill | None = None,
    config: JoinConfig | None = None,
) -> Rebuilt:
    """The join of one partition, rebuilt from the topics."""
    started = time.monotonic()
    consumer = replay_consumer(settings)
    try:
        handle_end = consumer.get_watermark_offsets(
            TopicPartition(settings.handle_topic, partition), timeout=10
        )[1]
        changes = read_range(consumer, settings.handle_topic, partition, handle_end)
        callbacks = read_range(
            consumer, settings.callback_topic, partition, committed_callback_offset
        )
    finally:
        consumer.close()
    rebuilt = Rebuilt(Join(config), handle_end, max(committed_callback_offset, 0))
    for message in sorted([*changes, *callbacks], key=_order):
        event = _event(rebuilt, message, validate, refill)
        if event is not None:
            rebuilt.join.apply(event)
            rebuilt.events += 1
    took = time.monotonic() - started
    REPLAY_SECONDS.observe(took)
    logger.info(
        "Rebuilt partition %d from %d change(s) and %d callback(s) in %.2f s; "
        "%d resume(s) in flight",
        partition,
        len(changes),
        len(callbacks),
        took,
        len(rebuilt.join.pending_resumes()),
    )
    return rebuilt


def _order(message: Message) -> tuple[int, int, int]:
    # Record time first; on a tie a handle change goes before a callback,
    # as the change was committed before the callback could refer to it.
    _, timestamp = message.timestamp()
    position = position_of(message)
    is_change = position.topic.endswith("flow_resume_handles")
    return timestamp, 0 if is_change else 1, position.offset


def _event(
    rebuilt: Rebuilt,
    message: Message,
    validate: Validator,
    refill: Refill | None,
) -> Event | None:
    if position_of(message).topic.endswith("flow_resume_handles"):
        record = parse_handle_change(message.value())
        if record is None:
            return None
        _remember(rebuilt.views, record.view, deleted=record.change.deleted)
        if refill is not None and not record.change.deleted:
            refill(record.view, record.version)
        return record.change
    parsed = parse_callback(message.key(), message.value())
    if not isinstance(parsed, ParsedCallback):
        return None  # dead-lettered when first read
    callback = to_callback(parsed, message)
    problem = validate(rebuilt.views.get(parsed.correlation_id), parsed.result)
    if problem is not None:
        return CallbackInvalid(callback, problem)
    return CallbackReceived(callback, record_time(message))


def _remember(views: dict[str, HandleView], view: HandleView, *, deleted: bool) -> None:
    """Keeps the newest view per correlation id; a delete takes its own away."""
    current = views.get(view.correlation_id)
    if not deleted:
        views[view.correlation_id] = view
    elif current is not None and current.handle_id == view.handle_id:
        del views[view.correlation_id]


def position_of(message: Message) -> SourcePosition:
    """Where a consumed record sits; every record read from Kafka has one."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("a consumed record must carry topic, partition and offset")
    return SourcePosition(topic, partition, offset)


def to_callback(parsed: ParsedCallback, message: Message) -> Callback:
    """The join's view of a parsed callback record."""
    return Callback(parsed.correlation_id, parsed.result, position_of(message))


def record_time(message: Message) -> datetime:
    """The record's Kafka timestamp, as an aware datetime."""
    _, timestamp = message.timestamp()
    return datetime.fromtimestamp(timestamp / 1000, UTC)
