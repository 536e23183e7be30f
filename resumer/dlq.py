"""The dead-letter topic: callbacks the resumer cannot apply, kept as they came.

A dead letter is the original record byte for byte (key, value, headers)
plus `pausewire.dlq.*` headers that say why it was rejected and where it was
read. Keeping the bytes lets a redrive send back exactly what the producer
sent, whether it parsed or not.

`DeadLetterQueue.send` returns only once the broker acknowledged the record
(acks=all, idempotent producer). The worker commits the callback's source
offset after that, so a crash in between dead-letters the callback twice
rather than losing it; redriving both copies is harmless because resuming
is idempotent.

`parse_callback` is the worker's first look at a callback record; what it
rejects never reaches the join.

    pausewire-dlq list [--limit N] [--reason R]
    pausewire-dlq redrive (--offsets P:O [P:O ...] | --reason R | --all)
                          [--to TOPIC] [--dry-run]

Both read each partition from its low to its high watermark as found at the
start, with a throwaway consumer group that commits nothing. Kafka cannot
delete single records, so a redriven record stays in the list.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from pydantic import ValidationError
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from outbox.errors import DeadLetterError
from outbox.models import MAX_CORRELATION_ID_LENGTH
from outbox.settings import Settings, get_settings
from outbox.topics import PARTITIONER, Headers, HeaderValue, header_map
from resumer.join import DeadLetterReason, SourcePosition
from resumer.metrics import DLQ_MESSAGES

logger = logging.getLogger(__name__)

# Invariant: these header names are the format of a dead letter. Renaming
# one hides what every record written before it says.
DLQ_HEADER_PREFIX = "pausewire.dlq."
REASON_HEADER = "pausewire.dlq.reason"
DETAIL_HEADER = "pausewire.dlq.detail"
SOURCE_TOPIC_HEADER = "pausewire.dlq.source.topic"
SOURCE_PARTITION_HEADER = "pausewire.dlq.source.partition"
SOURCE_OFFSET_HEADER = "pausewire.dlq.source.offset"
TIME_HEADER = "pausewire.dlq.time"
CORRELATION_ID_HEADER = "pausewire.dlq.correlation_id"
# Put on a redriven callback: `dlq-topic[partition]@offset` it came from.
REDRIVEN_FROM_HEADER = "pausewire.redriven-from"

DEFAULT_TIMEOUT_SECONDS = 30.0
PREVIEW_CHARS = 80

HeaderList = list[tuple[str, HeaderValue]]


class WorkerDeadLetterReason(StrEnum):
    """Why the worker rejects a record before the join ever sees it."""

    NOT_JSON = "not_json"
    NO_CORRELATION_ID = "no_correlation_id"
    KEY_MISMATCH = "key_mismatch"  # the key differs from the body's correlation_id


Reason = DeadLetterReason | WorkerDeadLetterReason


# ── parsing ─────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class ParsedCallback:
    """A callback of the right shape; `result` is the future run input."""

    correlation_id: str
    result: dict[str, Any]
    traceparent: str | None = None


@dataclass(frozen=True)
class Rejected:
    """A record that belongs in the dead-letter topic; `detail` is for people.

    `correlation_id` is the body's, when it had a usable one.
    """

    reason: Reason
    detail: str
    correlation_id: str | None = None


def parse_callback(key: bytes | None, value: bytes | None) -> ParsedCallback | Rejected:
    """Checks a callback record against the event shape of the spec.

    The value must be a UTF-8 JSON object with a non-blank string
    `correlation_id` of at most 255 characters and an object `result`; a
    key, when there is one, must be the correlation id's bytes, or the
    record sits on a partition that its handle's change events never reach.
    A string `traceparent` in the body is passed on; any other is ignored,
    as W3C trace context asks of a malformed one.
    """
    body = _json_object(value)
    if isinstance(body, Rejected):
        return body
    correlation_id = _correlation_id(body.get("correlation_id"))
    if isinstance(correlation_id, Rejected):
        return correlation_id
    if key is not None and key != correlation_id.encode():
        return Rejected(
            WorkerDeadLetterReason.KEY_MISMATCH,
            f"key {_preview(key)} differs from correlation_id {correlation_id!r}",
            correlation_id,
        )
    result = body.get("result")
    if not isinstance(result, dict):
        shown = "missing" if "result" not in body else f"a JSON {_json_type(result)}"
        return Rejected(
            DeadLetterReason.INVALID_PAYLOAD,
            f"result must be a JSON object, but it is {shown}",
            correlation_id,
        )
    traceparent = body.get("traceparent")
    if not isinstance(traceparent, str):
        traceparent = None
    return ParsedCallback(correlation_id, result, traceparent)


def _json_object(value: bytes | None) -> dict[str, Any] | Rejected:
    if value is None:
        return Rejected(WorkerDeadLetterReason.NOT_JSON, "the value is null")
    try:
        body = json.loads(value.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        return Rejected(WorkerDeadLetterReason.NOT_JSON, f"not UTF-8: {exc}")
    # RecursionError: nesting deep enough to exhaust the parser's stack.
    except (ValueError, RecursionError) as exc:
        return Rejected(WorkerDeadLetterReason.NOT_JSON, f"not JSON: {exc}")
    if not isinstance(body, dict):
        return Rejected(
            DeadLetterReason.INVALID_PAYLOAD,
            f"the value is a JSON {_json_type(body)}, not an object",
        )
    if not _storable(body):
        return Rejected(
            DeadLetterReason.INVALID_PAYLOAD,
            "a string holds \\u0000 or a lone surrogate, which Postgres cannot store",
        )
    return body


def _no_constant(name: str) -> None:
    # Python reads NaN and Infinity, which JSON has not; other readers fail.
    raise ValueError(f"{name} is not a JSON value")


def _storable(body: dict[str, Any]) -> bool:
    """False when a string in `body` cannot become Postgres text or jsonb.

    JSON escapes can spell both; the record would then fail at the handle
    store on every redelivery instead of once, here.
    """
    pending: list[object] = [body]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str) and not _storable_text(item):
            return False
    return True


def _storable_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _correlation_id(value: object) -> str | Rejected:
    if value is None or (isinstance(value, str) and not value.strip()):
        shown = "missing or null" if value is None else "blank"
        return Rejected(
            WorkerDeadLetterReason.NO_CORRELATION_ID, f"correlation_id is {shown}"
        )
    if not isinstance(value, str):
        return Rejected(
            DeadLetterReason.INVALID_PAYLOAD,
            f"correlation_id must be a string, but it is a JSON {_json_type(value)}",
        )
    if len(value) > MAX_CORRELATION_ID_LENGTH:
        return Rejected(
            DeadLetterReason.INVALID_PAYLOAD,
            f"correlation_id is {len(value)} characters long; at most "
            f"{MAX_CORRELATION_ID_LENGTH} are allowed",
        )
    return value


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "number")


def _preview(raw: bytes | None) -> str:
    if raw is None:
        return "null"
    return repr(raw.decode("utf-8", "replace")[:PREVIEW_CHARS])


# ── writing ─────────────────────────────────────────────────────────────────


def producer_config(
    bootstrap_servers: str, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> dict[str, Any]:
    """Producer settings for the dead-letter topic and for redrives.

    `timeout_seconds` is how long the caller will wait for acknowledgements.
    """
    return {
        "bootstrap.servers": bootstrap_servers,
        "client.id": "pausewire-dlq",
        # A redriven callback must land on its handle's partition number.
        "partitioner": PARTITIONER,
        # Acknowledged means on every in-sync replica, and a retry inside
        # librdkafka cannot write the record twice.
        "enable.idempotence": True,
        "acks": "all",
        # librdkafka gives a record up before the caller stops waiting, so
        # the delivery report says "failed" for certain, and no record left
        # in the queue lands later, behind the caller's back.
        "message.timeout.ms": max(1, int(timeout_seconds * 800)),
    }


@dataclass(frozen=True)
class Outgoing:
    """A record to produce, as it will be written."""

    key: bytes | None
    value: bytes | None
    headers: HeaderList


class DeadLetterQueue:
    """Writes dead letters; each is acknowledged before `send` returns."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self.topic = topic
        self._producer = producer
        self._timeout_seconds = timeout_seconds

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> DeadLetterQueue:
        settings = settings or get_settings()
        producer = Producer(producer_config(settings.kafka_bootstrap_servers))
        return cls(producer, settings.dlq_topic)

    def send(
        self,
        value: bytes | None,
        key: bytes | None,
        reason: Reason | str,
        source: SourcePosition | None,
        *,
        detail: str = "",
        correlation_id: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Writes the original record with the dead-letter headers added.

        Raises DeadLetterError when the broker did not acknowledge it in
        time; the caller must then leave the source offset uncommitted.
        """
        added = dead_letter_headers(
            reason, source, detail, correlation_id, datetime.now(UTC)
        )
        record = Outgoing(key, value, [*_without_ours(headers), *added])
        [where] = produce_durably(
            self._producer, self.topic, [record], self._timeout_seconds, correlation_id
        )

        DLQ_MESSAGES.labels(reason=str(reason)).inc()
        logger.warning(
            "Dead-lettered callback correlation_id=%s key=%s reason=%s from %s "
            "as %s: %s; redrive with `pausewire-dlq redrive --offsets %d:%d`",
            correlation_id or "-",
            _preview(key),
            reason,
            source or "an unknown position",
            where,
            detail or "no detail",
            where.partition,
            where.offset,
        )


def dead_letter_headers(
    reason: Reason | str,
    source: SourcePosition | None,
    detail: str,
    correlation_id: str | None,
    now: datetime,
) -> HeaderList:
    """The headers a dead letter carries on top of the original's."""
    headers: HeaderList = [
        (REASON_HEADER, str(reason).encode()),
        (DETAIL_HEADER, detail.encode()),
        (TIME_HEADER, now.astimezone(UTC).isoformat(timespec="milliseconds").encode()),
    ]
    if source is not None:
        headers += [
            (SOURCE_TOPIC_HEADER, source.topic.encode()),
            (SOURCE_PARTITION_HEADER, str(source.partition).encode()),
            (SOURCE_OFFSET_HEADER, str(source.offset).encode()),
        ]
    if correlation_id is not None:
        headers.append((CORRELATION_ID_HEADER, correlation_id.encode()))
    return headers


def _without_ours(headers: Headers | None) -> HeaderList:
    """The original headers minus dead-letter and redrive marks.

    A callback dead-lettered again after a redrive would otherwise carry
    two reasons and two origins, and readers take the last of each.
    """
    pairs = headers.items() if isinstance(headers, dict) else headers or []
    return [
        (name, value)
        for name, value in pairs
        if not name.startswith(DLQ_HEADER_PREFIX) and name != REDRIVEN_FROM_HEADER
    ]


def produce_durably(
    producer: Producer,
    topic: str,
    records: Sequence[Outgoing],
    timeout_seconds: float,
    correlation_id: str | None = None,
) -> list[SourcePosition]:
    """Produces `records` in order; returns where each was acknowledged."""
    reports: dict[int, SourcePosition | str] = {}
    for index, record in enumerate(records):
        try:
            producer.produce(
                topic,
                value=record.value,
                key=record.key,
                headers=record.headers,
                on_delivery=functools.partial(_record_report, reports, index),
            )
        except (BufferError, KafkaException) as exc:
            raise DeadLetterError(
                topic, f"produce refused: {exc}", correlation_id
            ) from exc

    # flush serves the delivery reports; what is still queued after it may
    # yet be written, so a retry can duplicate a record but never lose one.
    left = producer.flush(timeout_seconds)
    if left:
        reason = f"{left} record(s) not acknowledged within {timeout_seconds:g} s"
        raise DeadLetterError(topic, reason, correlation_id)
    return [
        _acknowledged(topic, reports.get(i), correlation_id)
        for i in range(len(records))
    ]


def _record_report(
    reports: dict[int, SourcePosition | str],
    index: int,
    error: KafkaError | None,
    message: Message,
) -> None:
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if error is not None or topic is None or partition is None or offset is None:
        reports[index] = error.str() if error is not None else "no position reported"
    else:
        reports[index] = SourcePosition(topic, partition, offset)


def _acknowledged(
    topic: str, report: SourcePosition | str | None, correlation_id: str | None
) -> SourcePosition:
    if isinstance(report, SourcePosition):
        return report
    raise DeadLetterError(topic, f"delivery failed: {report}", correlation_id)


# ── reading ─────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class DeadLetterRecord:
    """One record of the dead-letter topic, its dead-letter headers read."""

    position: SourcePosition  # in the dead-letter topic
    key: bytes | None
    value: bytes | None
    headers: HeaderList

    @classmethod
    def from_message(cls, message: Message) -> DeadLetterRecord:
        position = SourcePosition(
            message.topic() or "", message.partition() or 0, message.offset() or 0
        )
        headers = message.headers() or []
        pairs = list(headers.items()) if isinstance(headers, dict) else headers
        return cls(position, message.key(), message.value(), pairs)

    def header(self, name: str) -> str | None:
        raw = header_map(self.headers).get(name)
        return None if raw is None else raw.decode("utf-8", "replace")

    @property
    def reason(self) -> str:
        return self.header(REASON_HEADER) or "-"

    @property
    def correlation_id(self) -> str | None:
        """The id the worker named, else the key: a rejected body may have none."""
        named = self.header(CORRELATION_ID_HEADER)
        if named is None and self.key is not None:
            return self.key.decode("utf-8", "replace")
        return named

    @property
    def source(self) -> SourcePosition | None:
        topic = self.header(SOURCE_TOPIC_HEADER)
        partition = self.header(SOURCE_PARTITION_HEADER) or ""
        offset = self.header(SOURCE_OFFSET_HEADER) or ""
        if topic is None or not (partition.isdigit() and offset.isdigit()):
            return None
        return SourcePosition(topic, int(partition), int(offset))

    def summary(self) -> str:
        """One line: where, when, why, whose, from where, what."""
        return " ".join(
            [
                f"{self.position.partition}@{self.position.offset}",
                self.header(TIME_HEADER) or "-",
                self.reason,
                self.correlation_id or "-",
                str(self.source or "-"),
                _preview(self.value),
            ]
        )

    def redrive(self) -> Outgoing:
        """The original record, marked with where it comes back from."""
        origin = (REDRIVEN_FROM_HEADER, str(self.position).encode())
        return Outgoing(self.key, self.value, [*_without_ours(self.headers), origin])


def read_dead_letters(
    bootstrap_servers: str,
    topic: str,
    timeout_seconds: float,
    offsets: Sequence[tuple[int, int]] = (),
) -> Generator[DeadLetterRecord, None, None]:
    """Every record up to the high watermarks, or only those at `offsets`.

    Raises DeadLetterError for an offset the topic does not hold, and when
    the end is not reached within `timeout_seconds`.
    """
    deadline = time.monotonic() + timeout_seconds
    wanted = set(offsets)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"pausewire-dlq-{uuid.uuid4()}",
            "enable.auto.commit": False,
            # The end of a partition is the signal to stop reading it.
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        ranges = _watermarks(consumer, topic, timeout_seconds)
        if offsets:
            ranges = _narrowed(topic, ranges, offsets)
        for message in _read(consumer, topic, ranges, deadline):
            if not wanted or (message.partition(), message.offset()) in wanted:
                yield DeadLetterRecord.from_message(message)
    finally:
        consumer.close()


# A partition between leaders answers with one of these for a moment: just
# after the topic was created, or while a broker restarts.
_LEADERSHIP_ERRORS = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)


