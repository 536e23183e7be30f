"""Wakes a waiting flow when its handle's status changes, through LISTEN.

One listening connection per process serves every wait in it: the trigger
of sql/006_notify.sql sends "<handle id>:<status>" on one channel, and the
watcher hands each notification to the wait of that handle. A wait must
subscribe before it reads the handle's status, so that a change between the
read and the wait still reaches it.

If the listening connection drops, notifications sent meanwhile are lost;
on reconnecting the watcher tells every wait to read its handle again, and
the waits keep a slow Prefect poll as a last safety net.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import psycopg

from outbox.settings import get_settings

logger = logging.getLogger(__name__)

# Must match the channel of notify_handle_status() in sql/006_notify.sql.
CHANNEL = "pausewire_handle_status"
# Sent to every subscription after a reconnect: "read your handle again".
RECHECK = "RECHECK"


class Subscription:
    """The notifications of one handle, in the order they were sent."""

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[str] = queue.SimpleQueue()

    def deliver(self, status: str) -> None:
        self._inbox.put(status)

    def wait(self, timeout_s: float) -> str | None:
        """The next status (or RECHECK), or None when the timeout passed."""
        try:
            return self._inbox.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None


class StatusWatcher:
    """A daemon thread that LISTENs and dispatches to subscriptions."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._subscriptions: dict[uuid.UUID, list[Subscription]] = {}
        self._lock = threading.Lock()
        self._listening = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="pausewire-watcher", daemon=True
        )
        self._thread.start()

    @contextmanager
    def subscribe(
        self, handle_id: uuid.UUID, ready_timeout_s: float = 10.0
    ) -> Iterator[Subscription]:
        """Notifications for one handle while the block runs."""
        subscription = Subscription()
        with self._lock:
            self._subscriptions.setdefault(handle_id, []).append(subscription)
        # Without a live LISTEN, a change could slip past before the caller's
        # first read; the safety poll would still catch it, only slower.
        if not self._listening.wait(ready_timeout_s):
            logger.warning(
                "Handle %s waits without a LISTEN connection yet; relying on "
                "the safety poll until it is back",
                handle_id,
            )
        try:
            yield subscription
        finally:
            with self._lock:
                remaining = self._subscriptions.get(handle_id, [])
                remaining.remove(subscription)
                if not remaining:
                    self._subscriptions.pop(handle_id, None)

    def _run(self) -> None:
        backoff_s = 0.5
        while True:
            try:
                self._listen()
            except psycopg.Error as exc:
                self._listening.clear()
                logger.warning(
                    "LISTEN connection lost (%s); reconnecting in %.1f s",
                    exc,
                    backoff_s,
                )
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 10.0)

    def _listen(self) -> None:
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._listening.set()
            self._broadcast(RECHECK)
            # A finite timeout lets the generator notice a dead connection.
            while True:
                for notify in conn.notifies(timeout=5.0):
                    self._dispatch(notify.payload)
                conn.execute("SELECT 1")

    def _dispatch(self, payload: str) -> None:
        handle_text, _, status = payload.partition(":")
        try:
            handle_id = uuid.UUID(handle_text)
        except ValueError:
            logger.warning("Ignoring a malformed notification %r", payload)
            return
        with self._lock:
            subscriptions = list(self._subscriptions.get(handle_id, []))
        for subscription in subscriptions:
            subscription.deliver(status)

    def _broadcast(self, status: str) -> None:
        with self._lock:
            everyone = [s for subs in self._subscriptions.values() for s in subs]
        for subscription in everyone:
            subscription.deliver(status)


@lru_cache(maxsize=1)
def get_watcher() -> StatusWatcher:
    """The process-wide watcher, started on first use."""
    return StatusWatcher(get_settings().database_url.get_secret_value())
