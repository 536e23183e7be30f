"""Pause and resume latency of pausewire, next to Prefect's own pause.

    .venv/bin/python -m tests.benchmarks.bench_pause [--waits 30]
        [--native-waits 5] [--budget-seconds 240]

Needs the running stack (`compose/native.py up`). Flows run in threads of
this process against the stack's Prefect server, one wait at a time for
pausewire, all at once for Prefect's pause.

pausewire, measured per wait:
- pause call -> handle PAUSED: from the flow's last line before calling
  `wait_for_user_input` to the PAUSED notification reaching a listener of
  its own, i.e. the committed row being visible to any reader;
- resume accepted -> flow continues: from Prefect accepting the resume
  (then the handle is marked RESUMED, as the resumer does) to the flow's
  first line after the helper.

Prefect's `pause_flow_run(wait_for_input=...)` with its default 10 s poll:
resume accepted -> flow continues. An answer lands at no particular moment
of that poll, so the resumes are spread evenly over one poll interval.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import psycopg
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.responses import SetStateStatus
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.pause import UserResponse, wait_for_user_input
from outbox.settings import get_settings
from outbox.watcher import CHANNEL
from tests.benchmarks.bench_stack import stack_env
from tests.benchmarks.stats import summary
from tests.integration.conftest import StackEnv, wait_for
from tests.integration.waits import FlowRunner, paused_handle, resume_directly

ANSWER = {"user_response": "yes", "additional_data": {"by": "bench"}, "skipped": False}

# Prefect's default for pause_flow_run; the native path is measured with it.
NATIVE_POLL_SECONDS = 10
# Every wait is answered within seconds; a wait left unanswered (the budget
# ran out) ends on its own after this, so the process always exits.
WAIT_TIMEOUT_SECONDS = 60
STEP_TIMEOUT_SECONDS = 30.0

# When each flow called and continued, by key: Prefect copies a flow's
# parameters, so the flow cannot report through an argument.
MARKS: dict[str, dict[str, Any]] = {}


@flow(persist_result=False)
def pausewire_wait(key: str) -> None:
    MARKS[key]["called"] = time.monotonic()
    wait_for_user_input(key, timeout_seconds=WAIT_TIMEOUT_SECONDS)
    MARKS[key]["continued"] = time.monotonic()


@flow(persist_result=False)
def native_wait(key: str) -> None:
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    MARKS[key]["flow_run_id"] = context.flow_run.id
    pause_flow_run(wait_for_input=UserResponse, timeout=WAIT_TIMEOUT_SECONDS)
    MARKS[key]["continued"] = time.monotonic()


class PausedListener:
    """Records when each handle's PAUSED notification reaches this process."""

    def __init__(self, dsn: str) -> None:
        self.seen: dict[str, float] = {}
        self._dsn = dsn
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="bench-listener", daemon=True
        )

    def __enter__(self) -> PausedListener:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("could not LISTEN on the handle status channel")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def paused_at(self, handle_id: str, timeout_s: float = 5.0) -> float:
        """When the handle's PAUSED notification arrived."""
        deadline = time.monotonic() + timeout_s
        while handle_id not in self.seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no PAUSED notification for handle {handle_id}")
            time.sleep(0.005)
        return self.seen[handle_id]

    def _run(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._ready.set()
            while not self._stop.is_set():
                for notify in conn.notifies(timeout=0.2):
                    handle_id, _, status = notify.payload.partition(":")
                    if status == "PAUSED":
                        self.seen.setdefault(handle_id, time.monotonic())


def measure_pausewire(
    runner: FlowRunner, stack: StackEnv, waits: int, deadline: float
) -> tuple[list[float], list[float]]:
    """One wait at a time; the first warms the process up and is not counted."""
    pause_s: list[float] = []
    resume_s: list[float] = []
    run = uuid.uuid4().hex[:8]
    with PausedListener(stack.app_dsn) as listener:
        for i in range(waits + 1):
            if time.monotonic() > deadline:
                print(f"budget spent after {len(pause_s)} pausewire waits")
                break
            key = f"bench-pause-{run}-{i}"
            MARKS[key] = {}
            done = runner.submit(pausewire_wait, key)
            row = paused_handle(stack, key, timeout_s=STEP_TIMEOUT_SECONDS)
            paused = listener.paused_at(str(row["id"]))
            accepted = resume_directly(row, ANSWER)
            done.result(timeout=STEP_TIMEOUT_SECONDS)
            if i == 0:
                continue
            pause_s.append(paused - MARKS[key]["called"])
            resume_s.append(MARKS[key]["continued"] - accepted)
    return pause_s, resume_s


def _resume_native(key: str, delay_s: float) -> float:
    """Resumes a native wait `delay_s` after it paused; returns when accepted."""
    deadline = time.monotonic() + STEP_TIMEOUT_SECONDS + delay_s
    wait_for(f"flow run of {key}", lambda: MARKS[key].get("flow_run_id"))
    flow_run_id = MARKS[key]["flow_run_id"]
    with get_client(sync_client=True) as client:

        def paused() -> bool:
            state = client.read_flow_run(flow_run_id).state
            return state is not None and state.is_paused()

        wait_for(f"flow run {flow_run_id} paused", paused)
        time.sleep(delay_s)
        # Prefect saves the input schema just after the pause is accepted; a
        # resume in between is refused with "Run input schema not found".
        while True:
            result = client.resume_flow_run(flow_run_id, run_input=ANSWER)
            if result.status == SetStateStatus.ACCEPT:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"resume of {flow_run_id} refused: {result}")
            time.sleep(0.05)


