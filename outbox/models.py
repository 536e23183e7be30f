"""The records pausewire keeps in Postgres, as the application sees them."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

# Every outbox row uses this aggregate type, which the Outbox Event Router
# turns into the topic name pausewire.<aggregatetype>. Changing it moves the
# events to another topic.
OUTBOX_AGGREGATE_TYPE = "waits"

MAX_CORRELATION_ID_LENGTH = 255


class HandleStatus(enum.StrEnum):
    """Mirrors the `handle_status` Postgres enum."""

    PENDING_PAUSE = "PENDING_PAUSE"
    PAUSED = "PAUSED"
    RESUMED = "RESUMED"
    EXPIRED = "EXPIRED"
    PAUSE_FAILED = "PAUSE_FAILED"
    RESUME_FAILED = "RESUME_FAILED"

    @property
    def is_active(self) -> bool:
        """Still waiting: the partial unique index allows one such per id."""
        return self in (HandleStatus.PENDING_PAUSE, HandleStatus.PAUSED)


class WaitMode(enum.StrEnum):
    """How the run waits: holding its process, or releasing it."""

    PAUSE = "pause"
    SUSPEND = "suspend"


class OutboxEventType(enum.StrEnum):
    """The `type` column of outbox rows, sent as the eventType header."""

    INPUT_REQUESTED = "input_requested"
    PAUSE_FAILED = "pause_failed"
    EXPIRED = "expired"


class Handle(BaseModel):
    """One row of flow_resume_handles."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    correlation_id: str
    flow_run_id: uuid.UUID
    task_run_id: uuid.UUID | None
    task_name: str | None
    resume_handle: dict[str, Any]
    status: HandleStatus
    resume_payload: dict[str, Any] | None
    timeout_seconds: int
    context_data: dict[str, Any]
    attempts: int
    last_error: str | None
    expires_at: datetime
    paused_at: datetime | None
    resumed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class WaitRequest(BaseModel):
    """What a flow asks for when it starts waiting."""

    model_config = ConfigDict(frozen=True)

    correlation_id: str
    flow_run_id: uuid.UUID
    task_run_id: uuid.UUID | None
    task_name: str | None
    mode: WaitMode
    timeout_seconds: int
    description: str | None
    # The answer's JSON schema, so the resumer validates a callback before it
    # calls Prefect, and the keyset under which Prefect keeps the run input.
    input_schema: dict[str, Any]
    keyset: dict[str, str]
    pause_key: str
    context_data: dict[str, Any]
    traceparent: str | None = None
    tracestate: str | None = None

    def resume_handle(self) -> dict[str, Any]:
        """What the resumer needs to resume this wait, stored with the handle.

        The wait's trace context rides along: the resumer reads the handle
        change topic, not the outbox topic, and continues the trace from it.
        """
        stored: dict[str, Any] = {
            "mode": self.mode.value,
            "pause_key": self.pause_key,
            "keyset": self.keyset,
            "schema": self.input_schema,
        }
        if self.traceparent:
            stored["traceparent"] = self.traceparent
        if self.tracestate:
            stored["tracestate"] = self.tracestate
        return stored
