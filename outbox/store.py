"""Reads and changes resume handles, each change with its outbox event.

Every status change is a compare-and-set on the current status, so that two
actors (the waiting flow, the resumer, an expiry) can race without either
overwriting the other: the loser's UPDATE matches no row and it learns so.
Where a change must be announced (a wait opened, a pause compensated, a
wait expired), the outbox row is written in the same transaction as the
handle, so Kafka sees both or neither.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from outbox.errors import HandleConflictError, StoreUnavailableError
from outbox.models import (
    OUTBOX_AGGREGATE_TYPE,
    Handle,
    HandleStatus,
    OutboxEventType,
    WaitRequest,
)
from outbox.settings import get_settings

logger = logging.getLogger(__name__)

Conn = psycopg.Connection[dict[str, Any]]

_LATEST = """
    SELECT * FROM flow_resume_handles
     WHERE correlation_id = %s
     ORDER BY created_at DESC
     LIMIT 1
"""
_INSERT_HANDLE = """
    INSERT INTO flow_resume_handles
        (correlation_id, flow_run_id, task_run_id, task_name, resume_handle,
         timeout_seconds, context_data, expires_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
    RETURNING *
"""
_INSERT_EVENT = """
    INSERT INTO outbox_events
        (aggregatetype, aggregateid, type, payload, traceparent, tracestate)
    VALUES (%s, %s, %s, %s, %s, %s)
"""


class HandleStore:
    """Handle rows and their outbox events, over a psycopg connection pool."""

    def __init__(self, pool: ConnectionPool[Conn]) -> None:
        self.pool = pool

    @contextmanager
    def _tx(self) -> Iterator[Conn]:
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(
                f"Postgres is unreachable or refused the statement: {exc}"
            ) from exc

    # ---- reads

    def get(self, handle_id: uuid.UUID) -> Handle | None:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT * FROM flow_resume_handles WHERE id = %s", (handle_id,)
            ).fetchone()
        return Handle.model_validate(row) if row else None

    def latest(self, correlation_id: str) -> Handle | None:
        """The newest handle of a correlation id, whatever its status."""
        with self._tx() as conn:
            row = conn.execute(_LATEST, (correlation_id,)).fetchone()
        return Handle.model_validate(row) if row else None

    # ---- opening a wait

    def open_wait(self, request: WaitRequest) -> tuple[Handle, bool]:
        """The wait's handle, and whether this call created it.

        A second call for the same correlation id from the same flow run
        returns the first call's handle and writes nothing: a re-run of a
        suspended flow passes here again. An active handle of another run is
        a conflict; a finished one of another run frees the id for reuse.
        """
        try:
            return self._open_wait_once(request)
        except psycopg.errors.UniqueViolation:
            # Another process opened the same correlation id between our read
            # and our insert; its handle decides, exactly as if read first.
            return self._open_wait_once(request)

    def _open_wait_once(self, request: WaitRequest) -> tuple[Handle, bool]:
        with self._tx() as conn:
            row = conn.execute(_LATEST, (request.correlation_id,)).fetchone()
            existing = Handle.model_validate(row) if row else None
            if existing is not None and _belongs(existing, request):
                return existing, False
            return self._insert_wait(conn, request), True

    def _insert_wait(self, conn: Conn, request: WaitRequest) -> Handle:
        expires_at = datetime.now(UTC) + timedelta(seconds=request.timeout_seconds)
        row = conn.execute(
            _INSERT_HANDLE,
            (
                request.correlation_id,
                request.flow_run_id,
                request.task_run_id,
                request.task_name,
                json.dumps(request.resume_handle()),
                request.timeout_seconds,
                json.dumps(request.context_data),
                expires_at,
            ),
        ).fetchone()
        handle = Handle.model_validate(row)
        _emit(conn, handle, OutboxEventType.INPUT_REQUESTED, handle.status, request)
        logger.info(
            "Opened wait %s for correlation id %s in flow run %s",
            handle.id,
            handle.correlation_id,
            handle.flow_run_id,
        )
        return handle

    # ---- status changes

    def mark_paused(self, handle_id: uuid.UUID) -> bool:
        """PENDING_PAUSE -> PAUSED, once Prefect accepted the paused state."""
        with self._tx() as conn:
            moved = conn.execute(
                "UPDATE flow_resume_handles SET status = 'PAUSED', paused_at = now() "
                "WHERE id = %s AND status = 'PENDING_PAUSE'",
                (handle_id,),
            ).rowcount
        return moved == 1

    def compensate(self, handle: Handle, reason: str) -> bool:
        """PENDING_PAUSE -> PAUSE_FAILED with the reason, announced in the outbox."""
        with self._tx() as conn:
            moved = conn.execute(
                "UPDATE flow_resume_handles SET status = 'PAUSE_FAILED', "
                "last_error = %s WHERE id = %s AND status = 'PENDING_PAUSE'",
                (reason, handle.id),
            ).rowcount
            if moved:
                _emit(
                    conn,
                    handle,
                    OutboxEventType.PAUSE_FAILED,
                    HandleStatus.PAUSE_FAILED,
                    {"reason": reason},
                )
        return moved == 1

    def expire(self, handle: Handle) -> bool:
        """An active handle -> EXPIRED, announced in the outbox."""
        with self._tx() as conn:
            moved = conn.execute(
                "UPDATE flow_resume_handles SET status = 'EXPIRED' "
                "WHERE id = %s AND status IN ('PENDING_PAUSE', 'PAUSED')",
                (handle.id,),
            ).rowcount
            if moved:
                _emit(conn, handle, OutboxEventType.EXPIRED, HandleStatus.EXPIRED, {})
        return moved == 1

    def mark_resumed(self, handle_id: uuid.UUID, payload: dict[str, Any]) -> bool:
        """PAUSED -> RESUMED with the payload; True only for the call that moved it.

        The payload is kept only if none was stored before: the first valid
        answer is the one the flow continues with.
        """
        with self._tx() as conn:
            row = conn.execute(
                "SELECT mark_handle_resumed(%s, %s) AS moved",
                (handle_id, json.dumps(payload)),
            ).fetchone()
        return bool(row and row["moved"])

    # ---- the resumer's writes

    def hold_payload(
        self, handle_id: uuid.UUID, correlation_id: str, payload: dict[str, Any]
    ) -> bool:
        """Keeps a payload on a still-active handle; the first one stays.

        A copy parked in early_callbacks before the handle existed goes in
        the same transaction: from here on the row is its durable home.
        """
        with self._tx() as conn:
            moved = conn.execute(
                "UPDATE flow_resume_handles "
                "SET resume_payload = COALESCE(resume_payload, %s) "
                "WHERE id = %s AND status IN ('PENDING_PAUSE', 'PAUSED')",
                (json.dumps(payload), handle_id),
            ).rowcount
            if moved:
                _drop_early(conn, correlation_id, payload)
        return moved == 1

    def park_early(
        self, correlation_id: str, payload: dict[str, Any], source: dict[str, Any]
    ) -> None:
        """Keeps a callback that came before any handle of its id."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO early_callbacks (correlation_id, payload, source) "
                "VALUES (%s, %s, %s) ON CONFLICT (correlation_id) DO NOTHING",
                (correlation_id, json.dumps(payload), json.dumps(source)),
            )

    def drop_early(
        self, correlation_id: str, payload: dict[str, Any] | None = None
    ) -> None:
        """Forgets a parked callback once it was applied or dead-lettered.

        With `payload`, only if the parked one is that payload: another
        callback's copy stays.
        """
        with self._tx() as conn:
            _drop_early(conn, correlation_id, payload)

    def mark_resume_failed(self, handle_id: uuid.UUID, error: str) -> bool:
        """PAUSED -> RESUME_FAILED with the last error, for a person to see."""
        with self._tx() as conn:
            moved = conn.execute(
                "UPDATE flow_resume_handles SET status = 'RESUME_FAILED', "
                "last_error = %s, attempts = attempts + 1 "
                "WHERE id = %s AND status = 'PAUSED'",
                (error, handle_id),
            ).rowcount
        return moved == 1


