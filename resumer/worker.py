"""The resumer's consumer loop: read, decide with the join, act, commit.

One consumer reads the handle change topic and the callback topic in one
group. Both are keyed by correlation id and have the same partition count,
and the range assignor hands partition N of both to the same member, so
one resumer sees both sides of every correlation id it owns. Each assigned
partition gets its own `Join`, rebuilt from the topics on assignment.

Per record: parse, decide, carry out the decisions, and only then let its
offset be committed. Resumes run in a small thread pool under a Redlock
lock per correlation id; their outcome comes back to this thread, the only
one that touches the joins.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext, SpanKind

from outbox import tracing
from outbox.errors import LockNotAcquiredError, PausewireError, StoreUnavailableError
from outbox.logs import log_context
from outbox.settings import Settings
from resumer import metrics
from resumer.cache import HandleCache
from resumer.dlq import DeadLetterQueue, ParsedCallback, parse_callback
from resumer.effects import Effects
from resumer.events import parse_handle_change, payload_problem
from resumer.join import (
    Action,
    DeadLetter,
    IgnoreDuplicate,
    Join,
    MarkFailed,
    Resume,
    RetryResume,
    SourcePosition,
    Store,
)
from resumer.locks import LockManager
from resumer.offsets import OffsetTracker
from resumer.prefect_api import Outcome, PrefectResumer, ResumeResult
from resumer.replay import (
    join_config,
    position_of,
    rebuild_partition,
    record_time,
    to_callback,
)

logger = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# The callback span's attribute naming what the join decided first, as the
# `decision` label of pausewire_callbacks_total does.
DECISION_ATTRIBUTE = "pausewire.callback.decision"

TICK_SECONDS = 1.0
COMMIT_SECONDS = 0.2
LAG_SECONDS = 5.0
SHUTDOWN_SECONDS = 30.0


@dataclass
class Health:
    """What /healthz reports: the loop is turning and owns partitions."""

    last_beat: float = field(default_factory=time.monotonic)
    assigned: bool = False

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    @property
    def live(self) -> bool:
        return time.monotonic() - self.last_beat < 30.0


@dataclass(frozen=True)
class _Finished:
    resume: Resume
    partition: int
    origin: SourcePosition | None
    result: ResumeResult


class Worker:
    """Consumes, decides and acts until `stop` is set."""

    def __init__(
        self,
        settings: Settings,
        *,
        effects: Effects,
        cache: HandleCache,
        locks: LockManager,
        prefect: PrefectResumer,
        dlq: DeadLetterQueue,
        health: Health | None = None,
    ) -> None:
        self.settings = settings
        self.effects = effects
        self.cache = cache
        self.locks = locks
        self.prefect = prefect
        self.dlq = dlq
        self.health = health or Health()
        self.config = join_config(settings)
        self.consumer = self._consumer()
        self.joins: dict[int, Join] = {}
        self.trackers: dict[tuple[str, int], OffsetTracker] = {}
        self.pool = ThreadPoolExecutor(
            settings.resume_concurrency, thread_name_prefix="resume"
        )
        self.finished: queue.SimpleQueue[_Finished] = queue.SimpleQueue()
        self.retries: list[tuple[float, int, int, Resume]] = []
        self.in_flight = 0
        self._received: dict[SourcePosition, datetime] = {}
        # The span of each callback's producer, kept from the callback's
        # arrival until its resume starts, to link the resume to it. Lost on
        # a restart: a resume rebuilt from the topics has no link.
        self._producers: dict[SourcePosition, SpanContext] = {}
        self._retry_seq = 0
        # Deferred attempts in a row per handle, for their back-off.
        self._deferrals: dict[str, int] = {}
        self._last = {"tick": 0.0, "commit": 0.0, "lag": 0.0}

    def _consumer(self) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap_servers,
                "group.id": self.settings.consumer_group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                # Range gives partition N of every topic to one member: the
                # join of the two co-partitioned topics depends on it.
                "partition.assignment.strategy": "range",
                "fetch.wait.max.ms": 10,
            }
        )

    # ---- the loop

    def run(self, stop: threading.Event) -> None:
        topics = [self.settings.handle_topic, self.settings.callback_topic]
        self.consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        logger.info(
            "Resumer consuming %s as group %s",
            ", ".join(topics),
            self.settings.consumer_group,
        )
        while not stop.is_set():
            self.step(0.05)
        self.shutdown()

    def step(self, poll_seconds: float) -> None:
        """One turn: a record, finished resumes, due retries, housekeeping."""
        message = self.consumer.poll(poll_seconds)
        if message is not None:
            self._consume(message)
        self._collect_finished()
        self._start_due_retries()
        self._housekeeping()
        self.health.beat()

    def shutdown(self) -> None:
        """Finish in-flight resumes, commit what is done, leave the group."""
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        while self.in_flight and time.monotonic() < deadline:
            self._collect_finished(block_seconds=0.1)
        self._commit()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.consumer.close()
        logger.info("Resumer stopped; %d resume(s) left in flight", self.in_flight)

    # ---- assignment

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = sorted({tp.partition for tp in partitions})
        callback_tps = [
            TopicPartition(self.settings.callback_topic, n) for n in numbers
        ]
        committed = {
            tp.partition: tp.offset
            for tp in consumer.committed(callback_tps, timeout=30)
        }
        positions: dict[tuple[str, int], int] = {}
        for number in numbers:
            rebuilt = rebuild_partition(
                self.settings,
                number,
                max(committed.get(number, -1), 0),
                validate=payload_problem,
                refill=self.cache.put,
                config=self.config,
            )
            self.joins[number] = rebuilt.join
            positions[(self.settings.handle_topic, number)] = rebuilt.handle_offset
            positions[(self.settings.callback_topic, number)] = rebuilt.callback_offset
        for tp in partitions:
            tp.offset = positions.get((tp.topic, tp.partition), tp.offset)
            self.trackers[(tp.topic, tp.partition)] = OffsetTracker()
        consumer.assign(partitions)
        self.health.assigned = True
        for number in numbers:
            for resume in self.joins[number].pending_resumes():
                self._start_resume(resume, number, None)
        logger.info("Assigned partition(s) %s", numbers)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Effects still running finish, but their partition is someone
        # else's now: commit what is done and forget the rest.
        self._commit()
        for tp in partitions:
            self.joins.pop(tp.partition, None)
            self.trackers.pop((tp.topic, tp.partition), None)
            # A partition read by another member now: its last lag here
            # would stay on /metrics, frozen, and could hold an alert.
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(tp.topic, str(tp.partition))
        self.health.assigned = bool(self.joins)
        logger.info(
            "Revoked partition(s) %s", sorted({p.partition for p in partitions})
        )

    # ---- records

    def _consume(self, message: Message) -> None:
        if message.error():
            logger.warning("Consumer error: %s", message.error())
            return
        origin = position_of(message)
        tracker = self.trackers.get((origin.topic, origin.partition))
        join = self.joins.get(origin.partition)
        if tracker is None or join is None:
            return
        tracker.begin(origin.offset)
        try:
            with self._record_scope(message, origin):
                if origin.topic == self.settings.handle_topic:
                    actions = self._on_change(join, message)
                else:
                    actions = self._on_callback(join, message)
                self._execute(actions, origin.partition, origin, message)
        finally:
            tracker.end(origin.offset)

    @contextmanager
    def _record_scope(self, message: Message, origin: SourcePosition) -> Iterator[None]:
        """Log ids around one record; a callback gets its consume span too.

        Both topics are keyed by correlation id. A callback's span continues
        its producer's trace when the record has a usable `traceparent`
        header, and starts a trace of its own otherwise.
        """
        key = message.key()
        correlation_id = key.decode("utf-8", "replace") if key else None
        with log_context(correlation_id=correlation_id):
            if origin.topic == self.settings.handle_topic:
                yield
                return
            producer = tracing.producer_span(message.headers())
            parent = (
                Context()
                if producer is None
                else trace.set_span_in_context(trace.NonRecordingSpan(producer))
            )
            with tracer.start_as_current_span(
                "pausewire.callback", context=parent, kind=SpanKind.CONSUMER
            ) as span:
                span.set_attributes(
                    tracing.messaging_attributes(
                        origin.topic, origin.partition, origin.offset
                    )
                )
                if correlation_id:
                    span.set_attribute(tracing.CORRELATION_ID, correlation_id)
                if producer is None:
                    logger.debug(
                        "Callback %s has no usable traceparent header; its "
                        "trace starts here",
                        origin,
                    )
                yield

    def _on_change(self, join: Join, message: Message) -> list[Action]:
        record = parse_handle_change(message.value())
        if record is None:
            return []
        if not record.change.deleted:
            self.cache.put(record.view, record.version)
        if record.created:
            metrics.HANDLES_CREATED.inc()
        if record.committed_at_ms:
            delay = time.time() - record.committed_at_ms / 1000
            metrics.CDC_DELAY.observe(max(delay, 0.0))
        return join.on_handle_change(record.change)

    def _on_callback(self, join: Join, message: Message) -> list[Action]:
        parsed = parse_callback(message.key(), message.value())
        source = position_of(message)
        if not isinstance(parsed, ParsedCallback):
            metrics.CALLBACKS.labels("rejected").inc()
            trace.get_current_span().set_attributes(
                {
                    DECISION_ATTRIBUTE: "rejected",
                    "pausewire.dlq.reason": parsed.reason.value,
                }
            )
            self.dlq.send(
                message.value(),
                message.key(),
                parsed.reason,
                source,
                detail=parsed.detail,
                correlation_id=parsed.correlation_id,
                headers=message.headers(),
            )
            return []
        callback = to_callback(parsed, message)
        self._received[source] = record_time(message)
        problem = payload_problem(self.cache.get(parsed.correlation_id), parsed.result)
        if problem is not None:
            actions = join.on_callback_invalid(callback, problem)
        else:
            actions = join.on_callback(callback, datetime.now(UTC))
        if actions:
            decision = type(actions[-1]).__name__
            metrics.CALLBACKS.labels(decision).inc()
            trace.get_current_span().set_attribute(DECISION_ATTRIBUTE, decision)
        producer = tracing.producer_span(message.headers(), parsed.traceparent)
        if producer is not None and any(isinstance(a, Resume | Store) for a in actions):
            self._producers[source] = producer
        return actions

    # ---- actions

    def _execute(
        self,
        actions: list[Action],
        partition: int,
        origin: SourcePosition | None,
        message: Message | None = None,
    ) -> None:
        for action in actions:
            match action:
                case Resume():
                    self._start_resume(action, partition, origin)
                case RetryResume(resume, after_seconds):
                    self._schedule(resume, partition, after_seconds)
                case Store():
                    self.effects.store_payload(action)
                case DeadLetter():
                    self._dead_letter(action, message)
                case MarkFailed():
                    self.effects.mark_failed(action)
                case IgnoreDuplicate():
                    logger.debug(
                        "Callback %s for correlation id %s needs nothing: %s",
                        action.source,
                        action.correlation_id,
                        action.reason,
                    )

    def _dead_letter(self, action: DeadLetter, message: Message | None) -> None:
        original = message is not None and action.source == position_of(message)
        if original and message is not None:
            value, key = message.value(), message.key()
            headers = message.headers()
        else:
            # Held for a while before it was given up: rebuild the record.
            body = {"correlation_id": action.correlation_id, "result": action.payload}
            value, key = json.dumps(body).encode(), action.correlation_id.encode()
            headers = None
        if action.source is not None:
            self._producers.pop(action.source, None)
        self.dlq.send(
            value,
            key,
            action.reason,
            action.source,
            detail=action.detail,
            correlation_id=action.correlation_id,
            headers=headers,
        )
        self.effects.forget_early(action)

    def _start_resume(
        self, resume: Resume, partition: int, origin: SourcePosition | None
    ) -> None:
        if origin is not None:
            tracker = self.trackers.get((origin.topic, origin.partition))
            if tracker is not None:
                tracker.hold(origin.offset)
        self.in_flight += 1
        producer = self._producers.get(resume.source) if resume.source else None
        future = self.pool.submit(self._resume, resume, producer)
        future.add_done_callback(_report(self.finished, resume, partition, origin))

    def _resume(self, resume: Resume, producer: SpanContext | None) -> ResumeResult:
        """In a pool thread: lock, resume in Prefect, mark RESUMED."""
        try:
            with (
                log_context(
                    correlation_id=resume.correlation_id,
                    flow_run_id=resume.flow_run_id,
                ),
                self.locks.resume_lock(resume.correlation_id),
            ):
                return self.effects.resume(resume, self.prefect, producer=producer)
        except (LockNotAcquiredError, StoreUnavailableError) as exc:
            return ResumeResult(Outcome.DEFERRED, str(exc))
        except PausewireError as exc:
            return ResumeResult(Outcome.RETRY, str(exc))

    def _collect_finished(self, block_seconds: float = 0.0) -> None:
        """Settles every finished resume; waits up to `block_seconds` for one."""
        try:
            done = (
                self.finished.get(timeout=block_seconds)
                if block_seconds
                else (self.finished.get_nowait())
            )
        except queue.Empty:
            return
        while True:
            self.in_flight -= 1
            self._settle(done)
            try:
                done = self.finished.get_nowait()
            except queue.Empty:
                return

    def _settle(self, done: _Finished) -> None:
        resume = done.resume
        with log_context(
            correlation_id=resume.correlation_id, flow_run_id=resume.flow_run_id
        ):
            self._settle_in_context(done)

    def _settle_in_context(self, done: _Finished) -> None:
        resume = done.resume
        join = self.joins.get(done.partition)
        if done.result.outcome is Outcome.DEFERRED:
            # The join still sees this resume in flight, and a rebuild brings
            # it back from the topics: the record may be committed meanwhile.
            self._defer(resume, done.partition, done.result.detail)
            actions: list[Action] = []
        elif done.result.outcome is Outcome.RETRY:
            self._deferrals.pop(resume.handle_id, None)
            metrics.RESUME_FAILURES.inc()
            logger.warning(
                "Resume of flow run %s for correlation id %s failed (attempt %d): %s",
                resume.flow_run_id,
                resume.correlation_id,
                resume.attempt,
                done.result.detail,
            )
            actions = (
                []
                if join is None
                else join.on_resume_failed(
                    resume.handle_id, done.result.detail, resume.attempt
                )
            )
        else:
            self._deferrals.pop(resume.handle_id, None)
            self._count_resumed(resume, done.result)
            actions = [] if join is None else join.on_resume_succeeded(resume.handle_id)
        if join is not None:
            self._execute(actions, done.partition, None)
        if done.origin is not None:
            tracker = self.trackers.get((done.origin.topic, done.origin.partition))
            if tracker is not None:
                tracker.end(done.origin.offset)

    def _defer(self, resume: Resume, partition: int, detail: str) -> None:
        metrics.RESUMES_DEFERRED.inc()
        deferrals = self._deferrals.get(resume.handle_id, 0) + 1
        self._deferrals[resume.handle_id] = deferrals
        after = self.config.backoff_seconds(deferrals)
        logger.warning(
            "Resume of flow run %s for correlation id %s could not start: %s; "
            "trying again in %g s (not counted as a failed attempt)",
            resume.flow_run_id,
            resume.correlation_id,
            detail,
            after,
        )
        self._schedule(resume, partition, after)

    def _schedule(self, resume: Resume, partition: int, after_seconds: float) -> None:
        self._retry_seq += 1
        due = time.monotonic() + after_seconds
        heapq.heappush(self.retries, (due, self._retry_seq, partition, resume))

    def _count_resumed(self, resume: Resume, result: ResumeResult) -> None:
        received = self._received.pop(resume.source, None) if resume.source else None
        if resume.source is not None:
            self._producers.pop(resume.source, None)
        if result.outcome is Outcome.RESUMED:
            metrics.HANDLES_RESUMED.inc()
            if received is not None and result.answered_at:
                # From the record's timestamp to Prefect's answer, measured
                # in the resume's thread, not when this loop got to it.
                latency = result.answered_at - received.timestamp()
                metrics.RESUME_LATENCY.observe(max(latency, 0.0))
        logger.info(
            "Resumed flow run %s for correlation id %s (%s)",
            resume.flow_run_id,
            resume.correlation_id,
            result.outcome.value,
        )

    def _start_due_retries(self) -> None:
        now = time.monotonic()
        while self.retries and self.retries[0][0] <= now:
            _, _, partition, resume = heapq.heappop(self.retries)
            if partition in self.joins:
                self._start_resume(resume, partition, None)
            else:
                # Revoked meanwhile: its new owner rebuilds the resume.
                self._deferrals.pop(resume.handle_id, None)

    # ---- housekeeping

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last["tick"] >= TICK_SECONDS:
            self._last["tick"] = now
            for partition, join in list(self.joins.items()):
                self._execute(join.on_tick(datetime.now(UTC)), partition, None)
        if now - self._last["commit"] >= COMMIT_SECONDS:
            self._last["commit"] = now
            self._commit()
        if now - self._last["lag"] >= LAG_SECONDS:
            self._last["lag"] = now
            self._measure_lag()

    def _commit(self) -> None:
        offsets = []
        for (topic, partition), tracker in self.trackers.items():
            offset = tracker.needs_commit()
            if offset is not None:
                offsets.append((tracker, TopicPartition(topic, partition, offset)))
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=[tp for _, tp in offsets], asynchronous=False)
        except KafkaException as exc:
            logger.warning("Offset commit failed, retrying on the next turn: %s", exc)
            return
        for tracker, tp in offsets:
            tracker.committed = tp.offset

    def _measure_lag(self) -> None:
        assigned = list(self.trackers)
        if not assigned:
            return
        positions = self.consumer.position([TopicPartition(t, p) for t, p in assigned])
        for tp in positions:
            try:
                _, high = self.consumer.get_watermark_offsets(tp, timeout=1)
            except KafkaException:
                continue
            lag = max(high - tp.offset, 0) if tp.offset >= 0 else high
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)


def _report(
    finished: queue.SimpleQueue[_Finished],
    resume: Resume,
    partition: int,
    origin: SourcePosition | None,
) -> Callable[[Future[ResumeResult]], None]:
    def deliver(future: Future[ResumeResult]) -> None:
        try:
            result = future.result()
        except Exception as exc:
            logger.exception(
                "Resume of correlation id %s crashed", resume.correlation_id
            )
            result = ResumeResult(Outcome.RETRY, f"{type(exc).__name__}: {exc}")
        finished.put(_Finished(resume, partition, origin, result))

    return deliver