def _transient(exc: BaseException) -> bool:
    if not isinstance(exc, KafkaException) or not exc.args:
        return False
    error = exc.args[0]
    return isinstance(error, KafkaError) and (
        error.code() in _LEADERSHIP_ERRORS or error.retriable()
    )


def _watermarks(
    consumer: Consumer, topic: str, timeout_seconds: float
) -> dict[int, tuple[int, int]]:
    retrying = Retrying(
        stop=stop_after_delay(timeout_seconds),
        wait=wait_exponential(multiplier=0.05, max=1.0),
        retry=retry_if_exception(_transient),
        reraise=True,
    )
    try:
        metadata = consumer.list_topics(timeout=timeout_seconds)
        if topic not in metadata.topics:
            raise DeadLetterError(topic, "no such topic")
        return {
            partition: retrying(
                consumer.get_watermark_offsets,
                TopicPartition(topic, partition),
                timeout=timeout_seconds,
            )
            for partition in metadata.topics[topic].partitions
        }
    except KafkaException as exc:
        raise DeadLetterError(topic, f"cannot read watermarks: {exc}") from exc


def _narrowed(
    topic: str,
    ranges: dict[int, tuple[int, int]],
    offsets: Sequence[tuple[int, int]],
) -> dict[int, tuple[int, int]]:
    """Per partition, the span from the first to the last wanted offset."""
    narrowed: dict[int, tuple[int, int]] = {}
    for partition, offset in offsets:
        low, high = ranges.get(partition, (0, 0))
        if not low <= offset < high:
            held = f"offsets {low}..{high - 1}" if high > low else "no records"
            raise DeadLetterError(
                topic,
                f"no record {partition}@{offset}; partition {partition} holds {held}",
            )
        start, end = narrowed.get(partition, (offset, offset + 1))
        narrowed[partition] = (min(start, offset), max(end, offset + 1))
    return narrowed