def _drop_early(
    conn: Conn, correlation_id: str, payload: dict[str, Any] | None
) -> None:
    if payload is None:
        conn.execute(
            "DELETE FROM early_callbacks WHERE correlation_id = %s",
            (correlation_id,),
        )
    else:
        conn.execute(
            "DELETE FROM early_callbacks WHERE correlation_id = %s "
            "AND payload = %s::jsonb",
            (correlation_id, json.dumps(payload)),
        )


def _belongs(existing: Handle, request: WaitRequest) -> bool:
    """Whether `existing` is this request's handle; raises on a conflict."""
    if existing.flow_run_id == request.flow_run_id:
        return True
    if existing.status.is_active:
        raise HandleConflictError(
            request.correlation_id,
            str(existing.flow_run_id),
            str(request.flow_run_id),
        )
    return False


def _emit(
    conn: Conn,
    handle: Handle,
    event_type: OutboxEventType,
    status: HandleStatus,
    detail: WaitRequest | dict[str, Any],
) -> None:
    payload: dict[str, Any] = {
        "handle_id": str(handle.id),
        "correlation_id": handle.correlation_id,
        "flow_run_id": str(handle.flow_run_id),
        "task_run_id": str(handle.task_run_id) if handle.task_run_id else None,
        "status": status.value,
        "expires_at": handle.expires_at.isoformat(),
    }
    traceparent = tracestate = None
    if isinstance(detail, WaitRequest):
        payload |= {
            "description": detail.description,
            "input_schema": detail.input_schema,
            "mode": detail.mode.value,
        }
        traceparent, tracestate = detail.traceparent, detail.tracestate
    else:
        payload |= detail
    conn.execute(
        _INSERT_EVENT,
        (
            OUTBOX_AGGREGATE_TYPE,
            handle.correlation_id,
            event_type.value,
            json.dumps(payload),
            traceparent,
            tracestate,
        ),
    )


@lru_cache(maxsize=1)
def get_store() -> HandleStore:
    """The process-wide store, with a small pool opened on first use."""
    settings = get_settings()
    pool: ConnectionPool[Conn] = ConnectionPool(
        settings.database_url.get_secret_value(),
        min_size=1,
        max_size=8,
        kwargs={"row_factory": dict_row},
        open=True,
        name="pausewire",
    )
    return HandleStore(pool)
