"""Tests of the dead-letter records in resumer/dlq.py, without Kafka.

`parse_callback` decides which callback records reach the join at all: a
record it wrongly accepts can resume the wrong wait, and one it wrongly
rejects is an answer that never arrives. The record tests pin the header
format, which every dead letter already written depends on, and the
durability contract of `send`, on which the worker's offset commit rests.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from outbox.errors import DeadLetterError
from outbox.topics import header_map
from resumer.dlq import (
    DETAIL_HEADER,
    REASON_HEADER,
    REDRIVEN_FROM_HEADER,
    SOURCE_OFFSET_HEADER,
    SOURCE_PARTITION_HEADER,
    SOURCE_TOPIC_HEADER,
    TIME_HEADER,
    DeadLetterQueue,
    DeadLetterRecord,
    ParsedCallback,
    Rejected,
    WorkerDeadLetterReason,
    _watermarks,
    dead_letter_headers,
    main,
    parse_callback,
)
from resumer.join import DeadLetterReason, SourcePosition

CID = "order-42"
SOURCE = SourcePosition("genesis.callbacks", 2, 17)
NOW = datetime(2025, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def valid(**extra: Any) -> bytes:
    return body(correlation_id=CID, result={"user_response": "yes"}, **extra)


def rejected(key: bytes | None, value: bytes | None) -> Rejected:
    outcome = parse_callback(key, value)
    assert isinstance(outcome, Rejected), f"accepted a bad record: {outcome}"
    return outcome


# ── parse_callback: accepted ────────────────────────────────────────────────


def test_spec_example_is_accepted_with_its_key() -> None:
    value = body(
        correlation_id=CID,
        result={"user_response": "ok", "additional_data": {"n": 1}},
    )

    parsed = parse_callback(CID.encode(), value)

    assert parsed == ParsedCallback(
        CID, {"user_response": "ok", "additional_data": {"n": 1}}, None
    )


def test_missing_key_is_accepted() -> None:
    parsed = parse_callback(None, valid())

    assert isinstance(parsed, ParsedCallback)
    assert parsed.correlation_id == CID


def test_empty_result_object_is_accepted() -> None:
    # Whether {} fits is the waiting flow's schema to say, not the shape's.
    parsed = parse_callback(None, body(correlation_id=CID, result={}))

    assert parsed == ParsedCallback(CID, {}, None)


def test_extra_fields_are_ignored() -> None:
    parsed = parse_callback(None, valid(source="crm", version=3))

    assert isinstance(parsed, ParsedCallback)


def test_traceparent_string_is_passed_on() -> None:
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    parsed = parse_callback(None, valid(traceparent=trace))

    assert isinstance(parsed, ParsedCallback)
    assert parsed.traceparent == trace


@pytest.mark.parametrize("trace", [None, 7, ["00-a"], {"v": 1}])
def test_traceparent_that_is_no_string_is_ignored(trace: object) -> None:
    parsed = parse_callback(None, valid(traceparent=trace))

    assert isinstance(parsed, ParsedCallback), "a bad trace context lost an answer"
    assert parsed.traceparent is None


def test_correlation_id_of_255_characters_is_accepted() -> None:
    cid = "x" * 255

    parsed = parse_callback(cid.encode(), body(correlation_id=cid, result={}))

    assert isinstance(parsed, ParsedCallback)


def test_non_ascii_correlation_id_matches_its_utf8_key() -> None:
    cid = "bestellung-über-€"

    parsed = parse_callback(cid.encode(), body(correlation_id=cid, result={}))

    assert isinstance(parsed, ParsedCallback)
    assert parsed.correlation_id == cid


# ── parse_callback: rejected ────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (None, "null"),
        (b"", "not JSON"),
        (b"hello", "not JSON"),
        (b'{"correlation_id": "a", ', "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"correlation_id": "a", "result": {"x": NaN}}', "NaN"),
        (b'{"correlation_id": "a", "result": {"x": -Infinity}}', "Infinity"),
        (b"[" * 100_000, "not JSON"),
        ('\ufeff{"correlation_id": "a", "result": {}}'.encode(), "not JSON"),
    ],
    ids=[
        "tombstone",
        "empty",
        "text",
        "truncated",
        "not-utf8",
        "nan",
        "infinity",
        "deep-nesting",
        "byte-order-mark",
    ],
)
def test_value_that_is_not_json_is_not_json(value: bytes | None, words: str) -> None:
    outcome = rejected(None, value)

    assert outcome.reason is WorkerDeadLetterReason.NOT_JSON
    assert words in outcome.detail


@pytest.mark.parametrize(
    ("value", "kind"),
    [(b"[]", "array"), (b'"text"', "string"), (b"42", "number"), (b"null", "null")],
)
def test_json_that_is_no_object_is_invalid(value: bytes, kind: str) -> None:
    outcome = rejected(None, value)

    assert outcome.reason is DeadLetterReason.INVALID_PAYLOAD
    assert f"a JSON {kind}, not an object" in outcome.detail


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"result": {}}, "missing or null"),
        ({"correlation_id": None, "result": {}}, "missing or null"),
        ({"correlation_id": "", "result": {}}, "blank"),
        ({"correlation_id": "  \t\n", "result": {}}, "blank"),
    ],
    ids=["missing", "null", "empty", "whitespace"],
)
def test_absent_correlation_id_is_no_correlation_id(
    fields: dict[str, Any], words: str
) -> None:
    outcome = rejected(None, body(**fields))

    assert outcome.reason is WorkerDeadLetterReason.NO_CORRELATION_ID
    assert outcome.detail == f"correlation_id is {words}"
    assert outcome.correlation_id is None


@pytest.mark.parametrize(
    ("cid", "kind"),
    [(42, "number"), (True, "boolean"), (["a"], "array"), ({"id": "a"}, "object")],
)
def test_correlation_id_that_is_no_string_is_invalid(cid: object, kind: str) -> None:
    outcome = rejected(None, body(correlation_id=cid, result={}))

    assert outcome.reason is DeadLetterReason.INVALID_PAYLOAD
    assert f"must be a string, but it is a JSON {kind}" in outcome.detail


def test_correlation_id_over_255_characters_is_invalid() -> None:
    outcome = rejected(None, body(correlation_id="x" * 256, result={}))

    assert outcome.reason is DeadLetterReason.INVALID_PAYLOAD
    assert "256 characters long; at most 255" in outcome.detail


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({}, "missing"),
        ({"result": None}, "a JSON null"),
        ({"result": ["yes"]}, "a JSON array"),
        ({"result": "yes"}, "a JSON string"),
        ({"result": 1.5}, "a JSON number"),
    ],
    ids=["missing", "null", "array", "string", "number"],
)
def test_result_that_is_no_object_is_invalid(
    fields: dict[str, Any], words: str
) -> None:
    outcome = rejected(CID.encode(), body(correlation_id=CID, **fields))

    assert outcome.reason is DeadLetterReason.INVALID_PAYLOAD
    assert outcome.detail == f"result must be a JSON object, but it is {words}"
    assert outcome.correlation_id == CID, "the record lost its correlation id"


@pytest.mark.parametrize(
    "key",
    [b"order-43", b"", b"ORDER-42", b"order-42 ", b"\xffbad"],
    ids=["other", "empty", "case", "trailing-space", "not-utf8"],
)
def test_key_that_differs_from_the_body_is_a_key_mismatch(key: bytes) -> None:
    # Such a record was partitioned by another id than its body names, so
    # its handle's change events are on another partition of the join.
    outcome = rejected(key, valid())

    assert outcome.reason is WorkerDeadLetterReason.KEY_MISMATCH
    assert f"differs from correlation_id {CID!r}" in outcome.detail
    assert outcome.correlation_id == CID


def test_key_mismatch_is_named_before_a_bad_result() -> None:
    outcome = rejected(b"other", body(correlation_id=CID, result=None))

    assert outcome.reason is WorkerDeadLetterReason.KEY_MISMATCH


@pytest.mark.parametrize(
    "value",
    [
        rb'{"correlation_id": "a\u0000b", "result": {}}',
        rb'{"correlation_id": "\ud800", "result": {}}',
        rb'{"correlation_id": "a", "result": {"answer": "\udfff"}}',
        rb'{"correlation_id": "a", "result": {"k\u0000": 1}}',
        rb'{"correlation_id": "a", "result": {"deep": [[{"x": ["\u0000"]}]]}}',
    ],
    ids=["nul-id", "surrogate-id", "surrogate-result", "nul-key", "nul-deep"],
)
def test_strings_postgres_cannot_store_are_invalid(value: bytes) -> None:
    # Accepted, such a record would fail at the handle store on every
    # redelivery, holding up its partition.
    outcome = rejected(b"a", value)

    assert outcome.reason is DeadLetterReason.INVALID_PAYLOAD
    assert "Postgres cannot store" in outcome.detail


def test_escaped_backslash_before_u0000_text_is_accepted() -> None:
    # The string is a backslash followed by "u0000", not a NUL character.
    value = rb'{"correlation_id": "a", "result": {"text": "\\u0000"}}'

    assert isinstance(parse_callback(b"a", value), ParsedCallback)


def test_long_key_is_shortened_in_the_detail() -> None:
    outcome = rejected(b"k" * 5000, valid())

    assert len(outcome.detail) < 200


@given(key=st.none() | st.binary(max_size=40), value=st.none() | st.binary())
def test_any_bytes_give_an_answer_never_an_exception(
    key: bytes | None, value: bytes | None
) -> None:
    assert isinstance(parse_callback(key, value), ParsedCallback | Rejected)


# Strings Postgres can store; the others have tests of their own.
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=5)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3)
    ),
    max_leaves=10,
)


@given(
    cid=json_values | st.text(st.characters(codec="utf-8"), max_size=300),
    result=json_values,
    keyed=st.booleans(),
)
def test_accepted_records_satisfy_the_shape(
    cid: object, result: object, keyed: bool
) -> None:
    raw = json.dumps({"correlation_id": cid, "result": result}).encode()
    key = cid.encode() if keyed and isinstance(cid, str) else None

    outcome = parse_callback(key, raw)

    shaped = (
        isinstance(cid, str)
        and bool(cid.strip())
        and len(cid) <= 255
        and "\x00" not in cid
        and isinstance(result, dict)
    )
    assert isinstance(outcome, ParsedCallback) == shaped, outcome


def test_reason_values_are_fixed() -> None:
    # Written into every dead letter and used as a metric label.
    assert {r.value for r in WorkerDeadLetterReason} == {
        "not_json",
        "no_correlation_id",
        "key_mismatch",
    }


# ── dead-letter headers ─────────────────────────────────────────────────────


def test_dead_letter_headers_carry_reason_detail_time_and_source() -> None:
    headers = header_map(
        dead_letter_headers(DeadLetterReason.HANDLE_EXPIRED, SOURCE, "late", CID, NOW)
    )

    assert headers[REASON_HEADER] == b"handle_expired"
    assert headers[DETAIL_HEADER] == b"late"
    assert headers[TIME_HEADER] == b"2025-03-04T05:06:07.890+00:00"
    assert headers[SOURCE_TOPIC_HEADER] == b"genesis.callbacks"
    assert headers[SOURCE_PARTITION_HEADER] == b"2"
    assert headers[SOURCE_OFFSET_HEADER] == b"17"


def test_dead_letter_time_is_written_in_utc() -> None:
    local = NOW.astimezone(timezone(timedelta(hours=-5)))

    headers = header_map(dead_letter_headers("r", None, "", None, local))

    written = datetime.fromisoformat(headers[TIME_HEADER].decode())
    assert written == NOW
    assert written.utcoffset() == timedelta(0)


def test_unknown_source_leaves_the_source_headers_out() -> None:
    headers = header_map(dead_letter_headers("r", None, "", None, NOW))

    assert SOURCE_TOPIC_HEADER not in headers
    assert SOURCE_OFFSET_HEADER not in headers


# ── records read back ───────────────────────────────────────────────────────


def dead_letter_message(
    offset: int = 9,
    key: bytes | None = CID.encode(),
    value: bytes | None = b'{"correlation_id": "order-42"}',
    original: list[tuple[str, bytes]] | None = None,
    correlation_id: str | None = CID,
) -> Message:
    added = dead_letter_headers(
        WorkerDeadLetterReason.NOT_JSON, SOURCE, "bad", correlation_id, NOW
    )
    headers = [*(original or []), *added]
    return Message(
        topic="dlq.test",
        partition=1,
        offset=offset,
        key=key,
        value=value,
        headers=headers,
    )


def test_record_reads_its_reason_source_and_correlation_id() -> None:
    record = DeadLetterRecord.from_message(dead_letter_message())

    assert record.position == SourcePosition("dlq.test", 1, 9)
    assert record.reason == "not_json"
    assert record.source == SOURCE
    assert record.correlation_id == CID


def test_record_without_a_named_correlation_id_falls_back_to_its_key() -> None:
    message = dead_letter_message(key=b"from-key", correlation_id=None)

    assert DeadLetterRecord.from_message(message).correlation_id == "from-key"


def test_record_summary_is_one_line_with_a_short_preview() -> None:
    value = ("line one\n" + "x" * 200).encode()
    record = DeadLetterRecord.from_message(dead_letter_message(value=value))

    summary = record.summary()

    assert "\n" not in summary
    assert summary.startswith(
        "1@9 2025-03-04T05:06:07.890+00:00 not_json order-42 genesis.callbacks[2]@17 "
    )
    assert summary.endswith(repr(value.decode()[:80]))


def test_record_without_dead_letter_headers_still_summarises() -> None:
    message = Message(topic="dlq.test", partition=0, offset=0, key=None, value=None)

    summary = DeadLetterRecord.from_message(message).summary()

    assert summary == "0@0 - - - - null"


def test_redrive_restores_the_original_headers_and_marks_the_origin() -> None:
    original = [("traceparent", b"00-ab"), ("x", b"1"), ("x", b"2")]
    stale = [("pausewire.dlq.reason", b"old"), (REDRIVEN_FROM_HEADER, b"dlq[0]@1")]
    message = dead_letter_message(original=original + stale)

    outgoing = DeadLetterRecord.from_message(message).redrive()

    assert outgoing.key == CID.encode()
    assert outgoing.value == b'{"correlation_id": "order-42"}'
    assert outgoing.headers == [*original, (REDRIVEN_FROM_HEADER, b"dlq.test[1]@9")]


# ── send: durable before it returns ─────────────────────────────────────────


class FakeProducer:
    """Answers produce/flush like confluent-kafka, with a chosen outcome."""

    def __init__(self, error: KafkaError | None = None, left: int = 0) -> None:
        self.error = error
        self.left = left
        self.sent: list[dict[str, Any]] = []
        self._reports: list[Any] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.sent.append({"topic": topic, **kwargs})
        self._reports.append((kwargs["on_delivery"], topic, len(self.sent)))

    def flush(self, timeout: float = -1) -> int:
        if self.left:
            return self.left
        for report, topic, offset in self._reports:
            message = Message(topic=topic, partition=0, offset=offset)
            report(self.error, message)
        self._reports.clear()
        return 0


def dlq_count(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "pausewire_dlq_messages_total", {"reason": reason}
    )
    return value or 0.0


def test_send_writes_the_original_bytes_counts_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer = FakeProducer()
    before = dlq_count("key_mismatch")
    caplog.set_level(logging.WARNING, logger="resumer.dlq")

    DeadLetterQueue(producer, "dlq.test").send(
        b"\x00raw",
        b"key",
        WorkerDeadLetterReason.KEY_MISMATCH,
        SOURCE,
        detail="mismatch",
        correlation_id=CID,
        headers=[("h", b"v")],
    )

    [sent] = producer.sent
    assert (sent["topic"], sent["value"], sent["key"]) == (
        "dlq.test",
        b"\x00raw",
        b"key",
    )
    assert sent["headers"][0] == ("h", b"v")
    assert dlq_count("key_mismatch") == before + 1
    [line] = [r for r in caplog.records if r.name == "resumer.dlq"]
    assert line.levelno == logging.WARNING
    assert CID in line.getMessage()
    assert "key_mismatch" in line.getMessage()
    assert "genesis.callbacks[2]@17" in line.getMessage()


def test_send_raises_when_delivery_failed() -> None:
    producer = FakeProducer(error=KafkaError(KafkaError._MSG_TIMED_OUT))
    before = dlq_count("not_json")
    queue = DeadLetterQueue(producer, "dlq.test")

    with pytest.raises(DeadLetterError, match="Message timed out") as raised:
        queue.send(b"x", None, "not_json", SOURCE, correlation_id=CID)

    assert raised.value.correlation_id == CID
    assert dlq_count("not_json") == before, "counted a dead letter never written"


def test_send_raises_when_flush_times_out() -> None:
    queue = DeadLetterQueue(FakeProducer(left=1), "dlq.test", timeout_seconds=0.5)

    with pytest.raises(DeadLetterError, match=r"not acknowledged within 0\.5 s"):
        queue.send(b"x", None, "not_json", SOURCE)


# ── watermarks ─────────────────────────────────────────────────────────────


class _Metadata:
    def __init__(self, topic: str, partitions: int) -> None:
        self.topics = {
            topic: type("T", (), {"partitions": dict.fromkeys(range(partitions))})
        }


class FakeConsumer:
    """Answers watermark reads with `errors` first, then (0, 10) per partition."""

    def __init__(self, errors: list[int], partitions: int = 2) -> None:
        self.errors = list(errors)
        self.partitions = partitions
        self.calls = 0

    def list_topics(self, timeout: float) -> _Metadata:
        return _Metadata("dlq.test", self.partitions)

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float
    ) -> tuple[int, int]:
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return (0, 10)


def watermarks(
    consumer: FakeConsumer, timeout_seconds: float
) -> dict[int, tuple[int, int]]:
    return _watermarks(cast(Consumer, consumer), "dlq.test", timeout_seconds)


def test_watermarks_wait_out_a_partition_between_leaders() -> None:
    consumer = FakeConsumer(
        [KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE]
    )

    ranges = watermarks(consumer, timeout_seconds=5)

    assert ranges == {0: (0, 10), 1: (0, 10)}
    assert consumer.calls == 4


def test_watermarks_fail_at_once_on_an_error_waiting_cannot_fix() -> None:
    consumer = FakeConsumer([KafkaError.TOPIC_AUTHORIZATION_FAILED])

    with pytest.raises(DeadLetterError, match=r"cannot read watermarks.*AUTHORIZATION"):
        watermarks(consumer, timeout_seconds=5)
    assert consumer.calls == 1


def test_watermarks_give_up_on_a_leaderless_partition_after_the_timeout() -> None:
    consumer = FakeConsumer([KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)

    with pytest.raises(DeadLetterError, match="NOT_LEADER_FOR_PARTITION"):
        watermarks(consumer, timeout_seconds=0.3)
    assert 1 < consumer.calls < 1000


# ── command line ────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "argv",
    [
        ["redrive", "--offsets", "1"],
        ["redrive", "--offsets", "a:b"],
        ["redrive", "--offsets", "1:2", "--all"],
        ["list", "--limit", "0"],
        ["nothing"],
    ],
)
def test_bad_arguments_stop_before_any_kafka_call(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(argv)

    assert raised.value.code == 2
