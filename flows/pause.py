"""`wait_for_user_input`: a flow waits for an outside answer and gets it typed.

    answer = wait_for_user_input("order-42", Approval, timeout_seconds=600)

The helper writes the wait's handle and an "input requested" outbox event in
one Postgres transaction, then asks Prefect to pause (or suspend) the run.
The resumer delivers the answer through Prefect's resume API and marks the
handle RESUMED; a Postgres notification wakes this process at once, instead
of Prefect's 10 s poll. A slow poll of Prefect stays as a safety net.

Calling it again with the same correlation id in the same flow run returns
the first call's answer and never pauses twice; that is what makes a
suspended flow, which Prefect re-runs from the top, pick its answer up.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, overload

from opentelemetry import propagate, trace
from opentelemetry.trace import StatusCode
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import Abort, ObjectNotFound, Pause
from prefect.input import RunInput, keyset_from_base_key
from prefect.input.run_input import Keyset
from prefect.states import Paused, Running, Suspended
from prefect.utilities.engine import propose_state_sync
from pydantic import Field
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_chain,
    wait_fixed,
)

from outbox import tracing
from outbox.errors import (
    InvalidWaitRequestError,
    PauseFailedError,
    ResumeFailedError,
    WaitTimeoutError,
)
from outbox.logs import log_context
from outbox.models import (
    MAX_CORRELATION_ID_LENGTH,
    Handle,
    HandleStatus,
    WaitMode,
    WaitRequest,
)
from outbox.settings import get_settings
from outbox.store import HandleStore, get_store
from outbox.watcher import get_watcher

logger = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# The service name of a waiting flow's spans, unless OTEL_SERVICE_NAME says
# otherwise.
TRACING_SERVICE_NAME = "pausewire-flow"

# Prefect keeps its own pause timeout a little longer than the handle's, so
# that this helper, not Prefect's expiry sweep, decides what a timeout means.
PREFECT_TIMEOUT_GRACE_SECONDS = 60

# Waits between the attempts of the pause call: 3 retries, 1 s, 2 s, 4 s.
PAUSE_RETRY_WAITS_SECONDS = (1, 2, 4)


class UserResponse(RunInput):
    """The default answer, the `result` of a callback event."""

    user_response: str = ""
    additional_data: dict[str, Any] = Field(default_factory=dict)
    # True only for the answer returned when pausing is switched off.
    skipped: bool = False


R = TypeVar("R", bound=RunInput)
T = TypeVar("T")


@dataclass(frozen=True)
class _Wait:
    """One call's handle with what it needs to pause and to read the answer."""

    handle: Handle
    model: type[RunInput]
    keyset: Keyset
    pause_key: str
    mode: WaitMode


@overload
def wait_for_user_input(
    correlation_id: str,
    *,
    timeout_seconds: int = 3600,
    description: str | None = None,
    mode: WaitMode | str = WaitMode.PAUSE,
    default: UserResponse | None = None,
    context: dict[str, Any] | None = None,
) -> UserResponse: ...


@overload
def wait_for_user_input(
    correlation_id: str,
    wait_for_input: type[R],
    *,
    timeout_seconds: int = 3600,
    description: str | None = None,
    mode: WaitMode | str = WaitMode.PAUSE,
    default: R | None = None,
    context: dict[str, Any] | None = None,
) -> R: ...


