"""The whole story on a running stack, one step at a time.

    python -m flows.demo

Starts a genesis flow run that asks for approval and pauses; shows the run
paused in Prefect and its handle PAUSED in Postgres; publishes the answer
as a callback event on Kafka, as an outside service would; and shows the
resumer resuming the run and the flow completing with the answer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from typing import Any

import psycopg
from prefect.client.orchestration import get_client
from psycopg.rows import dict_row

from flows.callbacks import publish_callback
from outbox.settings import get_settings
from outbox.traces import Span, read_spans, render, traces_of
from outbox.tracing import trace_file_path

DEADLINE_SECONDS = 60.0


def _handle(correlation_id: str) -> dict[str, Any] | None:
    dsn = get_settings().database_url.get_secret_value()
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT id, flow_run_id, status::text AS status, resume_payload "
            "FROM flow_resume_handles WHERE correlation_id = %s "
            "ORDER BY created_at DESC LIMIT 1",
            (correlation_id,),
        ).fetchone()


def _wait_status(correlation_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        row = _handle(correlation_id)
        if row is not None and row["status"] == status:
            return row
        time.sleep(0.05)
    raise SystemExit(f"demo: handle {correlation_id} not {status} in time")


def _run_state(flow_run_id: uuid.UUID) -> str:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return f"{state.type.value} ({state.name})" if state else "unknown"


def main() -> int:
    correlation_id = f"demo-{uuid.uuid4().hex[:8]}"
    print(f"1. Starting a genesis run that waits for correlation id {correlation_id}")
    flow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.genesis",
            "run",
            "--correlation-id",
            correlation_id,
            "--timeout-seconds",
            "300",
        ],
        env={**os.environ, "PREFECT_PAUSE_ENABLED": "true"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    handle = _wait_status(correlation_id, "PAUSED")
    print(
        f"2. Handle {handle['id']} is PAUSED; Prefect shows the run "
        f"{handle['flow_run_id']} as {_run_state(handle['flow_run_id'])}"
    )

    print("3. Publishing the answer to Kafka, as an outside service would")
    sent = time.monotonic()
    publish_callback(
        correlation_id,
        {"user_response": "yes", "additional_data": {"approver": "demo"}},
    )
    resumed = _wait_status(correlation_id, "RESUMED")
    took = (time.monotonic() - sent) * 1000
    print(
        f"4. The resumer resumed the run {took:.0f} ms after the callback; "
        f"handle RESUMED with {resumed['resume_payload']}"
    )

    output, _ = flow.communicate(timeout=DEADLINE_SECONDS)
    print(
        f"5. The flow ended as {_run_state(handle['flow_run_id'])} and returned "
        f"{output.decode().strip().splitlines()[-1]}"
    )
    _show_trace(correlation_id)
    return flow.returncode


def _show_trace(correlation_id: str) -> None:
    # The resumer exports its spans in batches, a few seconds apart.
    path = trace_file_path()
    deadline = time.monotonic() + 15.0
    traces: dict[str, list[Span]] = {}
    while time.monotonic() < deadline:
        traces = traces_of(read_spans(path), correlation_id) if path.exists() else {}
        names = {span.name for spans in traces.values() for span in spans}
        if {"pausewire.wait", "pausewire.resume", "pausewire.continue"} <= names:
            break
        time.sleep(0.5)
    print(
        f"6. The wait's trace, from {path.name} "
        f"(python -m outbox.traces {correlation_id}):"
    )
    for trace_id, spans in traces.items():
        for line in render(trace_id, spans):
            print(f"   {line}")


if __name__ == "__main__":
    sys.exit(main())
