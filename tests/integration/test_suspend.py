"""Suspend mode end to end: a served deployment gives its process back.

The genesis flow is served by `python -m flows.genesis serve` in a child
process, as an operator would run it. A run created from the deployment
suspends at its question and its process exits; the test resumes it the way
the resumer does; Prefect schedules it again, the served process picks it
up, and the flow runs from the top: the task before the question comes from
its persisted result, and the wait returns the answer without suspending a
second time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
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
# What genesis returns for ANSWER: apply_answer ran with the typed answer.
APPROVED = {
    "customer": "Ada",
    "approved": True,
    "answer": "yes",
    "skipped": False,
    "additional_data": {"by": "ops"},
}

# Picking a scheduled run up takes one runner poll (1 s here) plus starting
# the run's own process, which imports Prefect and the flow module.
PICKUP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Served:
    """The serving process, its log, and where its runs persist results."""

    process: subprocess.Popen[bytes]
    log: Path
    storage: Path

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def flow_run_processes(self) -> list[int]:
        """The children running a flow run: the runner spawns one per run.

        The runner also keeps multiprocessing's resource tracker as a child
        for its whole life; that one runs no flow and is left out.
        """
        found = []
        for listing in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            for child in listing.read_text().split():
                try:
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                except FileNotFoundError:
                    continue
                if b"spawn_main" in cmdline:
                    found.append(int(child))
        return found

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the runner's graceful shutdown hangs."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _served_since(started: datetime) -> bool:
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


@pytest.fixture
def served(stack, prefect_api: str, tmp_path: Path) -> Iterator[Served]:
    """`python -m flows.genesis serve`, registered and polling every second."""
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "PREFECT_PAUSE_ENABLED": "true",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
    }
    started = datetime.now(UTC).replace(microsecond=0)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.genesis", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(process, log, tmp_path / "results")
    try:

        def ready() -> bool:
            assert process.poll() is None, (
                f"the serving process exited with {process.returncode}:\n"
                f"{served.log_tail()}"
            )
            return _served_since(started)

        wait_for(f"deployment {DEPLOYMENT} served", ready, timeout_s=60)
        yield served
    finally:
        served.stop()


def _flow_run(flow_run_id: Any) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _suspended(flow_run_id: Any) -> bool:
    state = _flow_run(flow_run_id).state
    return state is not None and state.is_paused() and state.name == "Suspended"


def _final(flow_run_id: Any) -> FlowRun | None:
    run = _flow_run(flow_run_id)
    return run if run.state is not None and run.state.is_final() else None


def _paused_states(flow_run_id: Any) -> int:
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run_id)
    return sum(1 for s in states if s.is_paused())


def _suspend_a_run(
    stack, served: Served, correlation_id: str, journal: Path
) -> tuple[FlowRun, dict[str, Any]]:
    """A run of the deployment, suspended at its question with no process."""
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
    wait_for(f"flow run {created.id} Suspended", lambda: _suspended(created.id))
    wait_for(
        "the served process to let the suspended run's process exit",
        lambda: not served.flow_run_processes(),
    )
    assert _suspended(created.id), "with no process the run must stay Suspended"
    return created, row


def _completed(served: Served, flow_run_id: Any) -> Any:
    """The finished run's result; fails unless it COMPLETED in time."""
    try:
        run = cast(
            FlowRun,
            wait_for(
                f"flow run {flow_run_id} final",
                lambda: _final(flow_run_id),
                timeout_s=PICKUP_TIMEOUT_S,
            ),
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nserve log:\n{served.log_tail()}") from None
    assert run.state is not None
    assert run.state.type == StateType.COMPLETED, (
        f"the resumed run ended {run.state.type}: {run.state.message}\n"
        f"serve log:\n{served.log_tail()}"
    )
    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: served.storage}):
        return run.state.result()


def test_a_suspended_run_gives_its_process_back_and_resumes_from_the_top(
    stack, served, correlation_id, tmp_path
):
    journal = tmp_path / "journal.txt"
    created, row = _suspend_a_run(stack, served, correlation_id, journal)

    resume_directly(row, ANSWER)

    result = _completed(served, created.id)
    assert result == APPROVED, "the flow must continue with the resumed answer"
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

    # The runner cancels every run it still tracks when it shuts down, even
    # one that has just completed: stop it only once the run's process is
    # gone, and check the shutdown left the run alone.
    wait_for(
        "the completed run's process to exit",
        lambda: not served.flow_run_processes(),
    )
    served.stop()
    final = _flow_run(created.id).state
    assert final is not None and final.type == StateType.COMPLETED, (
        f"stopping the served process turned the finished run {final}"
    )


def test_a_rerun_before_the_resumed_mark_takes_the_answer_from_prefect(
    stack, served, correlation_id, tmp_path
):
    # The crash window: Prefect accepted the resume, then the resumer died
    # before marking the handle. The re-run finds its handle still PAUSED.
    journal = tmp_path / "journal.txt"
    created, row = _suspend_a_run(stack, served, correlation_id, journal)

    with get_client(sync_client=True) as client:
        accepted = client.resume_flow_run(row["flow_run_id"], run_input=ANSWER)
    assert accepted.status == SetStateStatus.ACCEPT, accepted.details

    assert _completed(served, created.id) == APPROVED, (
        "a re-run that suspended again would wait for an answer already given"
    )
    assert _paused_states(created.id) == 1
    resumed = handle_row(stack.admin_dsn, correlation_id)
    assert resumed is not None and resumed["status"] == "RESUMED", (
        "the re-run must record the answer it adopted"
    )
    assert resumed["resume_payload"] == ANSWER
    assert journal.read_text().count("prepare_question") == 1
    wait_for(
        "the completed run's process to exit",
        lambda: not served.flow_run_processes(),
    )