def wait_for_user_input(
    correlation_id: str,
    wait_for_input: type[RunInput] = UserResponse,
    *,
    timeout_seconds: int = 3600,
    description: str | None = None,
    mode: WaitMode | str = WaitMode.PAUSE,
    default: RunInput | None = None,
    context: dict[str, Any] | None = None,
) -> RunInput:
    """Waits for the answer to `correlation_id` and returns it validated.

    `mode="pause"` keeps the process and wakes within milliseconds of the
    resume; `mode="suspend"` releases it (the flow must be served or
    deployed, and Prefect runs it again from the top after the resume).

    On timeout the handle becomes EXPIRED and the call returns `default`, or
    raises `WaitTimeoutError` when there is none. With pausing switched off
    (`PREFECT_PAUSE_ENABLED=false`) nothing is written and the call returns
    `default`, or the model's skipped answer.
    """
    wait_mode = _validate(correlation_id, wait_for_input, timeout_seconds, mode)
    if not get_settings().pause_enabled:
        return _skipped(correlation_id, wait_for_input, default)
    tracing.configure_tracing(TRACING_SERVICE_NAME)
    # One trace per wait, linked to the flow run's span. Prefect's Pause and
    # Abort are BaseExceptions that end a wait on purpose: only an Exception
    # marks the span as failed.
    root, links = tracing.root_with_link()
    with (
        log_context(correlation_id=correlation_id),
        tracer.start_as_current_span(
            "pausewire.wait",
            context=root,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span,
    ):
        span.set_attribute(tracing.CORRELATION_ID, correlation_id)
        try:
            request = _request(
                correlation_id,
                model=wait_for_input,
                timeout_seconds=timeout_seconds,
                description=description,
                mode=wait_mode,
                context=context or {},
            )
            span.set_attribute(tracing.FLOW_RUN_ID, str(request.flow_run_id))
            store = get_store()
            handle, created = store.open_wait(request)
            span.set_attribute(tracing.HANDLE_ID, str(handle.id))
            wait = _wait_of(handle, wait_for_input)
            if not created:
                logger.info(
                    "Correlation id %s already has handle %s (%s) in flow run %s; "
                    "not pausing again",
                    correlation_id,
                    handle.id,
                    handle.status,
                    handle.flow_run_id,
                )
            with log_context(flow_run_id=str(handle.flow_run_id)):
                return _settle(store, wait, default)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
            raise


def _prefect_client() -> SyncPrefectClient:
    # Inside a run this is the run's own client, already connected.
    return get_client(sync_client=True)


# ---- validation and requests


def _validate(
    correlation_id: str,
    model: type[RunInput],
    timeout_seconds: int,
    mode: WaitMode | str,
) -> WaitMode:
    if not isinstance(correlation_id, str) or not correlation_id.strip():
        raise InvalidWaitRequestError("correlation_id must be a non-blank string")
    if len(correlation_id) > MAX_CORRELATION_ID_LENGTH:
        raise InvalidWaitRequestError(
            f"correlation_id is {len(correlation_id)} characters long; at most "
            f"{MAX_CORRELATION_ID_LENGTH} are allowed"
        )
    if not (isinstance(model, type) and issubclass(model, RunInput)):
        raise InvalidWaitRequestError(
            f"wait_for_input must be a prefect.input.RunInput subclass, got {model!r}"
        )
    if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, int):
        raise InvalidWaitRequestError("timeout_seconds must be a whole number")
    if timeout_seconds <= 0:
        raise InvalidWaitRequestError(
            f"timeout_seconds must be positive, got {timeout_seconds}"
        )
    try:
        return WaitMode(mode)
    except ValueError:
        raise InvalidWaitRequestError(
            f"mode must be 'pause' or 'suspend', got {mode!r}"
        ) from None


def _skipped(
    correlation_id: str, model: type[RunInput], default: RunInput | None
) -> RunInput:
    logger.info(
        "Pausing is switched off (PREFECT_PAUSE_ENABLED=false); correlation id "
        "%s gets the skipped answer without waiting",
        correlation_id,
    )
    if default is not None:
        return default
    if model is UserResponse:
        return UserResponse(skipped=True)
    return model.model_validate({})


def _request(
    correlation_id: str,
    *,
    model: type[RunInput],
    timeout_seconds: int,
    description: str | None,
    mode: WaitMode,
    context: dict[str, Any],
) -> WaitRequest:
    flow_context = FlowRunContext.get()
    if flow_context is None or flow_context.flow_run is None:
        raise InvalidWaitRequestError(
            "wait_for_user_input must be called inside a Prefect flow run"
        )
    task_context = TaskRunContext.get()
    if mode is WaitMode.SUSPEND and task_context is not None:
        raise InvalidWaitRequestError(
            "mode='suspend' cannot be used inside a task: Prefect suspends whole "
            "flow runs only; use mode='pause' or call it from the flow"
        )
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    pause_key = uuid.uuid4().hex
    return WaitRequest(
        correlation_id=correlation_id,
        flow_run_id=flow_context.flow_run.id,
        task_run_id=task_context.task_run.id if task_context else None,
        task_name=task_context.task.name if task_context else None,
        mode=mode,
        timeout_seconds=timeout_seconds,
        description=description,
        input_schema=model.model_json_schema(),
        keyset=dict(_keyset(mode, pause_key)),
        pause_key=pause_key,
        context_data=context,
        traceparent=carrier.get("traceparent"),
        tracestate=carrier.get("tracestate"),
    )


def _keyset(mode: WaitMode, pause_key: str) -> Keyset:
    # The same keys Prefect derives from a Paused/Suspended state's name and
    # pause key, so the UI and Prefect's own loaders find the input.
    state_name = "suspended" if mode is WaitMode.SUSPEND else "paused"
    return keyset_from_base_key(f"{state_name}-{pause_key}")


