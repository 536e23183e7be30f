"""One trace per wait, from the pause through Kafka and the resumer back to the flow.

The flow waits in a thread of this process, whose spans are caught in
memory; the resumer runs as its own process and writes its spans to a file
of this test. Both sides must land in one trace, parented the way the
wait happened, with the callback producer's span as a link.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from prefect import flow

from flows.pause import wait_for_user_input
from outbox.topics import PARTITIONER
from outbox.tracing import (
    CORRELATION_ID,
    JsonLinesSpanExporter,
    configure_tracing,
)
from tests.integration.conftest import handle_row, keyed, wait_for
from tests.integration.resumers import CALLBACK_TOPIC, resumer_env, resumers
from tests.integration.waits import FlowRunner, paused_handle

pytestmark = pytest.mark.integration

__all__ = ["resumer_env", "resumers"]

ANSWER = {"user_response": "traced", "additional_data": {}, "skipped": False}
OUTBOX_TOPIC = "pausewire.waits"


@flow(persist_result=False)
def waiting(correlation_id: str) -> dict[str, Any]:
    return wait_for_user_input(correlation_id, timeout_seconds=300).model_dump()


@pytest.fixture(scope="module")
def flow_spans() -> Iterator[InMemorySpanExporter]:
    """Spans of this process, in memory, next to whatever else records them."""
    with pytest.MonkeyPatch.context() as patch:
        # If this is the first set-up of the process, export nowhere else.
        patch.setenv("OTEL_TRACES_EXPORTER", "none")
        provider = configure_tracing("pausewire-flow")
    assert provider is not None, "tracing must be on for the flow side"
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield memory
    memory.shutdown()  # the provider outlives the module; stop collecting


@pytest.fixture
def runner(pausing: None) -> Iterator[FlowRunner]:
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="flow") as pool:
        yield FlowRunner(pool)


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    return tmp_path / "resumer-traces.jsonl"


@pytest.fixture
def traced_resumer(resumers: Any, trace_file: Path) -> Any:
    """A resumer that writes its spans to `trace_file` within a fraction of a s."""
    return resumers(
        PAUSEWIRE_TRACE_FILE=str(trace_file),
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_EXPORTER_OTLP_ENDPOINT="",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="",
        OTEL_TRACES_EXPORTER="",
        OTEL_SDK_DISABLED="",
        PAUSEWIRE_LOG_FORMAT="json",
        PAUSEWIRE_LOG_LEVEL="DEBUG",
    ).start()


def new_traceparent() -> tuple[str, str, str]:
    """A producer's W3C traceparent, with its trace and span id."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def produce(
    bootstrap: str, correlation_id: str, headers: list[tuple[str, bytes]]
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": PARTITIONER})
    body = json.dumps({"correlation_id": correlation_id, "result": ANSWER})
    producer.produce(
        CALLBACK_TOPIC, key=correlation_id, value=body.encode(), headers=headers
    )
    assert producer.flush(10) == 0, "the callback was not delivered"


def spans_in_memory(
    memory: InMemorySpanExporter, correlation_id: str
) -> dict[str, ReadableSpan]:
    """The flow side's spans of one wait, by name."""
    return {
        span.name: span
        for span in memory.get_finished_spans()
        if (span.attributes or {}).get(CORRELATION_ID) == correlation_id
    }


def spans_in_file(path: Path, trace_ids: set[str]) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["trace_id"] in trace_ids]


