"""Log lines that carry the ids of the wait they are about.

`configure_logging()` sends every record to stderr: one JSON object per
line when stderr is not a terminal (a container, a log file), readable text
when it is. Each record gets, unless the call passed them with `extra=`:

- `correlation_id` and `flow_run_id` from `log_context`, which the code that
  processes one record or one resume opens around that work, so the log
  calls inside need no change;
- `trace_id` and `span_id` of the current span, to jump from a log line to
  its trace.

    with log_context(correlation_id=cid, flow_run_id=run_id):
        logger.info("Resumed flow run %s", run_id)   # the line carries both

`PAUSEWIRE_LOG_FORMAT=json|text` overrides the terminal test and
`PAUSEWIRE_LOG_LEVEL` the level (INFO).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

from outbox.tracing import current_ids

# Invariant: the field names of a JSON log line; log queries rely on them.
ID_FIELDS = ("correlation_id", "flow_run_id", "trace_id", "span_id")

_ids: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "pausewire_log_ids", default=None
)

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


@contextmanager
def log_context(
    *, correlation_id: str | None = None, flow_run_id: str | None = None
) -> Iterator[None]:
    """Ids that every record logged inside the block carries; nests."""
    given = {"correlation_id": correlation_id, "flow_run_id": flow_run_id}
    merged = {**(_ids.get() or {}), **{k: v for k, v in given.items() if v}}
    token = _ids.set(merged)
    try:
        yield
    finally:
        _ids.reset(token)


class ContextFilter(logging.Filter):
    """Puts the ids of `log_context` and of the current span on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = _ids.get() or {}
        for name in ("correlation_id", "flow_run_id"):
            if getattr(record, name, None) is None:
                setattr(record, name, ids.get(name))
        if getattr(record, "trace_id", None) is None:
            record.trace_id, record.span_id = current_ids()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, ids at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ID_FIELDS:
            line[name] = getattr(record, name, None)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, with whichever ids the record has at its end."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = [
            f"{name}={value}"
            for name in ("correlation_id", "flow_run_id", "trace_id")
            if (value := getattr(record, name, None))
        ]
        return f"{text} [{' '.join(ids)}]" if ids else text


class _PausewireHandler(logging.StreamHandler[IO[str]]):
    """Marks the handler `configure_logging` installed, to replace it once."""


def configure_logging(
    level: int | str | None = None,
    *,
    stream: IO[str] | None = None,
    json_lines: bool | None = None,
) -> None:
    """Routes every logger to `stream` (stderr) through the ids filter.

    Calling it again replaces the handler it installed before and leaves
    handlers of others alone.
    """
    out = stream if stream is not None else sys.stderr
    if json_lines is None:
        wanted = os.environ.get("PAUSEWIRE_LOG_FORMAT", "").strip().lower()
        json_lines = wanted == "json" or (wanted != "text" and not _is_tty(out))
    handler = _PausewireHandler(out)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _PausewireHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("PAUSEWIRE_LOG_LEVEL", "INFO").upper())


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