def _wait_of(handle: Handle, model: type[RunInput]) -> _Wait:
    stored = handle.resume_handle
    keyset: Keyset = {
        "description": stored["keyset"]["description"],
        "response": stored["keyset"]["response"],
        "schema": stored["keyset"]["schema"],
    }
    return _Wait(handle, model, keyset, stored["pause_key"], WaitMode(stored["mode"]))


# ---- the wait's life


def _settle(store: HandleStore, wait: _Wait, default: RunInput | None) -> RunInput:
    handle = wait.handle
    if handle.status is HandleStatus.RESUMED:
        return _answer(wait, handle)
    if handle.status is HandleStatus.EXPIRED:
        return _timed_out(handle, default)
    if handle.status is HandleStatus.PAUSE_FAILED:
        raise PauseFailedError(
            handle.correlation_id, str(handle.flow_run_id), handle.last_error or ""
        )
    if handle.status is HandleStatus.RESUME_FAILED:
        raise ResumeFailedError(handle.correlation_id, handle.last_error or "")
    if handle.status is HandleStatus.PENDING_PAUSE:
        answer = _pause(store, wait)
        if answer is not None:
            return answer
    elif wait.mode is WaitMode.SUSPEND:
        # PAUSED while this code runs again: Prefect re-ran the suspended flow
        # after a resume whose RESUMED mark has not landed yet.
        answer = _adopt_prefect_input(store, wait)
        if answer is not None:
            return answer
    return _block_until_answered(store, wait, default)


def _pause(store: HandleStore, wait: _Wait) -> RunInput | None:
    """Pauses the run in Prefect; returns the answer if it was already given."""
    try:
        state = _with_retries(_propose_pause, wait)
        if state.is_paused():
            _with_retries(_save_schema, wait)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        store.compensate(wait.handle, reason)
        logger.error(
            "Pausing flow run %s for correlation id %s failed after %d attempts; "
            "handle %s compensated to PAUSE_FAILED",
            wait.handle.flow_run_id,
            wait.handle.correlation_id,
            len(PAUSE_RETRY_WAITS_SECONDS) + 1,
            wait.handle.id,
            exc_info=exc,
        )
        raise PauseFailedError(
            wait.handle.correlation_id, str(wait.handle.flow_run_id), reason
        ) from exc
    if state.is_running():
        # This pause key was used before and the run was resumed since.
        return _adopt_prefect_input(store, wait)
    store.mark_paused(wait.handle.id)
    logger.info(
        "Flow run %s paused for correlation id %s (handle %s)",
        wait.handle.flow_run_id,
        wait.handle.correlation_id,
        wait.handle.id,
    )
    if wait.mode is WaitMode.SUSPEND:
        raise Pause(state=state)
    return None


def _log_retry(retry_state: RetryCallState) -> None:
    wait = retry_state.args[0]
    sleep = retry_state.next_action.sleep if retry_state.next_action else 0
    logger.warning(
        "Pause call for correlation id %s failed (attempt %d: %s); retrying in %g s",
        wait.handle.correlation_id,
        retry_state.attempt_number,
        retry_state.outcome.exception() if retry_state.outcome else None,
        sleep,
    )


def _with_retries(step: Callable[[_Wait], T], wait: _Wait) -> T:
    retrying = Retrying(
        stop=stop_after_attempt(len(PAUSE_RETRY_WAITS_SECONDS) + 1),
        wait=wait_chain(*(wait_fixed(s) for s in PAUSE_RETRY_WAITS_SECONDS)),
        # Abort is Prefect saying the run may not pause: asking again changes
        # nothing.
        retry=retry_if_not_exception_type(Abort),
        before_sleep=_log_retry,
        reraise=True,
    )
    return retrying(step, wait)


def _propose_pause(wait: _Wait) -> State[Any]:
    timeout = wait.handle.timeout_seconds
    if wait.mode is WaitMode.SUSPEND:
        proposed: State[Any] = Suspended(
            timeout_seconds=timeout, pause_key=wait.pause_key
        )
    else:
        proposed = Paused(
            timeout_seconds=timeout + PREFECT_TIMEOUT_GRACE_SECONDS,
            pause_key=wait.pause_key,
            reschedule=False,
        )
    proposed.state_details.run_input_keyset = {
        str(k): v for k, v in wait.keyset.items()
    }
    with _prefect_client() as client:
        try:
            state = propose_state_sync(client, proposed, wait.handle.flow_run_id)
        except Pause as fired:
            # A retry whose first attempt was accepted but its answer lost:
            # Prefect refuses to fire the pause key twice and shows the run
            # paused, which is what was asked for.
            if fired.state is None:
                raise
            state = fired.state
    if not (state.is_paused() or state.is_running()):
        raise RuntimeError(f"Prefect answered the pause with state {state.type}")
    return state


