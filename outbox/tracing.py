"""OpenTelemetry set-up, and the trace context that crosses process borders.

One trace per wait, across three processes:

    pausewire.wait                 flow process; its context goes into the
    │                              outbox row (so the Kafka headers of
    │                              pausewire.waits) and into resume_handle
    ├── pausewire.resume           resumer; parent read from the handle row,
    │   │                          linked to the callback producer's span
    │   └── prefect.resume_flow_run
    └── pausewire.continue         flow process, as the answer is handed back

A callback's own consumption (`pausewire.callback`) belongs to the trace of
its producer when the record carries a usable `traceparent` header, and
starts a trace of its own otherwise.

`pausewire.wait` is the root of its trace, linked to the span that was
current when the helper was called: usually Prefect's span of the flow run,
which Prefect records once a tracer provider exists (its orchestration
telemetry setting, on by default). A run with two waits has two traces,
both linked to the run's.

Where spans go, decided once per process by `configure_tracing`:

- `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set,
  or `OTEL_TRACES_EXPORTER=otlp`: OTLP over HTTP, configured by the
  standard `OTEL_*` variables.
- `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`: nowhere.
- otherwise: one JSON object per span, appended to a local file, so a stack
  without a trace server still has its traces (`python -m outbox.traces`
  prints them). The file is `PAUSEWIRE_TRACE_FILE`; without it,
  `traces.jsonl` in `PAUSEWIRE_STACK_DIR`, else in `./.stack` when that
  folder exists (the native stack's folder, seen from the repository root),
  else in the current directory. The native resumer runs inside `.stack`,
  so it and a flow started from the repository root write the same file.

These variables are read here and not through `outbox.settings`: tracing
is set up before, and the trace reader without, a database URL.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Link, SpanContext
from opentelemetry.trace.propagation.tracecontext import (
    TraceContextTextMapPropagator,
)

from outbox.topics import Headers, header_map

logger = logging.getLogger(__name__)

# Invariant: span attribute names. `python -m outbox.traces` finds a wait's
# traces by the first; dashboards and saved trace queries use them all.
CORRELATION_ID = "pausewire.correlation_id"
FLOW_RUN_ID = "prefect.flow_run.id"
HANDLE_ID = "pausewire.handle_id"

# Invariant: where the wait's context is kept inside resume_handle.
TRACEPARENT_KEY = "traceparent"
TRACESTATE_KEY = "tracestate"

TRACE_FILE_NAME = "traces.jsonl"
# Past this size the file moves to `<name>.1` (replacing an older one), so
# a long-running stack keeps at most about twice this much.
MAX_TRACE_FILE_BYTES = 64 * 1024 * 1024

_W3C = TraceContextTextMapPropagator()


# ── set-up ───────────────────────────────────────────────────────────────────


@dataclass
class _Setup:
    lock: threading.Lock
    done: bool = False
    provider: TracerProvider | None = None


_setup = _Setup(threading.Lock())


def configure_tracing(service_name: str) -> TracerProvider | None:
    """Installs the process's tracer provider once; later calls change nothing.

    Returns the SDK provider that records spans, or None when tracing is off.
    A provider the application installed before is kept and returned. An
    unreachable trace server costs log lines in the exporter's thread, never
    an exception here or in the traced code.
    """
    with _setup.lock:
        if not _setup.done:
            _setup.done = True
            try:
                _setup.provider = _install(service_name)
            except Exception:
                logger.warning(
                    "Tracing could not be set up; continuing without traces",
                    exc_info=True,
                )
        return _setup.provider


def _install(service_name: str) -> TracerProvider | None:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    if not isinstance(current, trace.ProxyTracerProvider):
        return None  # another API implementation: not ours to change
    # OTEL_SERVICE_NAME, when set, wins over the name given here.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    exporter, where = _exporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    logger.info("Tracing %s to %s", service_name, where)
    return provider


def _exporter() -> tuple[SpanExporter | None, str]:
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if kind == "none":
        return None, "nowhere (OTEL_TRACES_EXPORTER=none)"
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if endpoint or kind == "otlp":
        return OTLPSpanExporter(), f"OTLP/HTTP at {endpoint or 'the default'}"
    path = trace_file_path()
    return JsonLinesSpanExporter(path), f"the file {path}"


def trace_file_path() -> Path:
    """Where spans go when no OTLP endpoint is configured (see module doc)."""
    explicit = os.environ.get("PAUSEWIRE_TRACE_FILE")
    if explicit:
        return Path(explicit)
    stack_dir = os.environ.get("PAUSEWIRE_STACK_DIR")
    if stack_dir:
        return Path(stack_dir) / TRACE_FILE_NAME
    if Path(".stack").is_dir():
        return Path(".stack") / TRACE_FILE_NAME
    return Path(TRACE_FILE_NAME)


# ── the file exporter ───────────────────────────────────────────────────────


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON object per finished span to a file.

    Several processes may share the file: each batch is one append, which
    the kernel keeps whole, so lines of two writers never interleave.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = (json.dumps(span_record(s), default=str) + "\n" for s in spans)
        data = "".join(lines).encode()
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._rotate()
                # One write(2) with O_APPEND: the batch lands whole at the end.
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
        except OSError as exc:
            logger.warning(
                "Could not write %d span(s) to %s: %s", len(spans), self.path, exc
            )
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _rotate(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size > MAX_TRACE_FILE_BYTES:
            self.path.replace(self.path.with_name(self.path.name + ".1"))

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as the trace file keeps it."""
    context = span.get_span_context()
    start, end = span.start_time or 0, span.end_time or 0
    return {
        "trace_id": _hex_trace(context.trace_id if context else 0),
        "span_id": _hex_span(context.span_id if context else 0),
        "parent_span_id": _hex_span(span.parent.span_id) if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get(SERVICE_NAME),
        "start_unix_nano": start,
        "end_unix_nano": end,
        "duration_ms": round((end - start) / 1e6, 3),
        "status": span.status.status_code.name,
        "status_description": span.status.description,
        "attributes": dict(span.attributes or {}),
        "links": [
            {
                "trace_id": _hex_trace(link.context.trace_id),
                "span_id": _hex_span(link.context.span_id),
            }
            for link in span.links
        ],
        "events": [
            {"name": event.name, "attributes": dict(event.attributes or {})}
            for event in span.events
        ],
    }


