"""Suspend mode end to end: a served deployment gives its process back.

The genesis flow is served by `python -m flows.genesis serve` in a child
process, as an operator would run it. A run created from the deployment
suspends at its question; the test resumes it the way the resumer does;
Prefect schedules it again, the served process picks it up, and the flow
runs from the top: the task before the question comes from its persisted
result, and the wait returns the answer without pausing a second time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

from flows.genesis import DEPLOYMENT
from tests.integration.conftest import REPO, handle_row, wait_for
from tests.integration.waits import (
    handle_and_event_counts,
    paused_handle,
    resume_directly,
)

pytestmark = pytest.mark.integration

ANSWER = {"user_response": "yes", "additional_data": {"by": "ops"}, "skipped": False}

# Picking a scheduled run up takes one runner poll (1 s here) plus starting
# the run's own process, which imports Prefect and the flow module.
PICKUP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Served:
    """The serving process, its log, and where results are persisted."""

    process: subprocess.Popen[bytes]
    log: Path
    storage: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _deployment_served_since(started: datetime) -> bool:
    # A deployment left by an earlier serve exists already, paused by that
    # serve's shutdown; only an unpaused one updated since this start shows
    # that this process registered it.
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
        except ObjectNotFound:
            return False
    updated = deployment.updated
    return not deployment.paused and updated is not None and updated >= started


def _children(pid: int) -> list[int]:
    """The child processes of `pid`: the served process runs each flow run in one."""
    found: list[int] = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        found.extend(int(child) for child in listing.read_text().split())
    return found


@pytest.fixture
def served(stack, prefect_api: str, tmp_path: Path) -> Iterator[Served]:
    """`python -m flows.genesis serve`, registered and polling every second."""
    storage = tmp_path / "results"
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_PAUSE_ENABLED": "true",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_LOCAL_STORAGE_PATH": str(storage),
    }
    started = datetime.now(UTC).replace(microsecond=0)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.genesis", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    handle = Served(process, log, storage)
    try:

        def ready() -> bool:
            assert process.poll() is None, (
                f"the serving process exited with {process.returncode}:\n"
                f"{handle.log_tail()}"
            )
            return _deployment_served_since(started)

        wait_for(f"deployment {DEPLOYMENT} served", ready, timeout_s=60)
        yield handle
    finally:
        _stop(process)


def _flow_run(flow_run_id: Any) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _suspended(flow_run_id: Any) -> FlowRun | None:
    run = _flow_run(flow_run_id)
    state = run.state
    if state is not None and state.is_paused() and state.name == "Suspended":
        return run
    return None


def _paused_states(flow_run_id: Any) -> int:
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run_id)
    return sum(1 for s in states if s.is_paused())


def test_a_suspended_run_gives_its_process_back_and_resumes_from_the_top(
    stack, served, correlation_id, tmp_path
):
    journal = tmp_path / "journal.txt"
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        created = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={
                "correlation_id": correlation_id,
                "mode": "suspend",
                "timeout_seconds": 600,
                "journal": str(journal),
            },
        )

    row = paused_handle(stack, correlation_id, timeout_s=PICKUP_TIMEOUT_S)
    assert row["flow_run_id"] == created.id
    wait_for(f"flow run {created.id} suspended", lambda: _suspended(created.id))
    # Suspended, not merely paused: the run holds no process while it waits.
    assert not _flow_run(created.id).state.is_running()

    resume_directly(row, ANSWER)

    def finished() -> FlowRun | None:
        run = _flow_run(created.id)
        return run if run.state is not None and run.state.is_final() else None

    try:
        run: FlowRun = wait_for(  # type: ignore[assignment]
            f"flow run {created.id} final", finished, timeout_s=PICKUP_TIMEOUT_S
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nserve log:\n{served.log_tail()}") from None
    assert run.state is not None
    assert run.state.type == StateType.COMPLETED, (
        f"the resumed run ended {run.state.type}: {run.state.message}\n"
        f"serve log:\n{served.log_tail()}"
    )
    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: served.storage}):
        result = run.state.result()
    assert result == {
        "customer": "Ada",
        "approved": True,
        "answer": "yes",
        "skipped": False,
        "additional_data": {"by": "ops"},
    }, "the flow must continue with the resumed answer"
    assert journal.read_text().count("prepare_question") == 1, (
        "the task before the wait ran again: a suspended flow would redo its "
        "work on every resume"
    )
    assert handle_and_event_counts(stack, correlation_id) == (1, 1), (
        "the re-run opened a second wait for the same correlation id"
    )
    assert _paused_states(created.id) == 1, "the re-run must not suspend again"
    resumed = handle_row(stack.admin_dsn, correlation_id)
    assert resumed is not None and resumed["status"] == "RESUMED"
