"""Tests of the resumer's join, the state machine in resumer/join.py.

The example tests walk each ordering of callback and handle that the
resumer meets in production. The property test drives the machine through
a simulated world: a handle table whose payload is first-writer-wins, a
Debezium feed that lags behind the table and redelivers, a callback topic
with duplicates and redeliveries, a clock, and a worker that carries out
every action, sometimes fails, and sometimes crashes and rebuilds the
machine from its inputs. After every step and at the end it checks that no
handle is resumed twice, that the first payload of each wait wins, that
every callback is accounted for exactly once, and that replaying the inputs
rebuilds the same state.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox.models import HandleStatus
from resumer.join import (
    Action,
    Callback,
    CallbackInvalid,
    CallbackReceived,
    DeadLetter,
    DeadLetterReason,
    DuplicateReason,
    Event,
    HandleChange,
    IgnoreDuplicate,
    Join,
    JoinConfig,
    MarkFailed,
    Resume,
    ResumeFailed,
    ResumeSucceeded,
    RetryResume,
    SourcePosition,
    Store,
    Tick,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SCHEMA = {"type": "object", "required": ["user_response"]}


def marked_bad(schema: dict[str, Any], payload: dict[str, Any]) -> str | None:
    """A stand-in for the schema check: payloads marked bad fail it."""
    assert schema == SCHEMA, "checked against another schema than the handle's"
    return "user_response is not a string" if payload.get("bad") else None


CONFIG = JoinConfig(grace_seconds=120.0, payload_check=marked_bad)
TTL = timedelta(seconds=600)
TOPIC = "genesis.callbacks"
CID = "order-1"

PENDING = HandleStatus.PENDING_PAUSE
PAUSED = HandleStatus.PAUSED
RESUMED = HandleStatus.RESUMED


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def pos(offset: int, partition: int = 0) -> SourcePosition:
    return SourcePosition(TOPIC, partition, offset)


def change(
    handle_id: str = "h1",
    status: HandleStatus = PENDING,
    *,
    cid: str = CID,
    payload: dict[str, Any] | None = None,
    expires_at: datetime = T0 + TTL,
    deleted: bool = False,
) -> HandleChange:
    return HandleChange(
        handle_id,
        cid,
        f"run-{handle_id}",
        status,
        payload,
        expires_at,
        deleted,
        SCHEMA,
    )


def callback(
    offset: int, answer: str = "yes", *, cid: str = CID, bad: bool = False
) -> Callback:
    payload: dict[str, Any] = {"user_response": answer}
    if bad:
        payload["bad"] = True
    return Callback(cid, payload, pos(offset))


def resume_of(cb: Callback, handle_id: str = "h1", attempt: int = 1) -> Resume:
    return Resume(
        cb.correlation_id, handle_id, f"run-{handle_id}", cb.payload, cb.source, attempt
    )


def ignored(offset: int, reason: DuplicateReason) -> IgnoreDuplicate:
    return IgnoreDuplicate(CID, reason, pos(offset))


def dead(cb: Callback, reason: DeadLetterReason, detail: str = "") -> DeadLetter:
    return DeadLetter(cb.correlation_id, reason, cb.payload, cb.source, detail)


# ── one ordering at a time ──────────────────────────────────────────────────


def test_callback_before_handle_exists_is_parked_then_applied_when_paused() -> None:
    join, first = Join(CONFIG), callback(1, "yes")

    assert join.on_callback(first, at(0)) == [Store(CID, None, first.payload, pos(1))]
    # The handle appears: the parked payload moves onto its row.
    assert join.on_handle_change(change("h1", PENDING)) == [
        Store(CID, "h1", first.payload, pos(1))
    ]
    assert join.on_callback(callback(2, "no"), at(1)) == [
        ignored(2, DuplicateReason.PAYLOAD_HELD)
    ]
    assert join.on_tick(at(600)) == [], "an attached payload must not age out"
    assert join.on_handle_change(change("h1", PENDING, payload=first.payload)) == []
    assert join.on_handle_change(change("h1", PAUSED)) == [resume_of(first)]


def test_early_callbacks_are_all_kept_and_the_first_valid_one_wins() -> None:
    join = Join(CONFIG)
    bad, good, later = callback(1, bad=True), callback(2, "yes"), callback(3, "no")

    for cb in (bad, good, later):
        assert join.on_callback(cb, at(cb.source.offset)) == [
            Store(CID, None, cb.payload, cb.source)
        ], "an early callback that cannot be checked yet turned another away"
    assert join.on_handle_change(change("h1", PENDING)) == [
        dead(bad, DeadLetterReason.INVALID_PAYLOAD, "user_response is not a string"),
        ignored(3, DuplicateReason.PAYLOAD_HELD),
        Store(CID, "h1", good.payload, good.source),
    ]
    assert join.on_handle_change(change("h1", PAUSED)) == [resume_of(good)]


def test_an_invalid_early_callback_leaves_the_wait_open_for_a_valid_one() -> None:
    join, bad, good = Join(CONFIG), callback(1, bad=True), callback(2)
    join.on_callback(bad, at(0))

    assert join.on_handle_change(change("h1", PAUSED)) == [
        dead(bad, DeadLetterReason.INVALID_PAYLOAD, "user_response is not a string")
    ]
    assert join.on_callback(good, at(1)) == [resume_of(good)]


def test_early_callbacks_all_age_out_when_no_handle_appears() -> None:
    join, first, second = Join(CONFIG), callback(1, "a"), callback(2, "b")
    join.on_callback(first, at(0))
    join.on_callback(second, at(10))

    assert join.on_tick(at(120)) == [
        dead(first, DeadLetterReason.UNKNOWN_CORRELATION_ID),
        dead(second, DeadLetterReason.UNKNOWN_CORRELATION_ID),
    ]


def test_a_replay_that_cannot_check_a_callback_yet_ends_where_the_live_one_did() -> (
    None
):
    # Live, the worker found the handle in Postgres before its change event
    # and dead-lettered the callback at once. A rebuild reads the callback
    # before that event, so it cannot check it: the handle does, later.
    bad, good = callback(1, bad=True), callback(2)
    live = Join(CONFIG)
    live.on_callback_invalid(bad, "user_response is not a string")
    live.on_callback(good, at(1))
    live.on_handle_change(change("h1", PENDING))

    rebuilt = Join.replay(
        [
            CallbackReceived(bad, at(0)),
            CallbackReceived(good, at(1)),
            change("h1", PENDING),
        ],
        CONFIG,
    )
    assert rebuilt.snapshot() == live.snapshot()


def test_callback_while_pending_pause_is_stored_on_the_handle() -> None:
    join, first = Join(CONFIG), callback(1)
    join.on_handle_change(change("h1", PENDING))

    assert join.on_callback(first, at(0)) == [Store(CID, "h1", first.payload, pos(1))]
    # The row echoes the stored payload back through the change log.
    assert join.on_handle_change(change("h1", PENDING, payload=first.payload)) == []
    paused = change("h1", PAUSED, payload=first.payload)
    assert join.on_handle_change(paused) == [resume_of(first)]
    assert join.on_handle_change(paused) == [], "a redelivered PAUSED resumed twice"


def test_callback_after_paused_resumes_at_once() -> None:
    join, first = Join(CONFIG), callback(1)
    join.on_handle_change(change("h1", PENDING))
    join.on_handle_change(change("h1", PAUSED))

    assert join.on_callback(first, at(0)) == [resume_of(first)]
    assert join.on_callback(callback(2, "no"), at(1)) == [
        ignored(2, DuplicateReason.PAYLOAD_HELD)
    ]


def test_duplicate_after_resumed_is_ignored_without_resuming_again() -> None:
    join = Join(CONFIG)
    join.on_handle_change(change("h1", PAUSED))
    join.on_callback(callback(1), at(0))

    assert join.on_resume_succeeded("h1") == []
    assert join.on_callback(callback(2), at(1)) == [
        ignored(2, DuplicateReason.ALREADY_RESUMED)
    ]
    assert join.on_handle_change(change("h1", RESUMED)) == []
    assert join.on_handle_change(change("h1", PAUSED)) == [], "old event regressed"
    assert join.on_callback(callback(3), at(2)) == [
        ignored(3, DuplicateReason.ALREADY_RESUMED)
    ]


def test_redelivered_callback_position_changes_nothing() -> None:
    join, first = Join(CONFIG), callback(7)
    join.on_handle_change(change("h1", PENDING))
    join.on_callback(first, at(0))
    before = join.snapshot()

    assert join.on_callback(first, at(1)) == [ignored(7, DuplicateReason.REDELIVERED)]
    assert join.snapshot() == before


def test_callback_for_expired_handle_is_dead_lettered() -> None:
    join, late = Join(CONFIG), callback(1)
    join.on_handle_change(change("h1", PENDING))
    join.on_handle_change(change("h1", HandleStatus.EXPIRED))

    assert join.on_callback(late, at(0)) == [
        dead(late, DeadLetterReason.HANDLE_EXPIRED)
    ]


def test_callback_past_expiry_is_dead_lettered_before_cleanup_runs() -> None:
    join, late = Join(CONFIG), callback(1)
    join.on_handle_change(change("h1", PAUSED, expires_at=at(60)))

    assert join.on_callback(late, at(60)) == [
        dead(late, DeadLetterReason.HANDLE_EXPIRED)
    ]


def test_held_payload_is_dead_lettered_when_its_handle_fails_to_pause() -> None:
    join, first = Join(CONFIG), callback(1)
    join.on_handle_change(change("h1", PENDING))
    join.on_callback(first, at(0))

    assert join.on_handle_change(change("h1", HandleStatus.PAUSE_FAILED)) == [
        dead(first, DeadLetterReason.PAUSE_FAILED)
    ]


def test_held_payload_is_dead_lettered_when_its_handle_is_deleted() -> None:
    join, first = Join(CONFIG), callback(1)
    join.on_handle_change(change("h1", PENDING))
    join.on_callback(first, at(0))

    assert join.on_handle_change(change("h1", PENDING, deleted=True)) == [
        dead(first, DeadLetterReason.HANDLE_DELETED)
    ]


def test_unknown_correlation_id_is_dead_lettered_after_grace() -> None:
    join, lost = Join(CONFIG), callback(1)
    join.on_callback(lost, at(0))

    assert join.on_tick(at(119)) == []
    assert join.on_tick(at(120)) == [
        dead(lost, DeadLetterReason.UNKNOWN_CORRELATION_ID)
    ]
    assert join.on_tick(at(500)) == [], "dead-lettered twice"
    join.on_handle_change(change("h1", PENDING))
    assert join.on_handle_change(change("h1", PAUSED)) == [], "dead payload resumed"


def test_next_callback_past_grace_dead_letters_the_parked_one_first() -> None:
    join, lost, fresh = Join(CONFIG), callback(1, "old"), callback(2, "new")
    join.on_callback(lost, at(0))

    assert join.on_callback(fresh, at(200)) == [
        dead(lost, DeadLetterReason.UNKNOWN_CORRELATION_ID),
        Store(CID, None, fresh.payload, fresh.source),
    ]


def test_new_handle_after_an_expired_one_takes_new_callbacks() -> None:
    join, answer = Join(CONFIG), callback(2)
    join.on_handle_change(change("h1", PENDING))
    join.on_handle_change(change("h1", HandleStatus.EXPIRED))
    join.on_handle_change(change("h2", PENDING))
    join.on_handle_change(change("h2", PAUSED))

    assert join.on_callback(answer, at(0)) == [resume_of(answer, "h2")]
    # A redelivered event of the old handle must not take the wait back.
    assert join.on_handle_change(change("h1", PENDING)) == []


def test_snapshot_listing_an_old_finished_handle_last_keeps_the_active_one() -> None:
    join, answer = Join(CONFIG), callback(1)
    join.on_handle_change(change("h2", PAUSED))
    join.on_handle_change(change("h1", HandleStatus.EXPIRED))

    assert join.on_callback(answer, at(0)) == [resume_of(answer, "h2")]


def test_twelve_failed_attempts_mark_the_handle_failed() -> None:
    join, first = Join(CONFIG), callback(1)
    join.on_handle_change(change("h1", PAUSED))
    join.on_callback(first, at(0))

    waits = []
    for attempt in range(1, 12):
        (retry,) = join.on_resume_failed("h1", "prefect answered 503", attempt)
        assert isinstance(retry, RetryResume)
        assert retry.resume == resume_of(first, attempt=attempt + 1)
        waits.append(retry.after_seconds)
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60]

    assert join.on_resume_failed("h1", "prefect answered 503", 12) == [
        MarkFailed(CID, "h1", "run-h1", "prefect answered 503"),
        dead(first, DeadLetterReason.RESUME_FAILED, "prefect answered 503"),
    ]
    assert join.on_callback(callback(2), at(1)) == [
        dead(callback(2), DeadLetterReason.RESUME_FAILED)
    ], "a callback after giving up resumed the handle again"
    assert join.on_handle_change(change("h1", HandleStatus.RESUME_FAILED)) == []


def test_repeated_or_stale_failure_reports_schedule_nothing() -> None:
    join = Join(CONFIG)
    join.on_handle_change(change("h1", PAUSED))
    join.on_callback(callback(1), at(0))

    assert len(join.on_resume_failed("h1", "timeout", 1)) == 1
    assert join.on_resume_failed("h1", "timeout", 1) == [], "two retries scheduled"
    assert join.on_resume_failed("h1", "timeout", 5) == []
    assert join.on_resume_failed("unknown-handle", "timeout", 1) == []


def test_resume_in_flight_when_handle_expires_is_dead_lettered_once() -> None:
    join, first = Join(CONFIG), callback(1)
    join.on_handle_change(change("h1", PAUSED))
    join.on_callback(first, at(0))

    assert join.on_handle_change(change("h1", HandleStatus.EXPIRED)) == [
        dead(
            first,
            DeadLetterReason.HANDLE_EXPIRED,
            "handle became EXPIRED while resuming",
        )
    ]
    assert join.on_resume_failed("h1", "not paused", 1) == [], "stale report acted on"


def test_held_payload_is_a_duplicate_when_the_log_shows_another_resume() -> None:
    # Another resumer instance (a zombie after a rebalance) got there first.
    join, first = Join(CONFIG), callback(1)
    join.on_handle_change(change("h1", PENDING))
    join.on_callback(first, at(0))

    assert join.on_handle_change(change("h1", RESUMED)) == [
        ignored(1, DuplicateReason.ALREADY_RESUMED)
    ]


def test_invalid_callback_is_dead_lettered_once() -> None:
    join, bad = Join(CONFIG), callback(1)

    assert join.on_callback_invalid(bad, "user_response missing") == [
        dead(bad, DeadLetterReason.INVALID_PAYLOAD, "user_response missing")
    ]
    assert join.on_callback_invalid(bad, "user_response missing") == [
        ignored(1, DuplicateReason.REDELIVERED)
    ]


def test_payload_found_only_on_the_row_is_resumed_without_a_source() -> None:
    join = Join(CONFIG)
    row_payload = {"user_response": "from the row"}

    assert join.on_handle_change(change("h1", PAUSED, payload=row_payload)) == [
        Resume(CID, "h1", "run-h1", row_payload, None)
    ]


def test_replay_rebuilds_state_and_the_resume_in_flight() -> None:
    events: list[Event] = [
        change("h1", PENDING),
        CallbackReceived(callback(1), at(0)),
        change("h1", PAUSED),
        ResumeFailed("h1", "timeout", 1),
    ]
    join = Join(CONFIG)
    for event in events:
        join.apply(event)

    rebuilt = Join.replay(events, CONFIG)
    assert rebuilt.snapshot() == join.snapshot()
    assert rebuilt.pending_resumes() == [resume_of(callback(1), attempt=2)]


def test_config_rejects_values_that_would_never_resume() -> None:
    with pytest.raises(ValueError, match="max_resume_attempts"):
        JoinConfig(max_resume_attempts=0)


# ── random interleavings in a simulated world ───────────────────────────────

CIDS = ("order-a", "order-b", "order-c")
ACTIVE = {PENDING, PAUSED}
STAGES = {"held", "in_flight", "applied", "ignored", "dead"}


@dataclass
class Row:
    """One row of flow_resume_handles as Postgres holds it."""

    handle_id: str
    correlation_id: str
    seq: int
    expires_at: datetime
    status: HandleStatus = PENDING
    resume_payload: dict[str, Any] | None = None
    deleted: bool = False

    @property
    def active(self) -> bool:
        return not self.deleted and self.status in ACTIVE

    def change(self) -> HandleChange:
        return HandleChange(
            self.handle_id,
            self.correlation_id,
            f"run-{self.handle_id}",
            self.status,
            self.resume_payload,
            self.expires_at,
            self.deleted,
            SCHEMA,
        )


def source_of(action: Action) -> SourcePosition | None:
    if isinstance(action, RetryResume):
        return action.resume.source
    if isinstance(action, MarkFailed):
        return None
    return action.source


class Ledger:
    """Where each callback stands, checked at every decision.

    held -> held (moved onto its handle's row), held -> in_flight ->
    applied, held -> ignored (another payload won, or the wait was resumed)
    and held/in_flight -> dead are the only moves after the first decision;
    anything else is a lost or doubled answer.
    """

    def __init__(self) -> None:
        self.stage: dict[SourcePosition, str] = {}
        self.first: dict[SourcePosition, Action] = {}
        self.resumes: dict[str, list[Resume]] = defaultdict(list)

    def check(
        self,
        event: Event,
        actions: list[Action],
        fresh: SourcePosition | None,
        redelivered: SourcePosition | None,
    ) -> None:
        sources = [source_of(a) for a in actions]
        if fresh is not None:
            assert sources.count(fresh) == 1, "a new callback got no or two decisions"
        if redelivered is not None:
            mine = [a for a in actions if source_of(a) == redelivered]
            assert len(mine) == 1, "a redelivered callback got no or two answers"
            assert isinstance(mine[0], IgnoreDuplicate)
            assert mine[0].reason is DuplicateReason.REDELIVERED, (
                "a redelivered callback took effect again"
            )
        for action in actions:
            if redelivered is None or source_of(action) != redelivered:
                self.track(event, action, fresh)

    def track(self, event: Event, action: Action, fresh: SourcePosition | None) -> None:
        match action:
            case MarkFailed():
                assert event == ResumeFailed(
                    action.handle_id, action.error, CONFIG.max_resume_attempts
                ), "gave up before the last attempt"
            case RetryResume(resume=r):
                assert isinstance(event, ResumeFailed), "retry without a failure"
                assert (event.handle_id, event.attempt + 1) == (r.handle_id, r.attempt)
                self.move(r.source, fresh, {"in_flight"}, "in_flight", action)
            case Resume():
                self.resumes[action.handle_id].append(action)
                assert len(self.resumes[action.handle_id]) == 1, "handle resumed twice"
                self.move(action.source, fresh, {"held"}, "in_flight", action)
            case Store():
                assert (
                    action.source != fresh
                    or action.handle_id is None
                    or (isinstance(event, CallbackReceived))
                ), "a fresh payload was stored by a handle change"
                self.move(action.source, fresh, {"held"}, "held", action)
            case IgnoreDuplicate(
                reason=DuplicateReason.ALREADY_RESUMED | DuplicateReason.PAYLOAD_HELD
            ):
                self.move(action.source, fresh, {"held"}, "ignored", action)
            case IgnoreDuplicate():
                self.move(action.source, fresh, set(), "ignored", action)
            case DeadLetter():
                self.move(action.source, fresh, {"held", "in_flight"}, "dead", action)

    def move(
        self,
        source: SourcePosition | None,
        fresh: SourcePosition | None,
        allowed: set[str],
        to: str,
        action: Action,
    ) -> None:
        assert source is not None, "every payload in this world came from a callback"
        if source == fresh and source not in self.stage:
            self.first[source] = action
        else:
            assert self.stage.get(source) in allowed, (
                f"{source} moved from {self.stage.get(source)} to {to}"
            )
        self.stage[source] = to

    def applied(self, resume: Resume) -> None:
        assert resume.source is not None
        assert self.stage[resume.source] == "in_flight", "applied a settled payload"
        self.stage[resume.source] = "applied"


class Waits:
    """Which wait each valid callback belongs to, from delivery order alone.

    A callback belongs to the newest handle delivered for its correlation id
    when it arrives; one that arrives before any belongs to the first handle
    delivered after it, unless it was dead-lettered for want of one.
    """

    def __init__(self) -> None:
        self.newest: dict[str, tuple[int, str]] = {}
        self.early: dict[str, list[SourcePosition]] = defaultdict(list)
        self.members: dict[str, list[SourcePosition]] = defaultdict(list)

    def handle_delivered(self, row: Row) -> None:
        cid = row.correlation_id
        if cid in self.newest and self.newest[cid][0] >= row.seq:
            return
        self.newest[cid] = (row.seq, row.handle_id)
        self.members[row.handle_id].extend(self.early.pop(cid, []))

    def arrived(self, cb: Callback) -> None:
        newest = self.newest.get(cb.correlation_id)
        if newest is None:
            self.early[cb.correlation_id].append(cb.source)
        else:
            self.members[newest[1]].append(cb.source)

    def early_dead(self, correlation_id: str) -> None:
        self.early.pop(correlation_id, None)


class World:
    """Postgres, Debezium, the callback topic, Prefect and the worker."""

    def __init__(self) -> None:
        self.join = Join(CONFIG)
        self.now = T0
        self.log: list[Event] = []
        self.decisions: list[list[Action]] = []
        self.rows: dict[str, Row] = {}
        self.seq = itertools.count(1)
        self.change_feed: deque[HandleChange] = deque()
        self.delivered: list[HandleChange] = []
        self.callbacks: list[CallbackReceived | CallbackInvalid] = []
        self.payloads: dict[SourcePosition, dict[str, Any]] = {}
        # Callbacks whose payload fails the waiting flow's schema.
        self.bad: set[SourcePosition] = set()
        self.next_offset: Counter[int] = Counter()
        self.jobs: deque[Resume] = deque()
        self.prefect: dict[str, list[Resume]] = defaultdict(list)
        self.ledger = Ledger()
        self.waits = Waits()

    # The outside world: a flow pausing, Prefect and cleanup moving rows.

    def create(self, arg: int) -> None:
        cid = CIDS[arg % len(CIDS)]
        if self.active_row(cid) is None:
            seq = next(self.seq)
            row = Row(f"h{seq}", cid, seq, self.now + TTL)
            self.rows[row.handle_id] = row
            self.commit(row)

    def pause(self, arg: int) -> None:
        self.move_row(arg, {PENDING}, PAUSED)

    def pause_fail(self, arg: int) -> None:
        self.move_row(arg, {PENDING}, HandleStatus.PAUSE_FAILED)

    def expire(self, arg: int) -> None:
        self.move_row(arg, ACTIVE, HandleStatus.EXPIRED)

    def delete(self, arg: int) -> None:
        cid = CIDS[arg % len(CIDS)]
        done = [r for r in self.rows.values() if r.correlation_id == cid]
        done = [r for r in done if not r.active and not r.deleted]
        if done:
            done[0].deleted = True
            self.commit(done[0])

    def tick(self, arg: int) -> None:
        self.now += timedelta(seconds=arg % 240)
        self.feed(Tick(self.now))

    # The two topics.

    def deliver(self, arg: int) -> None:
        for _ in range(arg % 3 + 1):
            if self.change_feed:
                event = self.change_feed.popleft()
                self.delivered.append(event)
                self.waits.handle_delivered(self.rows[event.handle_id])
                self.feed(event)

    def redeliver_change(self, arg: int) -> None:
        if self.delivered:
            self.feed(self.delivered[arg % len(self.delivered)])

    def callback(self, arg: int) -> None:
        cb = self.new_callback(arg)
        self.callbacks.append(CallbackReceived(cb, self.now))
        actions = self.feed(CallbackReceived(cb, self.now), fresh=cb.source)
        self.waits.arrived(cb)
        for action in actions:
            if isinstance(action, Store | Resume) and action.handle_id is not None:
                expires_at = self.rows[action.handle_id].expires_at
                assert self.now < expires_at, "kept a payload for an expired wait"

    def invalid(self, arg: int) -> None:
        """A payload failing the schema of a wait the worker can look up."""
        cb = self.new_callback(arg, bad=True)
        self.bad.add(cb.source)
        if self.active_row(cb.correlation_id) is None:
            # No wait to check it against yet: the join gets it as it is.
            event: CallbackReceived | CallbackInvalid = CallbackReceived(cb, self.now)
            self.waits.arrived(cb)
        else:
            event = CallbackInvalid(cb, "result fails the schema")
        self.callbacks.append(event)
        self.feed(event, fresh=cb.source)

    def redeliver_callback(self, arg: int) -> None:
        if not self.callbacks:
            return
        event = self.callbacks[arg % len(self.callbacks)]
        if isinstance(event, CallbackReceived):
            event = CallbackReceived(event.callback, self.now)
        self.feed(event, redelivered=event.callback.source)

    # The worker.

    def work(self, arg: int) -> None:
        if self.jobs:
            self.run(self.jobs.popleft(), fail=arg % 3 == 0)

    def doom(self, arg: int) -> None:
        """Fail one resume and all its retries, until the machine gives up."""
        job = self.jobs.popleft() if self.jobs else None
        while job is not None:
            actions = self.run(job, fail=True)
            retries = [a.resume for a in actions if isinstance(a, RetryResume)]
            job = retries[0] if retries else None
            if job is not None:
                self.jobs.remove(job)

    def report_again(self, arg: int) -> None:
        """A worker that reports the same resume outcome twice."""
        reports = [e for e in self.log if isinstance(e, ResumeSucceeded | ResumeFailed)]
        if reports:
            self.feed(reports[-1 - arg % min(len(reports), 3)])

    def crash(self, arg: int) -> None:
        """Lose the worker's memory; rebuild it from the recorded inputs."""
        before = self.join.snapshot()
        self.join = Join.replay(self.log, CONFIG)
        assert self.join.snapshot() == before, "replay rebuilt another state"
        self.jobs = deque(self.join.pending_resumes())

    def run(self, job: Resume, fail: bool) -> list[Action]:
        row = self.rows[job.handle_id]
        # Under its lock the worker resumes only a handle still PAUSED, and
        # marks it RESUMED by compare-and-set in the same step.
        if fail or row.deleted or row.status is not PAUSED:
            return self.feed(
                ResumeFailed(job.handle_id, "prefect said 503", job.attempt)
            )
        self.prefect[job.handle_id].append(job)
        row.status = RESUMED
        self.commit(row)
        self.ledger.applied(job)
        return self.feed(ResumeSucceeded(job.handle_id))

    def carry_out(self, action: Action) -> None:
        match action:
            case Resume():
                self.jobs.append(action)
            case RetryResume(resume=resume):
                self.jobs.append(resume)
            case Store(handle_id=str(handle_id)):
                row = self.rows[handle_id]
                if row.active and row.resume_payload is None:
                    row.resume_payload = action.payload
                    self.commit(row)
            case MarkFailed():
                row = self.rows[action.handle_id]
                if not row.deleted and row.status is PAUSED:
                    row.status = HandleStatus.RESUME_FAILED
                    self.commit(row)
            case DeadLetter(reason=DeadLetterReason.UNKNOWN_CORRELATION_ID):
                self.waits.early_dead(action.correlation_id)
            case _:
                pass

    # Plumbing.

    def feed(
        self,
        event: Event,
        fresh: SourcePosition | None = None,
        redelivered: SourcePosition | None = None,
    ) -> list[Action]:
        actions = self.join.apply(event)
        self.log.append(event)
        self.decisions.append(actions)
        self.ledger.check(event, actions, fresh, redelivered)
        for action in actions:
            self.carry_out(action)
        return actions

    def new_callback(self, arg: int, *, bad: bool = False) -> Callback:
        cid = CIDS[arg % len(CIDS)]
        partition = CIDS.index(cid) % 2
        offset = self.next_offset[partition]
        self.next_offset[partition] += 1
        payload: dict[str, Any] = {"user_response": f"answer {partition}/{offset}"}
        if bad:
            payload["bad"] = True
        cb = Callback(cid, payload, pos(offset, partition))
        self.payloads[cb.source] = cb.payload
        return cb

    def commit(self, row: Row) -> None:
        self.change_feed.append(row.change())

    def active_row(self, cid: str) -> Row | None:
        active = [r for r in self.rows.values() if r.correlation_id == cid and r.active]
        assert len(active) <= 1, "the partial unique index was violated"
        return active[0] if active else None

    def move_row(self, arg: int, allowed: set[HandleStatus], to: HandleStatus) -> None:
        row = self.active_row(CIDS[arg % len(CIDS)])
        if row is not None and row.status in allowed:
            row.status = to
            self.commit(row)

    def drain(self) -> None:
        """Let every change arrive and every resume succeed, then the grace pass."""
        while self.change_feed or self.jobs:
            self.deliver(len(self.change_feed) + 3)
            while self.jobs:
                self.run(self.jobs.popleft(), fail=False)
        self.tick(int(CONFIG.grace_seconds) + 1)


OPERATIONS = (
    ["create"] * 3
    + ["pause"] * 3
    + ["pause_fail", "expire", "delete"]
    + ["tick"] * 2
    + ["deliver"] * 4
    + ["redeliver_change"] * 2
    + ["callback"] * 5
    + ["invalid"] * 2
    + ["redeliver_callback"] * 2
    + ["work"] * 3
    + ["doom", "crash", "report_again"]
)
STEPS = st.lists(
    st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 10_000)),
    min_size=30,
    max_size=150,
)


