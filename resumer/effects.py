"""What the join decides, carried out against Postgres and Prefect."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind

from outbox import tracing
from outbox.models import Handle, HandleStatus
from outbox.store import HandleStore
from resumer import metrics
from resumer.join import DeadLetter, MarkFailed, Resume, Store
from resumer.prefect_api import (
    Outcome,
    PrefectResumer,
    ResumeResult,
    record_outcome,
)

logger = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


class Effects:
    """Postgres writes of the resumer, and the resume itself."""

    def __init__(self, store: HandleStore, crash_point: str = "") -> None:
        self.store = store
        self.crash_point = crash_point

    def store_payload(self, action: Store) -> None:
        """Keeps a payload until its handle is PAUSED."""
        if action.handle_id is not None:
            self.store.hold_payload(
                uuid.UUID(action.handle_id), action.correlation_id, action.payload
            )
        else:
            source = dataclasses.asdict(action.source)
            self.store.park_early(action.correlation_id, action.payload, source)
        logger.info(
            "Stored the callback %s for correlation id %s until its handle is PAUSED",
            action.source,
            action.correlation_id,
        )

    def forget_early(self, action: DeadLetter) -> None:
        """Drops the parked copy of a dead-lettered payload, if it has one."""
        self.store.drop_early(action.correlation_id, action.payload)

    def mark_failed(self, action: MarkFailed) -> None:
        self.store.mark_resume_failed(uuid.UUID(action.handle_id), action.error)
        metrics.HANDLES_FAILED.inc()
        logger.error(
            "Gave up resuming flow run %s for correlation id %s; handle %s is "
            "RESUME_FAILED for a person to look at. Last error: %s",
            action.flow_run_id,
            action.correlation_id,
            action.handle_id,
            action.error,
        )

    def resume(
        self,
        resume: Resume,
        prefect: PrefectResumer,
        *,
        producer: SpanContext | None = None,
    ) -> ResumeResult:
        """Resumes in Prefect, then marks the handle; runs under the lock.

        Traced as `pausewire.resume` in the wait's trace, linked to the
        callback producer's span when there is one.
        """
        handle = self.store.get(uuid.UUID(resume.handle_id))
        if handle is None:
            return ResumeResult(Outcome.RETRY, "the handle row does not exist")
        with _resume_span(resume, handle, producer) as span:
            result = self._resume_paused(resume, handle, prefect)
            record_outcome(span, result)
            return result

    def _resume_paused(
        self, resume: Resume, handle: Handle, prefect: PrefectResumer
    ) -> ResumeResult:
        if handle.status is HandleStatus.RESUMED:
            return ResumeResult(Outcome.ALREADY_RESUMED, "handle already RESUMED")
        if handle.status is not HandleStatus.PAUSED:
            return ResumeResult(
                Outcome.RETRY, f"the handle is {handle.status}, not PAUSED"
            )
        response_key = handle.resume_handle.get("keyset", {}).get("response")
        result = prefect.resume(resume.flow_run_id, resume.payload, response_key)
        if self.crash_point == "after_prefect_resume":
            logger.error("Crash point after_prefect_resume reached; killing myself")
            os.kill(os.getpid(), signal.SIGKILL)
        if result.outcome is not Outcome.RETRY:
            # The order matters: Prefect first, then the mark. A crash in
            # between leaves PAUSED, and the next attempt finds Prefect
            # holding this payload and counts it as done.
            self.store.mark_resumed(handle.id, resume.payload)
            self.store.drop_early(resume.correlation_id)
        return result


@contextmanager
def _resume_span(
    resume: Resume, handle: Handle, producer: SpanContext | None
) -> Iterator[Span]:
    """`pausewire.resume`, a child of the wait's span kept in the handle row.

    Without a stored context (tracing was off when the wait began) the
    resume starts a trace of its own.
    """
    parent = tracing.wait_context(handle.resume_handle)
    with tracer.start_as_current_span(
        "pausewire.resume",
        context=parent,
        kind=SpanKind.CONSUMER,
        links=[Link(producer)] if producer is not None else None,
    ) as span:
        span.set_attribute(tracing.CORRELATION_ID, resume.correlation_id)
        span.set_attribute(tracing.FLOW_RUN_ID, resume.flow_run_id)
        span.set_attribute(tracing.HANDLE_ID, resume.handle_id)
        span.set_attribute("pausewire.resume.attempt", resume.attempt)
        if resume.source is not None:
            source = resume.source
            span.set_attributes(
                tracing.messaging_attributes(
                    source.topic, source.partition, source.offset
                )
            )
        yield span