# ── trace context in and out of records ─────────────────────────────────────


def context_of(
    traceparent: str | None, tracestate: str | None = None
) -> Context | None:
    """A parent context from W3C header values, or None when they are unusable."""
    if not traceparent:
        return None
    carrier = {TRACEPARENT_KEY: traceparent}
    if tracestate:
        carrier[TRACESTATE_KEY] = tracestate
    context = _W3C.extract(carrier)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


def span_context_of(
    traceparent: str | None, tracestate: str | None = None
) -> SpanContext | None:
    """The remote span that W3C header values name, for a link; None if unusable."""
    context = context_of(traceparent, tracestate)
    if context is None:
        return None
    return trace.get_current_span(context).get_span_context()


def root_with_link() -> tuple[Context, list[Link] | None]:
    """A fresh trace's parent context, and a link to the current span, if any."""
    current = trace.get_current_span().get_span_context()
    return Context(), [Link(current)] if current.is_valid else None


def wait_context(resume_handle: Mapping[str, Any]) -> Context | None:
    """The context of the wait's `pausewire.wait` span, stored with its handle."""
    traceparent = resume_handle.get(TRACEPARENT_KEY)
    tracestate = resume_handle.get(TRACESTATE_KEY)
    return context_of(
        traceparent if isinstance(traceparent, str) else None,
        tracestate if isinstance(tracestate, str) else None,
    )


def producer_span(
    headers: Headers | None, body_traceparent: str | None = None
) -> SpanContext | None:
    """The callback producer's span: its `traceparent` header, else the body's.

    A missing or malformed value yields None; W3C trace context asks for a
    malformed one to be ignored, and the callback is processed all the same.
    """
    found = header_map(headers)
    header = _text(found.get(TRACEPARENT_KEY))
    state = _text(found.get(TRACESTATE_KEY))
    span = span_context_of(header, state)
    if span is None and body_traceparent:
        span = span_context_of(body_traceparent)
    return span


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


def messaging_attributes(topic: str, partition: int, offset: int) -> dict[str, Any]:
    """Where a Kafka record was read, in OpenTelemetry's messaging conventions."""
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.kafka.offset": offset,
    }


def current_ids() -> tuple[str | None, str | None]:
    """Trace and span id of the current span, as hex, or Nones outside a span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return _hex_trace(context.trace_id), _hex_span(context.span_id)


def _hex_trace(trace_id: int) -> str:
    return format(trace_id, "032x")


def _hex_span(span_id: int) -> str:
    return format(span_id, "016x")