def check_each_flow_run_resumed_once(world: World) -> None:
    for handle_id, runs in world.prefect.items():
        assert len(runs) == 1, f"the flow run of {handle_id} was resumed twice"
        source = runs[0].source
        assert source is not None, "resumed with a payload no callback carried"
        assert runs[0].payload == world.payloads[source], "resumed with another payload"
        assert source not in world.bad, "resumed with a payload failing the schema"


def first_kind(ledger: Ledger, source: SourcePosition) -> str:
    match ledger.first[source]:
        case Store() | Resume():
            return "kept"
        case IgnoreDuplicate(reason=DuplicateReason.PAYLOAD_HELD):
            return "duplicate"
        case _:
            return "turned away"


def check_first_payload_wins(world: World) -> None:
    ledger = world.ledger
    for handle_id, members in world.waits.members.items():
        # Callbacks turned away on arrival (wait over, already resumed) and
        # payloads failing the schema are no candidates; among the rest,
        # arrival order decides.
        candidates = [
            p
            for p in members
            if first_kind(ledger, p) != "turned away" and p not in world.bad
        ]
        resumes = ledger.resumes.get(handle_id, [])
        row = world.rows[handle_id]
        if not candidates:
            assert not resumes, f"{handle_id} resumed with no candidate payload"
            assert row.resume_payload is None
            continue

        winner, *later = candidates
        assert first_kind(ledger, winner) == "kept", "the first payload was not kept"
        for p in later:
            # Early ones were kept until the handle chose between them.
            assert ledger.stage[p] == "ignored" or (
                ledger.stage[p] == "dead" and ledger.stage[winner] == "dead"
            ), f"a later payload for {handle_id} ended {ledger.stage[p]}"
        assert all(r.source == winner for r in resumes), "resumed with a later payload"
        assert row.resume_payload in (None, world.payloads[winner])


