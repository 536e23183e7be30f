"""Log lines are JSON objects that carry the ids of the wait and its span."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from outbox.logs import configure_logging, log_context

CORRELATION_ID = "order-42"
FLOW_RUN_ID = "9b0c1f04-3a55-4d43-9f3c-0a7de6f0a1b2"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """Root logging into a buffer for one test, as JSON lines."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    configure_logging(stream=out, json_lines=True)
    yield out
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def parsed(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_line_outside_any_context_is_json_with_empty_ids(lines) -> None:
    logging.getLogger("pausewire.test").warning("Nothing to say about %s", "it")

    [line] = parsed(lines)
    assert line["message"] == "Nothing to say about it"
    assert line["level"] == "WARNING"
    assert line["logger"] == "pausewire.test"
    assert str(line["timestamp"]).endswith("+00:00"), "timestamps must be UTC"
    for name in ("correlation_id", "flow_run_id", "trace_id", "span_id"):
        assert line[name] is None, name


def test_ids_come_from_the_context_and_the_current_span(lines) -> None:
    tracer = TracerProvider().get_tracer("test")

    with (
        log_context(correlation_id=CORRELATION_ID, flow_run_id=FLOW_RUN_ID),
        tracer.start_as_current_span("work") as span,
    ):
        logging.getLogger("pausewire.test").info("Resumed")
    context = span.get_span_context()

    [line] = parsed(lines)
    assert line["correlation_id"] == CORRELATION_ID
    assert line["flow_run_id"] == FLOW_RUN_ID
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")


def test_contexts_nest_and_are_undone_on_exit(lines) -> None:
    log = logging.getLogger("pausewire.test")
    with log_context(correlation_id=CORRELATION_ID):
        with log_context(flow_run_id=FLOW_RUN_ID):
            log.info("inner")
        log.info("outer")
    log.info("outside")

    inner, outer, outside = parsed(lines)
    assert (inner["correlation_id"], inner["flow_run_id"]) == (
        CORRELATION_ID,
        FLOW_RUN_ID,
    )
    assert (outer["correlation_id"], outer["flow_run_id"]) == (CORRELATION_ID, None)
    assert outside["correlation_id"] is None


def test_ids_passed_with_extra_win_over_the_context(lines) -> None:
    with log_context(correlation_id="from-context"):
        logging.getLogger("pausewire.test").info(
            "explicit", extra={"correlation_id": "from-call"}
        )

    [line] = parsed(lines)
    assert line["correlation_id"] == "from-call"


def test_an_exception_stays_inside_its_one_line(lines) -> None:
    try:
        raise ValueError("bad\nanswer")
    except ValueError:
        logging.getLogger("pausewire.test").exception("Resume crashed")

    [line] = parsed(lines)
    assert "ValueError: bad" in str(line["exception"])


def test_configuring_twice_keeps_one_handler(lines) -> None:
    configure_logging(stream=lines, json_lines=True)
    logging.getLogger("pausewire.test").info("once")

    assert len(parsed(lines)) == 1, "a second configure_logging doubled each line"


def test_a_terminal_gets_text_with_the_ids_at_the_end() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = Terminal()
    try:
        configure_logging(stream=out)
        with log_context(correlation_id=CORRELATION_ID):
            logging.getLogger("pausewire.test").info("Stored the callback")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])

    text = out.getvalue()
    assert not text.startswith("{"), "a terminal should get plain text"
    assert "Stored the callback" in text
    assert f"[correlation_id={CORRELATION_ID}]" in text