def _save_schema(wait: _Wait) -> None:
    # Prefect deletes any input under the keyset when the pause fires, so the
    # schema can only be saved after it. The handle turns PAUSED only once
    # this is done, and the resumer acts on PAUSED handles only: it can never
    # resume into the window where Prefect answers "Run input schema not
    # found".
    wait.model.save(wait.keyset, flow_run_id=wait.handle.flow_run_id)


def _block_until_answered(
    store: HandleStore, wait: _Wait, default: RunInput | None
) -> RunInput:
    """Sleeps until the handle changes, the safety poll sees a resume, or time's up."""
    handle_id = wait.handle.id
    poll_s = get_settings().safety_poll_seconds
    deadline = time.monotonic() + _seconds_left(wait.handle)
    with get_watcher().subscribe(handle_id) as subscription:
        while True:
            current = store.get(handle_id) or wait.handle
            if current.status is HandleStatus.RESUMED:
                return _answer(wait, current)
            if not current.status.is_active:
                return _settle(store, _Wait(current, *_rest(wait)), default)
            left = deadline - time.monotonic()
            if left <= 0:
                return _expire(store, wait, default)
            if subscription.wait(min(left, poll_s)) is None:
                answer = _adopt_prefect_input(store, wait)
                if answer is not None:
                    return answer


def _rest(wait: _Wait) -> tuple[type[RunInput], Keyset, str, WaitMode]:
    return wait.model, wait.keyset, wait.pause_key, wait.mode


def _seconds_left(handle: Handle) -> float:
    return (handle.expires_at - datetime.now(UTC)).total_seconds()


def _answer(wait: _Wait, handle: Handle) -> RunInput:
    payload = handle.resume_payload or {}
    with _continuing(handle):
        logger.info(
            "Flow run %s continues with the answer to correlation id %s",
            handle.flow_run_id,
            handle.correlation_id,
        )
        return wait.model.model_validate(payload)


@contextmanager
def _continuing(handle: Handle) -> Iterator[None]:
    """The `pausewire.continue` span, a child of the wait's stored context.

    Taken from the handle, not from the current span: a suspended flow runs
    this in a new process, under a `pausewire.wait` span of its own that is
    not the one the resumer continued.
    """
    parent = tracing.wait_context(handle.resume_handle)
    with tracer.start_as_current_span("pausewire.continue", context=parent) as span:
        span.set_attribute(tracing.CORRELATION_ID, handle.correlation_id)
        span.set_attribute(tracing.FLOW_RUN_ID, str(handle.flow_run_id))
        span.set_attribute(tracing.HANDLE_ID, str(handle.id))
        if handle.resumed_at is not None:
            woke = (datetime.now(UTC) - handle.resumed_at).total_seconds()
            span.set_attribute("pausewire.wake_delay_seconds", max(woke, 0.0))
        yield


def _adopt_prefect_input(store: HandleStore, wait: _Wait) -> RunInput | None:
    """The answer Prefect holds if the run was resumed past the resumer.

    Covers a resume from Prefect's UI or API, and a resumer that stopped
    between Prefect's resume and the RESUMED mark.
    """
    run_id = wait.handle.flow_run_id
    with _prefect_client() as client:
        run = client.read_flow_run(run_id)
        if run.state is None or not run.state.is_running():
            return None
        try:
            raw = client.read_flow_run_input(run_id, wait.keyset["response"])
        except ObjectNotFound:
            return None
    value: dict[str, Any] = json.loads(raw)
    store.mark_resumed(wait.handle.id, value)
    with _continuing(wait.handle):
        logger.info(
            "Flow run %s was resumed outside the resumer; took its input for "
            "correlation id %s",
            run_id,
            wait.handle.correlation_id,
        )
        return wait.model.model_validate(value)


def _expire(store: HandleStore, wait: _Wait, default: RunInput | None) -> RunInput:
    if not store.expire(wait.handle):
        # Lost the race: the handle changed at the last moment; settle on it.
        current = store.get(wait.handle.id) or wait.handle
        return _settle(store, _Wait(current, *_rest(wait)), default)
    # Prefect still holds the run paused; put it back to running so that the
    # flow can go on with the default or fail with the timeout.
    with _prefect_client() as client:
        client.set_flow_run_state(wait.handle.flow_run_id, Running(), force=True)
    return _timed_out(wait.handle, default)


def _timed_out(handle: Handle, default: RunInput | None) -> RunInput:
    if default is not None:
        logger.warning(
            "No answer for correlation id %s within %d s; continuing with the "
            "default answer",
            handle.correlation_id,
            handle.timeout_seconds,
        )
        return default
    raise WaitTimeoutError(handle.correlation_id, handle.timeout_seconds)
