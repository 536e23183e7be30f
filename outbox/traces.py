"""Prints the span trees of one correlation id from the local trace file.

    python -m outbox.traces <correlation_id> [--file F]

Reads the JSON-lines file that `outbox.tracing` writes when no OTLP
endpoint is configured (and its rotated `.1` predecessor), finds every
trace holding a span of the correlation id, and prints each as a tree with
offsets from the trace's start and durations:

    trace 5b8aa5a2d2c872e8321cf37308d69df2  3 services, 1.482 s
    pausewire.wait  [pausewire-flow]  +0.000 s  1481.9 ms
    ├── pausewire.resume  [pausewire-resumer]  +1.402 s  61.0 ms  link 0af76519…
    │   └── prefect.resume_flow_run  [pausewire-resumer]  +1.431 s  30.2 ms
    └── pausewire.continue  [pausewire-flow]  +1.476 s  5.7 ms

With traces sent to an OTLP endpoint instead, look them up in its UI by the
`pausewire.correlation_id` attribute.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from outbox.tracing import CORRELATION_ID, trace_file_path

# Attributes shown on a span's line, when it has them.
_SHOWN = (
    ("messaging.destination.name", "topic"),
    ("messaging.destination.partition.id", "partition"),
    ("messaging.kafka.offset", "offset"),
    ("pausewire.callback.decision", "decision"),
    ("pausewire.dlq.reason", "dead-letter reason"),
    ("pausewire.resume.outcome", "outcome"),
)


@dataclass
class Span:
    """One line of the trace file, as the tree needs it."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    service: str
    start: int
    duration_ms: float
    status: str
    attributes: dict[str, Any]
    links: list[dict[str, str]]
    children: list[Span] = field(default_factory=list)

    @classmethod
    def of(cls, record: dict[str, Any]) -> Span:
        return cls(
            trace_id=str(record["trace_id"]),
            span_id=str(record["span_id"]),
            parent_span_id=record.get("parent_span_id"),
            name=str(record.get("name", "?")),
            service=str(record.get("service") or "?"),
            start=int(record.get("start_unix_nano") or 0),
            duration_ms=float(record.get("duration_ms") or 0.0),
            status=str(record.get("status", "UNSET")),
            attributes=dict(record.get("attributes") or {}),
            links=list(record.get("links") or []),
        )


def read_spans(path: Path) -> list[Span]:
    """Every readable span of the file and its rotated predecessor."""
    spans: list[Span] = []
    for source in (path.with_name(path.name + ".1"), path):
        if source.exists():
            spans += _parse(source.read_text(encoding="utf-8").splitlines())
    return spans


def _parse(lines: Iterable[str]) -> Iterator[Span]:
    for line in lines:
        try:
            yield Span.of(json.loads(line))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash, or not ours


def traces_of(spans: list[Span], correlation_id: str) -> dict[str, list[Span]]:
    """The spans of every trace that has a span of `correlation_id`."""
    wanted = {
        s.trace_id for s in spans if s.attributes.get(CORRELATION_ID) == correlation_id
    }
    found: dict[str, list[Span]] = {}
    for span in spans:
        if span.trace_id in wanted:
            found.setdefault(span.trace_id, []).append(span)
    return dict(sorted(found.items(), key=lambda item: min(s.start for s in item[1])))


def render(trace_id: str, spans: list[Span]) -> list[str]:
    """One trace as lines of a tree; spans whose parent is absent are roots."""
    by_id = {s.span_id: s for s in spans}
    roots: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start):
        parent = by_id.get(span.parent_span_id or "")
        (parent.children if parent is not None else roots).append(span)
    begin = min(s.start for s in spans)
    end = max(s.start + int(s.duration_ms * 1e6) for s in spans)
    services = len({s.service for s in spans})
    lines = [f"trace {trace_id}  {services} service(s), {(end - begin) / 1e9:.3f} s"]
    for root in roots:
        if root.parent_span_id:
            lines.append(f"(parent {root.parent_span_id} is not in the file)")
        lines += _tree(root, begin, "", "")
    return lines


def _tree(span: Span, begin: int, lead: str, rest: str) -> list[str]:
    lines = [lead + _describe(span, begin)]
    for i, child in enumerate(span.children):
        last = i == len(span.children) - 1
        lines += _tree(
            child,
            begin,
            rest + ("└── " if last else "├── "),
            rest + ("    " if last else "│   "),
        )
    return lines


def _describe(span: Span, begin: int) -> str:
    parts = [
        span.name,
        f"[{span.service}]",
        f"+{(span.start - begin) / 1e9:.3f} s",
        f"{span.duration_ms:.1f} ms",
    ]
    parts += [
        f"{label}={span.attributes[key]}"
        for key, label in _SHOWN
        if key in span.attributes
    ]
    if span.status == "ERROR":
        parts.append("ERROR")
    parts += [f"link {link['trace_id'][:8]}…/{link['span_id']}" for link in span.links]
    return "  ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m outbox.traces",
        description="Print the span trees of one correlation id.",
    )
    parser.add_argument("correlation_id")
    parser.add_argument(
        "--file",
        type=Path,
        default=None,
        help="the trace file (default: where this machine's processes write)",
    )
    args = parser.parse_args(argv)
    path: Path = args.file or trace_file_path()
    if not path.exists():
        print(f"no trace file at {path}", file=sys.stderr)
        return 1
    traces = traces_of(read_spans(path), args.correlation_id)
    if not traces:
        print(
            f"no span of correlation id {args.correlation_id} in {path}",
            file=sys.stderr,
        )
        return 1
    for number, (trace_id, spans) in enumerate(traces.items()):
        if number:
            print()
        print("\n".join(render(trace_id, spans)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
