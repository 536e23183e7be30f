"""Helpers for tests and benchmarks that drive a wait against the real stack.

A flow waits in a thread (`FlowRunner`), the caller sees its handle turn
PAUSED (`paused_handle`), then plays the resumer's part (`resume_directly`):
resume through Prefect's API, then mark the handle RESUMED, which is what
wakes the flow.
"""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

import psycopg
from prefect.client.orchestration import get_client
from prefect.client.schemas.responses import SetStateStatus

from outbox.store import get_store
from tests.integration.conftest import handle_row, wait_for


class FlowRunner:
    """Runs flows in threads that see this thread's Prefect settings."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> Future[Any]:
        # A new thread starts with empty context variables, and Prefect keeps
        # its settings in one: without the copy the flow would talk to a
        # throwaway local server instead of the stack's.
        context = contextvars.copy_context()
        return self.pool.submit(context.run, fn, *args, **kwargs)


def paused_handle(
    stack: Any, correlation_id: str, timeout_s: float = 15.0
) -> dict[str, Any]:
    """The handle of `correlation_id` once it is PAUSED; fails at the deadline."""

    def probe() -> dict[str, Any] | None:
        row = handle_row(stack.admin_dsn, correlation_id)
        return row if row and row["status"] == "PAUSED" else None

    row = wait_for(f"handle {correlation_id} PAUSED", probe, timeout_s)
    return cast(dict[str, Any], row)


def resume_directly(row: dict[str, Any], payload: dict[str, Any]) -> float:
    """Resumes through Prefect's API, then marks the handle; returns when."""
    with get_client(sync_client=True) as client:
        result = client.resume_flow_run(row["flow_run_id"], run_input=payload)
    assert result.status == SetStateStatus.ACCEPT, result.details
    accepted = time.monotonic()
    assert get_store().mark_resumed(row["id"], payload)
    return accepted


def handle_and_event_counts(stack: Any, correlation_id: str) -> tuple[int, int]:
    """How many handles and "input_requested" events the correlation id has."""
    with psycopg.connect(stack.admin_dsn) as conn:
        handles = conn.execute(
            "SELECT count(*) FROM flow_resume_handles WHERE correlation_id = %s",
            (correlation_id,),
        ).fetchone()
        events = conn.execute(
            "SELECT count(*) FROM outbox_events WHERE aggregateid = %s "
            "AND type = 'input_requested'",
            (correlation_id,),
        ).fetchone()
    assert handles is not None and events is not None
    return handles[0], events[0]