def resumer_spans(
    path: Path, correlation_id: str, names: set[str]
) -> dict[str, dict[str, Any]]:
    """The resumer's spans named `names` that belong to one wait, by name."""

    def probe() -> dict[str, dict[str, Any]] | None:
        if not path.exists():
            return None
        records = [json.loads(line) for line in path.read_text().splitlines()]
        ours = {
            r["trace_id"]
            for r in records
            if r["attributes"].get(CORRELATION_ID) == correlation_id
        }
        found = {r["name"]: r for r in records if r["trace_id"] in ours}
        return found if names <= set(found) else None

    found = wait_for(f"spans {sorted(names)} in {path.name}", probe, timeout_s=20)
    assert isinstance(found, dict)
    return found


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def test_one_trace_runs_from_the_pause_through_the_resumer_to_the_continuation(
    stack, runner, traced_resumer, trace_file, flow_spans, topic_reader, correlation_id
):
    outbox = topic_reader([OUTBOX_TOPIC])
    future = runner.submit(waiting, correlation_id)
    paused_handle(stack, correlation_id)
    producer, producer_trace, producer_span = new_traceparent()

    produce(stack.kafka, correlation_id, [("traceparent", producer.encode())])

    assert future.result(timeout=30) == ANSWER
    flow_side = spans_in_memory(flow_spans, correlation_id)
    assert {"pausewire.wait", "pausewire.continue"} <= set(flow_side)
    wait_trace, wait_span = hex_ids(flow_side["pausewire.wait"])
    resumer_side = resumer_spans(
        trace_file, correlation_id, {"pausewire.resume", "prefect.resume_flow_run"}
    )
    resume = resumer_side["pausewire.resume"]
    prefect_call = resumer_side["prefect.resume_flow_run"]
    continuation = flow_side["pausewire.continue"]

    # One trace, parented as it happened; the wait starts it, linked to the
    # flow run's own span when Prefect records one.
    assert flow_side["pausewire.wait"].parent is None
    assert len(flow_side["pausewire.wait"].links) <= 1
    assert resume["trace_id"] == wait_trace, "the resumer started a trace of its own"
    assert resume["parent_span_id"] == wait_span
    assert prefect_call["trace_id"] == wait_trace
    assert prefect_call["parent_span_id"] == resume["span_id"]
    assert hex_ids(continuation)[0] == wait_trace
    assert continuation.parent is not None
    assert format(continuation.parent.span_id, "016x") == wait_span
    # The producer's span is a link, not a parent: its trace stays its own.
    assert resume["links"] == [{"trace_id": producer_trace, "span_id": producer_span}]
    consumed = spans_in_file(trace_file, {producer_trace})
    assert [(r["name"], r["parent_span_id"]) for r in consumed] == [
        ("pausewire.callback", producer_span)
    ], "consuming the callback must continue the producer's trace"

    run_id = str((flow_side["pausewire.wait"].attributes or {})["prefect.flow_run.id"])
    assert resume["attributes"]["prefect.flow_run.id"] == run_id
    assert resume["attributes"]["messaging.destination.name"] == CALLBACK_TOPIC
    assert {"messaging.destination.partition.id", "messaging.kafka.offset"} <= set(
        resume["attributes"]
    )

    # The context crossed Postgres and Kafka: in the handle row and the
    # outbox event's headers.
    flags = flow_side["pausewire.wait"].get_span_context().trace_flags
    stored = f"00-{wait_trace}-{wait_span}-{flags:02x}"
    row = handle_row(stack.admin_dsn, correlation_id)
    assert row is not None and row["resume_handle"]["traceparent"] == stored
    [event] = outbox.collect(keyed(correlation_id))
    headers = dict(event.headers() or [])
    assert headers.get("traceparent") == stored.encode(), (
        "the outbox event must carry the wait's trace context to Kafka"
    )


def test_the_trace_printer_shows_the_whole_tree_of_a_wait(
    stack, runner, traced_resumer, trace_file, flow_spans, correlation_id
):
    future = runner.submit(waiting, correlation_id)
    paused_handle(stack, correlation_id)
    producer, _, _ = new_traceparent()
    produce(stack.kafka, correlation_id, [("traceparent", producer.encode())])
    assert future.result(timeout=30) == ANSWER
    resumer_spans(trace_file, correlation_id, {"prefect.resume_flow_run"})
    # The flow side's spans go to the same file, as they do on a stack
    # without a trace server.
    flow_side = spans_in_memory(flow_spans, correlation_id)
    JsonLinesSpanExporter(trace_file).export(list(flow_side.values()))

    printed = subprocess.run(
        [sys.executable, "-m", "outbox.traces", correlation_id, "--file", trace_file],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert printed.returncode == 0, printed.stderr
    wait_trace, _ = hex_ids(flow_side["pausewire.wait"])
    lines = printed.stdout.splitlines()
    start = lines.index(next(line for line in lines if wait_trace in line))
    tree = [line.split(" [")[0].rstrip() for line in lines[start + 1 : start + 5]]
    assert tree == [
        "pausewire.wait",
        "├── pausewire.resume",
        "│   └── prefect.resume_flow_run",
        "└── pausewire.continue",
    ], printed.stdout
    assert " ms" in lines[start + 1], "each span shows its duration"


@pytest.mark.parametrize(
    "headers",
    [[("traceparent", b"00-not-a-trace-context-01")], []],
    ids=["malformed", "missing"],
)
def test_a_callback_without_a_usable_traceparent_is_applied_in_a_new_trace(
    stack, runner, traced_resumer, trace_file, flow_spans, correlation_id, headers
):
    future = runner.submit(waiting, correlation_id)
    paused_handle(stack, correlation_id)

    produce(stack.kafka, correlation_id, headers)

    assert future.result(timeout=30) == ANSWER, "the callback must still apply"
    wait_trace, wait_span = hex_ids(
        spans_in_memory(flow_spans, correlation_id)["pausewire.wait"]
    )
    found = resumer_spans(trace_file, correlation_id, {"pausewire.resume"})
    assert found["pausewire.resume"]["trace_id"] == wait_trace
    assert found["pausewire.resume"]["parent_span_id"] == wait_span
    assert found["pausewire.resume"]["links"] == [], "no producer to link to"

    records = [json.loads(line) for line in trace_file.read_text().splitlines()]
    [consumed] = [
        r
        for r in records
        if r["name"] == "pausewire.callback"
        and r["attributes"].get(CORRELATION_ID) == correlation_id
    ]
    assert consumed["parent_span_id"] is None and consumed["links"] == []
    assert consumed["trace_id"] != wait_trace, "a new trace, linked to nothing"

    # Said at debug level, with the correlation id on the line.
    logged = [
        json.loads(line)
        for line in traced_resumer.log.read_text().splitlines()
        if line.startswith("{")
    ]
    assert any(
        line["level"] == "DEBUG"
        and "no usable traceparent" in line["message"]
        and line["correlation_id"] == correlation_id
        and line["trace_id"] == consumed["trace_id"]
        for line in logged
    )
