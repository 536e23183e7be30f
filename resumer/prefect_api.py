"""Resumes a paused flow run through Prefect's REST API, idempotently.

Prefect refuses a second resume ("Cannot resume a flow run that is not
paused"), so whether a refusal means "already done" is decided here: if
the run input Prefect holds for this wait equals the payload, an earlier
attempt of ours went through (for example just before a crash) and this
one counts as a success.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.responses import SetStateStatus
from prefect.exceptions import ObjectNotFound

from outbox import tracing

logger = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# Prefect answers these while the pause is not fully recorded yet; asking
# again shortly after succeeds.
_RETRYABLE_REASONS = ("Run input schema not found",)


class Outcome(enum.Enum):
    RESUMED = "resumed"
    ALREADY_RESUMED = "already_resumed"
    # The attempt failed and counts towards the last one.
    RETRY = "retry"
    # The attempt never reached Prefect: no lock quorum, or Postgres was
    # away. It is tried again without counting, so an outage of the
    # resumer's own stores never gives a wait up.
    DEFERRED = "deferred"


@dataclass(frozen=True)
class ResumeResult:
    outcome: Outcome
    detail: str = ""
    # When Prefect answered (epoch seconds), for the resume latency metric.
    answered_at: float = 0.0


def record_outcome(span: Span, result: ResumeResult) -> None:
    """Puts a resume's outcome on its span; a retry marks the span failed."""
    span.set_attribute("pausewire.resume.outcome", result.outcome.value)
    if result.outcome is Outcome.RETRY:
        span.set_status(StatusCode.ERROR, result.detail)


class PrefectResumer:
    """One Prefect client per thread: resumes run in a thread pool."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _client(self) -> SyncPrefectClient:
        client: SyncPrefectClient | None = getattr(self._local, "client", None)
        if client is None:
            client = get_client(sync_client=True)
            client.__enter__()
            self._local.client = client
        return client

    def resume(
        self, flow_run_id: str, payload: dict[str, Any], response_key: str | None
    ) -> ResumeResult:
        """Resume the run with `payload` as its run input."""
        with tracer.start_as_current_span(
            "prefect.resume_flow_run", kind=SpanKind.CLIENT
        ) as span:
            span.set_attribute(tracing.FLOW_RUN_ID, flow_run_id)
            result = self._resume(flow_run_id, payload, response_key)
            record_outcome(span, result)
            return result

    def _resume(
        self, flow_run_id: str, payload: dict[str, Any], response_key: str | None
    ) -> ResumeResult:
        run_id = uuid.UUID(flow_run_id)
        try:
            answer = self._client().resume_flow_run(run_id, run_input=payload)
        except Exception as exc:
            return ResumeResult(Outcome.RETRY, f"{type(exc).__name__}: {exc}")
        if answer.status == SetStateStatus.ACCEPT:
            return ResumeResult(Outcome.RESUMED, answered_at=time.time())
        reason = str(getattr(answer.details, "reason", answer.details))
        if any(r in reason for r in _RETRYABLE_REASONS):
            return ResumeResult(Outcome.RETRY, reason)
        if response_key and self._holds(run_id, response_key, payload):
            return ResumeResult(Outcome.ALREADY_RESUMED, reason)
        return ResumeResult(Outcome.RETRY, f"Prefect refused the resume: {reason}")

    def _holds(self, run_id: uuid.UUID, key: str, payload: dict[str, Any]) -> bool:
        try:
            held = json.loads(self._client().read_flow_run_input(run_id, key))
        except ObjectNotFound:
            return False
        return bool(held == payload)
