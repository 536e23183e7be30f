"""wait_for_user_input against the real Postgres, Kafka, Connect and Prefect.

Flows run in a thread of the test process, as a worker would run them; the
test plays the resumer's part by resuming through Prefect's API and marking
the handle RESUMED, which is what wakes the flow.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from prefect import flow, task
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.input import RunInput

from flows import pause as pause_module
from flows.pause import UserResponse, wait_for_user_input
from outbox import store as store_module
from outbox.errors import HandleConflictError, PauseFailedError, WaitTimeoutError
from outbox.models import WaitMode, WaitRequest
from outbox.store import get_store
from tests.integration.conftest import handle_row
from tests.integration.waits import FlowRunner, resume_directly
from tests.integration.waits import handle_and_event_counts as _counts
from tests.integration.waits import paused_handle as _paused

pytestmark = pytest.mark.integration

ANSWER = {"user_response": "yes", "additional_data": {"by": "ops"}, "skipped": False}


class Approval(RunInput):
    approved: bool
    note: str = ""


# When each flow got its answer, by correlation id: Prefect copies a flow's
# parameters, so the flow cannot report through an argument.
WOKE: dict[str, float] = {}


@flow(persist_result=False)
def asking(
    correlation_id: str, timeout_seconds: int = 120, times: int = 1
) -> list[dict[str, Any]]:
    answers = []
    for _ in range(times):
        answer = wait_for_user_input(correlation_id, timeout_seconds=timeout_seconds)
        WOKE.setdefault(correlation_id, time.monotonic())
        answers.append(answer.model_dump())
    return answers


@task(persist_result=False)
def asking_task(correlation_id: str) -> dict[str, Any]:
    return wait_for_user_input(correlation_id, Approval).model_dump()


@flow(persist_result=False)
def asking_from_a_task(correlation_id: str) -> dict[str, Any]:
    return asking_task(correlation_id)


@flow(persist_result=False)
def asking_with_default(correlation_id: str) -> dict[str, Any]:
    default = UserResponse(user_response="no answer, default used")
    return wait_for_user_input(
        correlation_id, timeout_seconds=2, default=default
    ).model_dump()


@pytest.fixture
def runner() -> Any:
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="flow") as pool:
        yield FlowRunner(pool)


def _paused_states(flow_run_id: uuid.UUID) -> int:
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run_id)
    return sum(1 for s in states if s.is_paused())


def test_resume_wakes_the_flow_at_once_with_the_typed_answer(
    stack, pausing, runner, correlation_id
):
    future: Future[list[dict[str, Any]]] = runner.submit(asking, correlation_id)
    row = _paused(stack, correlation_id)

    accepted = resume_directly(row, ANSWER)
    answers = future.result(timeout=30)

    assert answers == [ANSWER], "the flow must get the payload as its model"
    wake_s = WOKE[correlation_id] - accepted
    assert wake_s < 2.0, (
        f"the flow woke {wake_s:.2f} s after the resume; a wake this late means "
        "it waited for a poll instead of the notification"
    )


def test_paused_within_five_seconds_with_an_audit_row_per_transition(
    stack, pausing, runner, correlation_id
):
    started = time.monotonic()
    future = runner.submit(asking, correlation_id)
    row = _paused(stack, correlation_id, timeout_s=5.0)
    paused_after = time.monotonic() - started
    resume_directly(row, ANSWER)
    future.result(timeout=30)

    with psycopg.connect(stack.admin_dsn) as conn:
        audit = conn.execute(
            "SELECT old_status::text, new_status::text, flow_run_id "
            "FROM flow_resume_handle_audit WHERE handle_id = %s ORDER BY id",
            (row["id"],),
        ).fetchall()
    assert paused_after < 5.0
    assert audit == [
        (None, "PENDING_PAUSE", row["flow_run_id"]),
        ("PENDING_PAUSE", "PAUSED", row["flow_run_id"]),
        ("PAUSED", "RESUMED", row["flow_run_id"]),
    ]


def test_same_correlation_id_twice_makes_one_handle_one_event_one_pause(
    stack, pausing, runner, correlation_id
):
    future = runner.submit(asking, correlation_id, times=2)
    row = _paused(stack, correlation_id)
    resume_directly(row, ANSWER)

    answers = future.result(timeout=30)

    assert answers == [ANSWER, ANSWER], "the second call returns the first answer"
    assert _counts(stack, correlation_id) == (1, 1)
    assert _paused_states(row["flow_run_id"]) == 1, "the run paused exactly once"


def test_a_wait_inside_a_task_pauses_the_flow_and_validates_its_model(
    stack, pausing, runner, correlation_id
):
    future = runner.submit(asking_from_a_task, correlation_id)
    row = _paused(stack, correlation_id)

    assert row["task_run_id"] is not None, "the task run id is part of the handle"
    assert row["task_name"] == "asking_task"
    resume_directly(row, {"approved": True, "note": "fine"})
    assert future.result(timeout=30) == {"approved": True, "note": "fine"}


def test_unreachable_prefect_is_retried_then_the_handle_is_compensated(
    stack, pausing, correlation_id, monkeypatch
):
    # The run itself is created through the real API; only the helper's
    # calls go to a port where nothing listens.
    monkeypatch.setattr(
        pause_module,
        "_prefect_client",
        lambda: SyncPrefectClient("http://127.0.0.1:9/api"),
    )
    started = time.monotonic()
    state = asking(correlation_id, return_state=True)
    took = time.monotonic() - started

    assert state.is_failed()
    with pytest.raises(PauseFailedError, match="failed"):
        state.result()
    assert 6.5 <= took < 20, f"3 retries at 1/2/4 s take about 7 s, took {took:.1f}"
    row = handle_row(stack.admin_dsn, correlation_id)
    assert row is not None and row["status"] == "PAUSE_FAILED", (
        "a handle left PENDING_PAUSE would wait for an answer forever"
    )
    assert "ConnectError" in (row["last_error"] or "")
    with psycopg.connect(stack.admin_dsn) as conn:
        events = conn.execute(
            "SELECT type FROM outbox_events WHERE aggregateid = %s ORDER BY created_at",
            (correlation_id,),
        ).fetchall()
    assert events == [("input_requested",), ("pause_failed",)]


def test_switched_off_the_flow_runs_on_with_the_skipped_answer(
    stack, prefect_api, monkeypatch, correlation_id
):
    from outbox.settings import get_settings

    monkeypatch.setenv("PREFECT_PAUSE_ENABLED", "false")
    get_settings.cache_clear()
    try:
        answers = asking(correlation_id)
    finally:
        get_settings.cache_clear()

    assert answers == [{"user_response": "", "additional_data": {}, "skipped": True}]
    assert handle_row(stack.admin_dsn, correlation_id) is None


def test_timeout_expires_the_handle_and_fails_the_run(stack, pausing, correlation_id):
    state = asking(correlation_id, timeout_seconds=2, return_state=True)

    assert state.is_failed()
    with pytest.raises(WaitTimeoutError):
        state.result()
    row = handle_row(stack.admin_dsn, correlation_id)
    assert row is not None and row["status"] == "EXPIRED"


def test_timeout_with_a_default_continues_with_it(stack, pausing, correlation_id):
    result = asking_with_default(correlation_id)

    assert result["user_response"] == "no answer, default used"
    row = handle_row(stack.admin_dsn, correlation_id)
    assert row is not None and row["status"] == "EXPIRED"


def test_handle_and_event_are_written_together_or_not_at_all(
    stack, pausing, monkeypatch, correlation_id
):
    monkeypatch.setattr(
        store_module,
        "_INSERT_EVENT",
        "INSERT INTO outbox_events (no_such_column) VALUES (%s, %s, %s, %s, %s, %s)",
    )
    request = WaitRequest(
        correlation_id=correlation_id,
        flow_run_id=uuid.uuid4(),
        task_run_id=None,
        task_name=None,
        mode=WaitMode.PAUSE,
        timeout_seconds=60,
        description=None,
        input_schema={},
        keyset={"description": "d", "response": "r", "schema": "s"},
        pause_key="k",
        context_data={},
    )

    with pytest.raises(psycopg.errors.UndefinedColumn):
        get_store().open_wait(request)

    assert _counts(stack, correlation_id) == (0, 0), (
        "a handle without its event would never be announced"
    )


def test_a_correlation_id_waiting_in_another_run_is_refused(
    stack, pausing, runner, correlation_id
):
    first = runner.submit(asking, correlation_id)
    row = _paused(stack, correlation_id)

    state = asking(correlation_id, return_state=True)

    assert state.is_failed()
    with pytest.raises(HandleConflictError) as caught:
        state.result()
    assert str(row["flow_run_id"]) in str(caught.value)
    assert caught.value.existing_flow_run_id == str(row["flow_run_id"])
    assert _counts(stack, correlation_id) == (1, 1), "nothing was overwritten"
    resume_directly(row, ANSWER)
    assert first.result(timeout=30) == [ANSWER]


def test_a_resume_outside_pausewire_is_picked_up_by_the_safety_poll(
    stack, pausing, runner, correlation_id, monkeypatch
):
    from outbox.settings import get_settings

    monkeypatch.setenv("PAUSEWIRE_SAFETY_POLL_SECONDS", "1")
    get_settings.cache_clear()
    future = runner.submit(asking, correlation_id)
    row = _paused(stack, correlation_id)

    # Resumed in Prefect only, as from its UI: the handle is not marked.
    with get_client(sync_client=True) as client:
        client.resume_flow_run(row["flow_run_id"], run_input=ANSWER)

    assert future.result(timeout=30) == [ANSWER]
    resumed = handle_row(stack.admin_dsn, correlation_id)
    assert resumed is not None and resumed["status"] == "RESUMED"
    assert resumed["resume_payload"] == ANSWER


def test_the_input_schema_is_saved_before_the_pause(
    stack, pausing, runner, correlation_id
):
    future = runner.submit(asking, correlation_id)
    row = _paused(stack, correlation_id)
    keyset = row["resume_handle"]["keyset"]

    with get_client(sync_client=True) as client:
        schema = json.loads(
            client.read_flow_run_input(row["flow_run_id"], keyset["schema"])
        )
    assert "user_response" in schema["properties"]
    resume_directly(row, ANSWER)
    future.result(timeout=30)


def test_a_wait_puts_exactly_three_changes_on_the_change_log(
    stack, pausing, runner, topic_reader, correlation_id
):
    reader = topic_reader(["pausewire.public.flow_resume_handles"])
    future = runner.submit(asking, correlation_id)
    row = _paused(stack, correlation_id)
    resume_directly(row, ANSWER)
    future.result(timeout=30)

    changes = reader.collect(
        lambda m: m.key() == correlation_id.encode(), count=4, timeout_s=5
    )
    statuses = [json.loads(m.value())["status"] for m in changes]
    assert statuses == ["PENDING_PAUSE", "PAUSED", "RESUMED"], (
        "an extra change (a PAUSED handle with a payload) would make a resumer "
        "start a resume that is already done"
    )
