"""A Redlock around each resume, so one worker at a time resumes a wait.

The algorithm is pottery's Redlock: a random token set with SET NX PX on
every master, held when a quorum (N/2 + 1) agreed within the TTL less the
clock drift, released and extended by Lua scripts that compare the token
first, so a worker never frees or prolongs a lock that is no longer its.
Three things pottery does differently from what a resume needs are
handled here:

- Attempts: pottery's blocking acquire retries until a deadline with
  random pauses. A resume needs a bounded answer (3 attempts, 200 ms
  apart), so each attempt is non-blocking and tenacity spaces them.
- Renewal: pottery extends only when asked, a fixed number of times. A
  thread extends the lock every TTL/3 while the body runs, without a
  limit: a resume still running must stay exclusive, and one that dies
  takes its thread along, so the lock then lapses after one TTL.
- Key: pottery puts its own namespace before every key; a subclass sets
  it so the key is `pausewire:lock:{correlation_id}`.

The lock is a guard against wasted and racing Prefect calls, not the only
one: the PAUSED -> RESUMED compare-and-set in Postgres still decides which
resume counts, so a lock lost to a long pause cannot apply an answer twice.

pottery logs each master that fails to answer with a traceback, on its
own logger ("pottery"); set that logger's level to quiet a known outage.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import ClassVar

from pottery import ExtendUnlockedLock, Redlock, ReleaseUnlockedLock, TooManyExtensions
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_result,
    stop_after_attempt,
    wait_fixed,
)

from outbox.errors import ConfigurationError, LockNotAcquiredError
from outbox.settings import Settings, get_settings
from resumer.cache import connect_redis
from resumer.metrics import LOCK_FAILURES, LOCK_WAIT_SECONDS, LOCK_WAITS

logger = logging.getLogger(__name__)


class _ResumeRedlock(Redlock):
    # Invariant: with the correlation id as key, the lock lives at
    # `pausewire:lock:{correlation_id}`. Workers that disagree on it do not
    # exclude each other.
    _KEY_PREFIX: ClassVar[str] = "pausewire:lock"


class _Renewal:
    """Extends a held lock every `interval_seconds` until stopped."""

    def __init__(
        self, redlock: _ResumeRedlock, correlation_id: str, interval_seconds: float
    ) -> None:
        self._redlock = redlock
        self._correlation_id = correlation_id
        self._interval_seconds = interval_seconds
        self._stop = threading.Event()
        # A daemon, so a renewal stuck on a dead master never holds up exit.
        self._thread = threading.Thread(
            target=self._run, name=f"lock-renewal-{correlation_id}", daemon=True
        )

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        # Stop extending before the release, or an extension could land
        # after it; the token check makes that harmless, not intended.
        self._thread.join(timeout=self._interval_seconds + 1.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_seconds):
            try:
                self._redlock.extend()
            except (ExtendUnlockedLock, TooManyExtensions):
                logger.error(
                    "Lost the resume lock of correlation_id=%s while holding it; "
                    "the resume goes on, Postgres still rejects a second one",
                    self._correlation_id,
                )
                return


class LockManager:
    """Hands out resume locks backed by a quorum of Redis masters."""

    def __init__(
        self,
        redis_urls: Sequence[str],
        *,
        ttl_seconds: float = 30.0,
        retry_count: int = 3,
        retry_delay_seconds: float = 0.2,
        timeout_seconds: float = 0.2,
    ) -> None:
        # A master listed twice would count twice towards the quorum.
        urls = list(dict.fromkeys(redis_urls))
        if not urls:
            raise ConfigurationError("the resume lock needs at least one Redis URL")
        if retry_count < 1 or ttl_seconds <= 0:
            raise ConfigurationError("lock retry_count must be >= 1, ttl_seconds > 0")
        self._masters = [connect_redis(url, timeout_seconds) for url in urls]
        self._ttl_seconds = ttl_seconds
        self._retry_count = retry_count
        self._retry_delay_seconds = retry_delay_seconds

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> LockManager:
        settings = settings or get_settings()
        return cls(settings.redis_lock_urls, ttl_seconds=settings.lock_ttl_seconds)

    def close(self) -> None:
        for master in self._masters:
            master.close()

    @contextmanager
    def resume_lock(self, correlation_id: str) -> Iterator[None]:
        """Hold the resume lock of `correlation_id` while the body runs.

        Raises LockNotAcquiredError when no quorum granted it after the
        last attempt; the body has not run then.
        """
        redlock = _ResumeRedlock(
            key=correlation_id,
            masters=self._masters,
            auto_release_time=self._ttl_seconds,
            num_extensions=sys.maxsize,
        )
        self._acquire(redlock, correlation_id)
        try:
            with _Renewal(redlock, correlation_id, self._ttl_seconds / 3):
                yield
        finally:
            self._release(redlock, correlation_id)

    def _acquire(self, redlock: _ResumeRedlock, correlation_id: str) -> None:
        started = time.monotonic()
        retrying = Retrying(
            stop=stop_after_attempt(self._retry_count),
            wait=wait_fixed(self._retry_delay_seconds),
            retry=retry_if_result(lambda acquired: not acquired),
            before_sleep=_count_wait,
            retry_error_callback=lambda _state: False,
        )
        acquired: bool = retrying(redlock.acquire, blocking=False)
        LOCK_WAIT_SECONDS.observe(time.monotonic() - started)
        if not acquired:
            LOCK_FAILURES.inc()
            raise LockNotAcquiredError(correlation_id, self._retry_count)
        logger.debug("Holding the resume lock of correlation_id=%s", correlation_id)

    def _release(self, redlock: _ResumeRedlock, correlation_id: str) -> None:
        try:
            redlock.release()
        except ReleaseUnlockedLock:
            # It lapsed already: renewal failed, or too many masters are down.
            logger.warning(
                "Resume lock of correlation_id=%s was no longer held at release",
                correlation_id,
            )


def _count_wait(_state: RetryCallState) -> None:
    LOCK_WAITS.inc()
