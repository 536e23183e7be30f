"""The genesis demo: a flow that asks a person a question and uses the answer.

    python -m flows.genesis run --correlation-id order-42     # in this process
    python -m flows.genesis serve                             # serve a deployment
    python -m flows.genesis trigger --correlation-id order-42 [--mode suspend]

`run` pauses in-process and wakes the moment the answer lands. `serve`
keeps a deployment named "genesis/genesis" polling for runs, which is what
suspend mode needs: the suspended run gives its process back and Prefect
starts it again from the top once the answer arrives. Its tasks persist
their results, so the work done before the question is not done twice.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.client.orchestration import get_client

from flows.pause import UserResponse, wait_for_user_input

logger = logging.getLogger(__name__)

DEPLOYMENT = "genesis/genesis"


@task(persist_result=True)
def prepare_question(customer: str, journal: str | None = None) -> str:
    """The work before the wait; it must run once per flow run."""
    if journal:
        # Lets a test see how often this task body really ran.
        with Path(journal).open("a") as out:
            out.write(f"prepare_question {datetime.now(UTC).isoformat()}\n")
    return f"Approve the new account of {customer}?"


@task(persist_result=True)
def apply_answer(customer: str, answer: UserResponse) -> dict[str, Any]:
    """The work after the wait, with the typed answer."""
    approved = answer.user_response.strip().lower() in {"yes", "approve", "ok"}
    return {
        "customer": customer,
        "approved": approved,
        "answer": answer.user_response,
        "skipped": answer.skipped,
        "additional_data": answer.additional_data,
    }


@flow(name="genesis", persist_result=True)
def genesis(
    correlation_id: str,
    customer: str = "Ada",
    mode: str = "pause",
    timeout_seconds: int = 3600,
    journal: str | None = None,
) -> dict[str, Any]:
    """Asks for approval and returns what was decided."""
    question = prepare_question(customer, journal)
    answer = wait_for_user_input(
        correlation_id,
        UserResponse,
        description=question,
        mode=mode,
        timeout_seconds=timeout_seconds,
    )
    return apply_answer(customer, answer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.genesis")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "trigger"):
        command = commands.add_parser(name)
        command.add_argument("--correlation-id", required=True)
        command.add_argument("--customer", default="Ada")
        command.add_argument("--mode", choices=["pause", "suspend"], default="pause")
        command.add_argument("--timeout-seconds", type=int, default=3600)
    commands.add_parser("serve")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    if args.command == "serve":
        genesis.serve(name="genesis")
        return 0
    parameters = {
        "correlation_id": args.correlation_id,
        "customer": args.customer,
        "mode": args.mode,
        "timeout_seconds": args.timeout_seconds,
    }
    if args.command == "run":
        print(json.dumps(genesis(**parameters)))
        return 0
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters=parameters
        )
    print(run.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