def _read(
    consumer: Consumer,
    topic: str,
    ranges: dict[int, tuple[int, int]],
    deadline: float,
) -> Iterator[Message]:
    """Messages of each partition from `start` to before `end`, in order."""
    ends = {p: end for p, (start, end) in ranges.items() if start < end}
    consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in ends])
    while ends:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reason = f"partitions {sorted(ends)} not read to the end in time"
            raise DeadLetterError(topic, reason)
        message = consumer.poll(min(remaining, 1.0))
        if message is None:
            continue
        partition, offset = message.partition() or 0, message.offset() or 0

        error = message.error()
        # Aborted transactions leave offsets without a record: the end of
        # the partition, not the last offset, may be all that comes.
        if error is not None and error.code() == KafkaError._PARTITION_EOF:
            ends.pop(partition, None)
            continue
        if error is not None:
            raise DeadLetterError(topic, f"read failed: {error.str()}")

        # Records past the end arrived after the start; they are not ours.
        if offset < ends.get(partition, -1):
            if offset + 1 >= ends[partition]:
                del ends[partition]
            yield message


# ── command line ────────────────────────────────────────────────────────────


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `pausewire-dlq list|redrive`; exits 1 on any failure."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        settings = get_settings()
    except ValidationError as exc:
        # Named field by field: the error's own text quotes the environment,
        # secrets included.
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        logger.error("pausewire-dlq: settings are incomplete: %s", problems)
        return 1
    run: Callable[[argparse.Namespace, Settings], int] = args.run
    try:
        return run(args, settings)
    except (DeadLetterError, KafkaException) as exc:
        logger.error("pausewire-dlq: %s", exc)
        return 1


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--topic", help="dead-letter topic (default: KAFKA_DLQ_TOPIC)")
    common.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="give up reading or sending after this long (default: %(default)s)",
    )
    common.add_argument("--reason", help="only records with this reason")
    parser = argparse.ArgumentParser(
        prog="pausewire-dlq",
        description="List the dead-letter topic, or send records back from it.",
        epilog="Reads stop at the high watermarks found at the start.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    show = commands.add_parser("list", parents=[common], help="print dead letters")
    show.add_argument("--limit", type=_positive, metavar="N", help="print at most N")
    show.set_defaults(run=_list)

    redrive = commands.add_parser(
        "redrive", parents=[common], help="send dead letters back to a topic"
    )
    which = redrive.add_mutually_exclusive_group()
    which.add_argument(
        "--offsets",
        nargs="+",
        type=_partition_offset,
        metavar="P:O",
        help="the records at these partition:offset positions",
    )
    which.add_argument("--all", action="store_true", help="every record")
    redrive.add_argument(
        "--to", metavar="TOPIC", help="target topic (default: the callback topic)"
    )
    redrive.add_argument(
        "--dry-run", action="store_true", help="print what would be sent, send nothing"
    )
    redrive.set_defaults(run=_redrive)
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _partition_offset(text: str) -> tuple[int, int]:
    partition, _, offset = text.partition(":")
    if not (partition.isdigit() and offset.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not PARTITION:OFFSET")
    return int(partition), int(offset)


def _selected(
    args: argparse.Namespace, settings: Settings
) -> Generator[DeadLetterRecord, None, None]:
    topic = args.topic or settings.dlq_topic
    offsets = getattr(args, "offsets", None) or ()
    records = read_dead_letters(
        settings.kafka_bootstrap_servers, topic, args.timeout, offsets
    )
    with closing(records):
        for record in records:
            if args.reason is None or record.reason == args.reason:
                yield record


def _list(args: argparse.Namespace, settings: Settings) -> int:
    shown = 0
    with closing(_selected(args, settings)) as records:
        for record in records:
            print(record.summary())
            shown += 1
            if shown == args.limit:
                break
    return 0


def _redrive(args: argparse.Namespace, settings: Settings) -> int:
    if not (args.offsets or args.reason or args.all):
        raise DeadLetterError(
            args.topic or settings.dlq_topic,
            "say which records to redrive: --offsets, --reason or --all",
        )
    target = args.to or settings.callback_topic
    chosen = list(_selected(args, settings))
    if not chosen:
        logger.info("No dead letter matches; nothing to redrive")
        return 0
    if args.dry_run:
        for record in chosen:
            print(f"would redrive {record.position} -> {target}: {record.summary()}")
        return 0

    config = producer_config(settings.kafka_bootstrap_servers, args.timeout)
    producer = Producer(config)
    outgoing = [record.redrive() for record in chosen]
    sent = produce_durably(producer, target, outgoing, args.timeout)
    for record, where in zip(chosen, sent, strict=True):
        print(f"sent {record.position} -> {where}: {record.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
