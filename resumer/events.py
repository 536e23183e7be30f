"""Turns Kafka records of the handle change topic into the join's inputs.

Debezium's ExtractNewRecordState flattens each change of flow_resume_handles
into the row after it, plus `__op`, `__source_lsn` and `__deleted`; jsonb
columns arrive as JSON text. A tombstone (no value) follows each delete and
carries nothing the join needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jsonschema

from outbox.models import HandleStatus
from resumer.cache import HandleView
from resumer.join import HandleChange


@dataclass(frozen=True)
class ChangeRecord:
    """One handle change in the three shapes the worker needs."""

    change: HandleChange
    view: HandleView
    # Debezium's LSN of the change: orders changes of one handle.
    version: int
    created: bool
    # When Postgres committed the change, for the CDC delay metric.
    committed_at_ms: int


def parse_handle_change(value: bytes | None) -> ChangeRecord | None:
    """The change in a record, or None for a tombstone or a foreign record."""
    if not value:
        return None
    row: dict[str, Any] = json.loads(value)
    if not row.get("correlation_id") or not row.get("id"):
        # A delete logged before the table kept full rows names no
        # correlation id; nothing can be joined on it.
        return None
    expires_at = datetime.fromisoformat(row["expires_at"])
    payload = _json_column(row.get("resume_payload"))
    resume_handle = _json_column(row.get("resume_handle")) or {}
    schema = resume_handle.get("schema")
    change = HandleChange(
        handle_id=row["id"],
        correlation_id=row["correlation_id"],
        flow_run_id=row["flow_run_id"],
        status=HandleStatus(row["status"]),
        resume_payload=payload,
        expires_at=expires_at,
        deleted=str(row.get("__deleted", "false")).lower() == "true",
        input_schema=schema if isinstance(schema, dict) else None,
    )
    view = HandleView(
        handle_id=row["id"],
        correlation_id=row["correlation_id"],
        flow_run_id=row["flow_run_id"],
        status=row["status"],
        resume_payload=payload,
        expires_at=expires_at,
        resume_handle=resume_handle,
    )
    return ChangeRecord(
        change=change,
        view=view,
        version=int(row.get("__source_lsn") or 0),
        created=row.get("__op") == "c",
        committed_at_ms=int(row.get("__source_ts_ms") or 0),
    )


def _json_column(raw: object) -> dict[str, Any] | None:
    # Debezium sends jsonb as text; a snapshot of an older connector version
    # may already have decoded it.
    if raw is None:
        return None
    if isinstance(raw, dict):
        return raw
    decoded = json.loads(str(raw))
    return decoded if isinstance(decoded, dict) else None


def payload_problem(view: HandleView | None, result: dict[str, Any]) -> str | None:
    """Why a payload does not fit the waiting flow's input schema, if it does not.

    Checked only while a wait is active: for an unknown or finished wait the
    join decides, and Prefect validates once more when it resumes.
    """
    if view is None or not view.is_active:
        return None
    schema = view.resume_handle.get("schema")
    if not isinstance(schema, dict) or not schema:
        return None
    return schema_problem(schema, result)


def schema_problem(schema: dict[str, Any], result: dict[str, Any]) -> str | None:
    """Why `result` fails `schema`, or None; the join's `payload_check`."""
    try:
        jsonschema.validate(result, schema)
    except jsonschema.ValidationError as exc:
        return f"payload does not match the input schema: {exc.message}"
    return None