def check_accounting(world: World) -> None:
    ledger = world.ledger
    seen = {e.callback.source for e in world.callbacks}
    assert set(ledger.stage) == seen, "a callback got no decision"
    assert set(ledger.stage.values()) <= STAGES - {"in_flight"}
    for p in world.bad:
        assert ledger.stage[p] in ("dead", "ignored"), (
            f"a payload failing the schema ended {ledger.stage[p]}"
        )
    applied = {p for p, stage in ledger.stage.items() if stage == "applied"}
    resumed = {r.source for runs in world.prefect.values() for r in runs}
    assert applied == resumed, "accounting and Prefect disagree"

    wait_of = {p: h for h, members in world.waits.members.items() for p in members}
    for p, stage in ledger.stage.items():
        if stage == "held":
            row = world.rows[wait_of[p]]
            assert row.active and row.status is PENDING, "a payload was left behind"


def check_agrees_with_postgres(world: World) -> None:
    states = world.join.snapshot().states
    for row in world.rows.values():
        state = states[row.correlation_id]
        assert state.handles[row.handle_id] == row.change(), "state differs from row"
        assert not state.outcomes, "an outcome never reached the change log"


def check_replay(world: World) -> None:
    rebuilt = Join(CONFIG)
    assert [rebuilt.apply(e) for e in world.log] == world.decisions
    assert rebuilt.snapshot() == world.join.snapshot()

    topics_only = [
        e for e in world.log if not isinstance(e, ResumeSucceeded | ResumeFailed)
    ]
    from_topics = Join.replay(topics_only, CONFIG).snapshot()
    assert from_topics == world.join.snapshot(), "topics alone rebuilt another state"


@settings(max_examples=1000, deadline=None)
@given(STEPS)
def test_random_interleavings_keep_every_invariant(
    steps: list[tuple[str, int]],
) -> None:
    world = World()
    for name, arg in steps:
        getattr(world, name)(arg)
    world.drain()

    check_each_flow_run_resumed_once(world)
    check_first_payload_wins(world)
    check_accounting(world)
    check_agrees_with_postgres(world)
    check_replay(world)
