"""Command line of the resumer.

python -m resumer            run the worker until SIGTERM or SIGINT
python -m resumer replay     rebuild the state from the topics and
                             compare it with Postgres
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from outbox.errors import PausewireError
from outbox.logs import configure_logging
from outbox.settings import get_settings
from outbox.store import get_store
from outbox.topics import ensure_topics
from outbox.tracing import configure_tracing
from resumer import metrics
from resumer.cache import HandleCache
from resumer.dlq import DeadLetterQueue
from resumer.effects import Effects
from resumer.health import serve
from resumer.locks import LockManager
from resumer.prefect_api import PrefectResumer
from resumer.rebuild import run_replay
from resumer.worker import Health, Worker

logger = logging.getLogger(__name__)

# The service name of the resumer's spans, unless OTEL_SERVICE_NAME says
# otherwise.
TRACING_SERVICE_NAME = "pausewire-resumer"


def run_worker() -> int:
    settings = get_settings()
    ensure_topics(settings)
    store = get_store()
    metrics.HANDLE_STATISTICS.watch(store.pool)
    if settings.connect_url:
        metrics.CONNECTOR_STATUS.watch(settings.connect_url, settings.connector_name)
    health = Health()
    server = serve(health, settings.metrics_port)
    worker = Worker(
        settings,
        effects=Effects(store, settings.crash_point),
        cache=HandleCache(store.pool, settings.redis_url),
        locks=LockManager.from_settings(settings),
        prefect=PrefectResumer(),
        dlq=DeadLetterQueue.from_settings(settings),
        health=health,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info(
            "Received %s; finishing in-flight work", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run(stop)
    finally:
        server.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resumer")
    parser.add_argument("command", nargs="?", default="run", choices=["run", "replay"])
    args = parser.parse_args(argv)
    configure_logging()
    configure_tracing(TRACING_SERVICE_NAME)
    try:
        if args.command == "replay":
            return run_replay(get_settings())
        return run_worker()
    except PausewireError as exc:
        logger.error("resumer: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