def measure_native(runner: FlowRunner, drivers: FlowRunner, waits: int) -> list[float]:
    """All waits at once, resumed at moments spread over one poll interval."""
    run = uuid.uuid4().hex[:8]
    keys = [f"bench-native-{run}-{i}" for i in range(waits)]
    for key in keys:
        MARKS[key] = {}
    flows = [runner.submit(native_wait, key) for key in keys]
    resumes = [
        drivers.submit(_resume_native, key, (i + 0.5) * NATIVE_POLL_SECONDS / waits)
        for i, key in enumerate(keys)
    ]
    latencies = []
    for key, done, resumed in zip(keys, flows, resumes, strict=True):
        accepted = resumed.result(timeout=STEP_TIMEOUT_SECONDS * 2)
        done.result(timeout=WAIT_TIMEOUT_SECONDS)
        latencies.append(MARKS[key]["continued"] - accepted)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_pause")
    parser.add_argument("--waits", type=int, default=30)
    parser.add_argument("--native-waits", type=int, default=5)
    parser.add_argument(
        "--budget-seconds",
        type=float,
        default=240.0,
        help="stop starting pausewire waits after this long",
    )
    args = parser.parse_args()
    print("command: python -m tests.benchmarks.bench_pause", *sys.argv[1:])

    env = stack_env()
    os.environ.update(env)
    os.environ["PREFECT_PAUSE_ENABLED"] = "true"
    get_settings.cache_clear()
    # The flows' INFO lines would bury the figures.
    logging.getLogger("prefect").setLevel(logging.WARNING)
    started = time.monotonic()
    workers = max(2, args.native_waits)
    with (
        temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}),
        ThreadPoolExecutor(workers, thread_name_prefix="flow") as flow_pool,
        ThreadPoolExecutor(workers, thread_name_prefix="driver") as driver_pool,
    ):
        runner, drivers = FlowRunner(flow_pool), FlowRunner(driver_pool)
        pause_s, resume_s = measure_pausewire(
            runner, StackEnv(env), args.waits, started + args.budget_seconds
        )
        native_s = measure_native(runner, drivers, args.native_waits)

    print(summary("pausewire: pause call -> handle PAUSED", pause_s))
    print(summary("pausewire: resume accepted -> flow continues", resume_s))
    print(summary("prefect pause_flow_run: resume -> continues", native_s))
    print(f"{'wall time':<44} {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
