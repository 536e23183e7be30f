"""The resumer's join of handle changes with callbacks, as a pure state machine.

One `JoinState` per correlation id. The machine only decides; the worker
carries out the actions it returns (Postgres writes, Prefect calls, the
dead-letter topic) and reports resume outcomes back:

    (nothing) ──callback: STORE (early)──► EARLY ──grace passes──► DEAD_LETTER
        │                                    │ (every early callback is kept)
        │ handle appears                     │ handle appears: each early payload
        │                                    │ is checked against its schema;
        │                                    │ the first valid one attaches
        ▼                                    ▼
    PENDING_PAUSE ──callback: STORE──► PENDING_PAUSE + held payload
        │ PAUSED                             │ PAUSED: RESUME (held payload)
        ▼                                    ▼
    PAUSED ──────callback: RESUME──────► RESUMING ──failed──► RETRY (backoff)
                                             │     ╰─failed 12th──► MARK_FAILED
                                             │ succeeded            + DEAD_LETTER
                                             ▼
                                         RESUMED: later callbacks IGNORE_DUPLICATE

    EXPIRED, PAUSE_FAILED, RESUME_FAILED, deleted: the payload held or being
    resumed, and every later callback, go to DEAD_LETTER until a newer
    handle appears.

The first valid payload for a wait wins; every later one is ignored as a
duplicate. Each callback source position gets exactly one decision when
first seen (STORE, RESUME, IGNORE_DUPLICATE or DEAD_LETTER); a stored one
later gets more (STORE on its handle, then RESUME, IGNORE_DUPLICATE or
DEAD_LETTER). Redelivered positions are answered
IGNORE_DUPLICATE(REDELIVERED) and change nothing.

A callback that comes before any handle of its correlation id cannot be
checked yet: the schema arrives with the handle. So every early callback is
kept, in order, and when the handle appears each is checked with
`JoinConfig.payload_check`: the invalid ones are dead-lettered, the first
valid one is the wait's answer, the rest are duplicates. An invalid early
answer therefore never blocks a valid one behind it.

Why pure: the same inputs in the same order always give the same state, so
the worker rebuilds it after a loss by replaying its inputs (`Join.replay`),
and the races between the two topics are tested without Kafka. Replaying
the two topics alone, without the resume reports, ends in the same state
once the change log shows every outcome; what was still in flight comes
back from `pending_resumes`. The worker logs the actions it carries
out; nothing is logged here.

A callback that arrives while a handle is known is validated by the
worker, against the handle it looks up; one that fails the waiting flow's
input schema is passed to `on_callback_invalid`, so its position is
accounted for here like any other. Records without a correlation id never
reach the machine; the worker dead-letters them itself.

Limits: the views of finished and deleted handles are kept, so a
redelivered old change event cannot bring a wait back to life; memory grows
with the handles seen until the worker rebuilds from compacted topics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar, assert_never

from outbox.models import HandleStatus

JsonObject = dict[str, Any]
V = TypeVar("V")

# Why a payload does not fit a wait's input schema, or None when it does.
PayloadCheck = Callable[[JsonObject, JsonObject], str | None]


class DuplicateReason(StrEnum):
    """Why a callback needs no effect."""

    REDELIVERED = "redelivered"  # this source position was decided before
    PAYLOAD_HELD = "payload_held"  # an earlier payload already won this wait
    ALREADY_RESUMED = "already_resumed"


class DeadLetterReason(StrEnum):
    """Why a payload can never be applied; goes into the dead-letter record."""

    UNKNOWN_CORRELATION_ID = "unknown_correlation_id"
    HANDLE_EXPIRED = "handle_expired"
    PAUSE_FAILED = "pause_failed"
    RESUME_FAILED = "resume_failed"
    HANDLE_DELETED = "handle_deleted"
    INVALID_PAYLOAD = "invalid_payload"


# Order of one handle's states: an event may only move a handle forward.
# Terminal statuses share one rank, so one terminal never replaces another.
_ACTIVE_RANK = {HandleStatus.PENDING_PAUSE: 0, HandleStatus.PAUSED: 1}
_TERMINAL_RANK = 2
_DELETED_RANK = 3

_FAILED_REASON = {
    HandleStatus.EXPIRED: DeadLetterReason.HANDLE_EXPIRED,
    HandleStatus.PAUSE_FAILED: DeadLetterReason.PAUSE_FAILED,
    HandleStatus.RESUME_FAILED: DeadLetterReason.RESUME_FAILED,
}


# ── inputs ──────────────────────────────────────────────────────────────────


@dataclass(frozen=True, order=True)
class SourcePosition:
    """Where a callback was read; its identity for deduplication."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Callback:
    """A callback record whose value parsed; `payload` is its `result`."""

    correlation_id: str
    payload: JsonObject
    source: SourcePosition


@dataclass(frozen=True)
class HandleChange:
    """One flattened Debezium change event of `flow_resume_handles`.

    `deleted` is Debezium's `__deleted` flag; a delete carries the last row.
    """

    handle_id: str
    correlation_id: str
    flow_run_id: str
    status: HandleStatus
    resume_payload: JsonObject | None
    expires_at: datetime
    deleted: bool = False
    # The waiting flow's input schema, from the row's resume_handle.
    input_schema: JsonObject | None = None

    @property
    def rank(self) -> int:
        if self.deleted:
            return _DELETED_RANK
        return _ACTIVE_RANK.get(self.status, _TERMINAL_RANK)

    @property
    def is_active(self) -> bool:
        return self.rank < _TERMINAL_RANK

    @property
    def is_resumed(self) -> bool:
        return self.status is HandleStatus.RESUMED


@dataclass(frozen=True)
class CallbackReceived:
    callback: Callback
    now: datetime


@dataclass(frozen=True)
class CallbackInvalid:
    callback: Callback
    reason: str


@dataclass(frozen=True)
class ResumeSucceeded:
    handle_id: str


@dataclass(frozen=True)
class ResumeFailed:
    handle_id: str
    error: str
    attempt: int


@dataclass(frozen=True)
class Tick:
    now: datetime


# Every input, as recorded for `Join.replay`.
Event = (
    HandleChange
    | CallbackReceived
    | CallbackInvalid
    | ResumeSucceeded
    | ResumeFailed
    | Tick
)


# ── actions ─────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Resume:
    """Resume the flow run with `payload` as its run input.

    `source` is None when the payload came from the handle row alone.
    `attempt` counts from 1; report a failure with this number.
    """

    correlation_id: str
    handle_id: str
    flow_run_id: str
    payload: JsonObject
    source: SourcePosition | None
    attempt: int = 1


@dataclass(frozen=True)
class RetryResume:
    """Carry out `resume` (its next attempt) after `after_seconds`."""

    resume: Resume
    after_seconds: float


@dataclass(frozen=True)
class Store:
    """Park the payload durably until its handle is PAUSED.

    With a `handle_id`, store it on that handle only while it is still
    active; a handle that moved on meanwhile is settled by its change event.
    Without one, no handle is known yet: park it in `early_callbacks`.
    """

    correlation_id: str
    handle_id: str | None
    payload: JsonObject
    source: SourcePosition


@dataclass(frozen=True)
class IgnoreDuplicate:
    correlation_id: str
    reason: DuplicateReason
    source: SourcePosition | None


@dataclass(frozen=True)
class DeadLetter:
    """Write the payload to the dead-letter topic and raise the alert metric.

    For UNKNOWN_CORRELATION_ID the payload was parked in `early_callbacks`;
    the worker removes that row once the dead-letter record is written.
    """

    correlation_id: str
    reason: DeadLetterReason
    payload: JsonObject
    source: SourcePosition | None
    detail: str = ""


@dataclass(frozen=True)
class MarkFailed:
    """Set the handle RESUME_FAILED (from PAUSED) for a person to look at."""

    correlation_id: str
    handle_id: str
    flow_run_id: str
    error: str


Action = Resume | RetryResume | Store | IgnoreDuplicate | DeadLetter | MarkFailed


# ── state ───────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class JoinConfig:
    """How long to wait for a handle, and how hard to try resuming."""

    grace_seconds: float = 300.0
    max_resume_attempts: int = 12
    retry_base_seconds: float = 1.0
    retry_cap_seconds: float = 60.0
    # Checks early payloads once their handle's schema is known; pure, so
    # that a replay decides as the live machine did. None accepts all.
    payload_check: PayloadCheck | None = None

    def __post_init__(self) -> None:
        if self.grace_seconds < 0 or self.max_resume_attempts < 1:
            raise ValueError("grace_seconds must be >= 0, max_resume_attempts >= 1")

    def backoff_seconds(self, failed_attempt: int) -> float:
        """Doubling wait after the given failed attempt; jitter is the worker's."""
        wait = self.retry_base_seconds * 2.0 ** (failed_attempt - 1)
        return min(self.retry_cap_seconds, wait)

    def problem(self, view: HandleChange, payload: JsonObject) -> str | None:
        """Why `payload` cannot answer the wait of `view`, if it cannot."""
        if self.payload_check is None or not view.input_schema:
            return None
        return self.payload_check(view.input_schema, payload)


@dataclass(frozen=True)
class HeldPayload:
    """The first payload for a wait, not yet sent to Prefect.

    `handle_id` names the handle whose row keeps it; None while it is parked
    in `early_callbacks`, before any handle was known.
    """

    payload: JsonObject
    source: SourcePosition | None
    handle_id: str | None = None


@dataclass(frozen=True)
class JoinState:
    """Everything the machine knows about one correlation id.

    `handles` keeps, per handle, the change that last moved it forward;
    `outcomes` the RESUMED or RESUME_FAILED the worker reported before the
    change log shows it. `current` is the handle new callbacks belong to.
    `held` is set while a payload waits for it (`early_since` too while no
    handle is known yet, and `queued`, the early callbacks behind it, in
    arrival order); `resuming` holds the resume in flight per handle.
    """

    correlation_id: str
    handles: Mapping[str, HandleChange] = field(default_factory=dict)
    current: str | None = None
    held: HeldPayload | None = None
    queued: tuple[HeldPayload, ...] = ()
    early_since: datetime | None = None
    resuming: Mapping[str, Resume] = field(default_factory=dict)
    outcomes: Mapping[str, HandleStatus] = field(default_factory=dict)

    def view(self, handle_id: str) -> HandleChange:
        """The handle as the change log shows it, or soon will."""
        change = self.handles[handle_id]
        outcome = self.outcomes.get(handle_id)
        if outcome is None or not change.is_active:
            return change
        return dataclasses.replace(change, status=outcome)

    @property
    def current_view(self) -> HandleChange | None:
        return None if self.current is None else self.view(self.current)

    @property
    def payload_held(self) -> bool:
        return self.held is not None or self.current in self.resuming

    @property
    def kept(self) -> list[HeldPayload]:
        """The payloads kept for this wait: the held one, then the queued."""
        return ([] if self.held is None else [self.held]) + list(self.queued)

    @property
    def is_empty(self) -> bool:
        return (
            not self.handles
            and self.held is None
            and not self.queued
            and not self.resuming
        )


@dataclass(frozen=True)
class JoinSnapshot:
    """The whole machine's state, comparable with `==`."""

    states: Mapping[str, JoinState]
    offsets: Mapping[tuple[str, int], int]


Step = tuple[JoinState, list[Action]]


# ── handle changes ──────────────────────────────────────────────────────────


def _merge(old: HandleChange | None, new: HandleChange) -> HandleChange | None:
    """The newer view of one handle, or None when `new` tells nothing new.

    Change events are redelivered after a crash; an older or equal one must
    not move the handle back, or a PAUSED event could resume it twice. The
    row's payload is first-writer-wins, so a view never drops or swaps it.
    """
    if old is None:
        return new
    if new.rank > old.rank:
        if old.resume_payload is None:
            return new
        return dataclasses.replace(new, resume_payload=old.resume_payload)
    adds_payload = old.resume_payload is None and new.resume_payload is not None
    if new.rank == old.rank < _TERMINAL_RANK and adds_payload:
        return dataclasses.replace(old, resume_payload=new.resume_payload)
    return None


def _apply_change(state: JoinState, change: HandleChange, config: JoinConfig) -> Step:
    old = state.handles.get(change.handle_id)
    merged = _merge(old, change)
    if merged is None:
        return state, []

    handles = {**state.handles, change.handle_id: merged}
    if not merged.is_active:  # the change log caught up with the outcome
        state = dataclasses.replace(
            state, outcomes=_drop_key(state.outcomes, change.handle_id)
        )
    current = state.current_view
    # A handle seen for the first time is the newest wait, except that a
    # snapshot may list an old finished handle after the active one.
    if old is None and (current is None or not current.is_active or merged.is_active):
        state = dataclasses.replace(state, current=change.handle_id, early_since=None)
    return _react(dataclasses.replace(state, handles=handles), change.handle_id, config)


def _react(state: JoinState, handle_id: str, config: JoinConfig) -> Step:
    """What a newer view of a handle means for the payloads of its wait."""
    view = state.view(handle_id)
    if view.is_active:
        if handle_id != state.current:
            return state, []
        return _react_active(state, handle_id, view, config)

    state, settled = _settle_resume(state, handle_id, view)
    if handle_id != state.current:
        return state, settled
    reason = None if view.is_resumed else _dead_letter_reason(view)
    state, dropped = _drop_held(state, reason)
    return state, [*settled, *dropped]


def _react_active(
    state: JoinState, handle_id: str, view: HandleChange, config: JoinConfig
) -> Step:
    state, screened = _screen_held(state, view, config)
    state = _adopt_row_payload(state, view)
    if view.status is HandleStatus.PAUSED:
        state, resumed = _resume_held(state, handle_id, view)
        return state, [*screened, *resumed]
    state, stored = _store_on_handle(state, view)
    return state, [*screened, *stored]


def _screen_held(state: JoinState, view: HandleChange, config: JoinConfig) -> Step:
    """Check the payloads kept for this wait against its schema.

    Early payloads meet their schema here for the first time: each invalid
    one is dead-lettered, the first valid one stays held, the rest are
    duplicates of it. A payload checked before passes again.
    """
    kept = state.kept
    if not kept:
        return state, []
    winner: HeldPayload | None = None
    actions: list[Action] = []
    cid = state.correlation_id
    for held in kept:
        problem = config.problem(view, held.payload)
        if problem is not None:
            reason = DeadLetterReason.INVALID_PAYLOAD
            actions.append(DeadLetter(cid, reason, held.payload, held.source, problem))
        elif winner is None:
            winner = held
        else:
            reason_dup = DuplicateReason.PAYLOAD_HELD
            actions.append(IgnoreDuplicate(cid, reason_dup, held.source))
    return dataclasses.replace(state, held=winner, queued=()), actions


def _store_on_handle(state: JoinState, view: HandleChange) -> Step:
    """Move a payload parked before its handle existed onto the handle's row."""
    held = state.held
    if held is None or held.handle_id == view.handle_id or held.source is None:
        return state, []
    moved = dataclasses.replace(held, handle_id=view.handle_id)
    store = Store(state.correlation_id, view.handle_id, held.payload, held.source)
    return dataclasses.replace(state, held=moved), [store]


def _settle_resume(state: JoinState, handle_id: str, view: HandleChange) -> Step:
    """End the resume in flight for a handle the change log shows finished.

    RESUMED means it took effect. Any other end means it never can, and a
    later failure report for it is then stale, so the payload goes to the
    dead-letter topic here, once.
    """
    resume = state.resuming.get(handle_id)
    if resume is None:
        return state, []
    state = _stop_resuming(state, handle_id)
    if view.is_resumed:
        return state, []
    detail = f"handle became {view.status} while resuming"
    return state, [_dead_letter_resume(resume, _dead_letter_reason(view), detail)]


def _adopt_row_payload(state: JoinState, view: HandleChange) -> JoinState:
    """Take a payload the row holds but the machine never saw arrive.

    That happens when the callback left the topic's retention before a
    rebuild; the row's copy is then the only one.
    """
    if view.resume_payload is None or state.payload_held or not view.is_active:
        return state
    held = HeldPayload(view.resume_payload, None, view.handle_id)
    return dataclasses.replace(state, held=held)


def _resume_held(state: JoinState, handle_id: str, view: HandleChange) -> Step:
    if state.held is None:
        return state, []
    held = state.held
    resume = Resume(
        state.correlation_id, handle_id, view.flow_run_id, held.payload, held.source
    )
    return _start_resume(dataclasses.replace(state, held=None), resume), [resume]


def _drop_held(state: JoinState, reason: DeadLetterReason | None) -> Step:
    """Settle the payloads kept for a wait that ended: dead letters, or duplicates.

    `reason` None means the wait was resumed (by another payload).
    """
    kept = state.kept
    state = dataclasses.replace(state, held=None, queued=(), early_since=None)
    cid = state.correlation_id
    if reason is None:
        return state, [
            IgnoreDuplicate(cid, DuplicateReason.ALREADY_RESUMED, held.source)
            for held in kept
        ]
    return state, [DeadLetter(cid, reason, h.payload, h.source) for h in kept]


def _dead_letter_reason(view: HandleChange) -> DeadLetterReason:
    if view.deleted and view.status not in _FAILED_REASON:
        return DeadLetterReason.HANDLE_DELETED
    return _FAILED_REASON[view.status]


# ── callbacks ───────────────────────────────────────────────────────────────


def _accept_callback(
    state: JoinState, callback: Callback, now: datetime, config: JoinConfig
) -> Step:
    """Decide a callback seen for the first time."""
    if state.current is None:
        return _keep_early(state, callback, now)
    if state.payload_held:
        return state, [_ignore(callback, DuplicateReason.PAYLOAD_HELD)]
    return _route_to_handle(state, callback, state.current, now, config)


def _keep_early(state: JoinState, callback: Callback, now: datetime) -> Step:
    """Keep a callback that came before any handle, behind earlier ones.

    None of them can be checked against the schema yet, so none may turn
    the others away: the handle decides between them when it appears.
    """
    if state.held is None:
        return _hold(state, callback, None, early_since=now)
    queued = (*state.queued, HeldPayload(callback.payload, callback.source))
    store = Store(callback.correlation_id, None, callback.payload, callback.source)
    return dataclasses.replace(state, queued=queued), [store]


def _route_to_handle(
    state: JoinState,
    callback: Callback,
    handle_id: str,
    now: datetime,
    config: JoinConfig,
) -> Step:
    view = state.view(handle_id)
    if view.is_resumed:
        return state, [_ignore(callback, DuplicateReason.ALREADY_RESUMED)]
    if not view.is_active:
        return state, [_dead_letter(callback, _dead_letter_reason(view))]
    # Cleanup marks a handle EXPIRED only every so often; judge by the clock.
    if view.expires_at <= now:
        return state, [_dead_letter(callback, DeadLetterReason.HANDLE_EXPIRED)]
    # The worker checks against the handle it looks up, which may be newer
    # or older than this view; this one is what the resume would use.
    problem = config.problem(view, callback.payload)
    if problem is not None:
        reason = DeadLetterReason.INVALID_PAYLOAD
        return state, [_dead_letter(callback, reason, problem)]
    if view.status is HandleStatus.PENDING_PAUSE:
        return _hold(state, callback, handle_id, early_since=None)

    resume = Resume(
        callback.correlation_id,
        handle_id,
        view.flow_run_id,
        callback.payload,
        callback.source,
    )
    return _start_resume(state, resume), [resume]


def _hold(
    state: JoinState,
    callback: Callback,
    handle_id: str | None,
    early_since: datetime | None,
) -> Step:
    held = HeldPayload(callback.payload, callback.source, handle_id)
    state = dataclasses.replace(state, held=held, early_since=early_since)
    store = Store(callback.correlation_id, handle_id, callback.payload, callback.source)
    return state, [store]


def _ignore(callback: Callback, reason: DuplicateReason) -> IgnoreDuplicate:
    return IgnoreDuplicate(callback.correlation_id, reason, callback.source)


def _dead_letter(
    callback: Callback, reason: DeadLetterReason, detail: str = ""
) -> DeadLetter:
    return DeadLetter(
        callback.correlation_id, reason, callback.payload, callback.source, detail
    )


# ── resume outcomes ─────────────────────────────────────────────────────────


def _start_resume(state: JoinState, resume: Resume) -> JoinState:
    resuming = {**state.resuming, resume.handle_id: resume}
    return dataclasses.replace(state, resuming=resuming)


def _stop_resuming(state: JoinState, handle_id: str) -> JoinState:
    return dataclasses.replace(state, resuming=_drop_key(state.resuming, handle_id))


def _drop_key(mapping: Mapping[str, V], key: str) -> dict[str, V]:
    return {k: v for k, v in mapping.items() if k != key}


def _record_outcome(
    state: JoinState, handle_id: str, status: HandleStatus
) -> JoinState:
    """Remember an outcome until its change event arrives.

    Without it a callback in between would find the handle still PAUSED
    and resume it a second time.
    """
    state = _stop_resuming(state, handle_id)
    if not state.view(handle_id).is_active:
        return state
    outcomes = {**state.outcomes, handle_id: status}
    return dataclasses.replace(state, outcomes=outcomes)


def _after_failure(
    state: JoinState, resume: Resume, error: str, config: JoinConfig
) -> Step:
    """Retry while the handle waits; give up after the last attempt.

    Only called for a resume in flight, so the handle is still active: a
    finished one was settled by its change event.
    """
    state = _stop_resuming(state, resume.handle_id)
    if resume.attempt >= config.max_resume_attempts:
        return _give_up(state, resume, error)

    retry = dataclasses.replace(resume, attempt=resume.attempt + 1)
    after = config.backoff_seconds(resume.attempt)
    return _start_resume(state, retry), [RetryResume(retry, after)]


def _give_up(state: JoinState, resume: Resume, error: str) -> Step:
    state = _record_outcome(state, resume.handle_id, HandleStatus.RESUME_FAILED)
    mark = MarkFailed(
        resume.correlation_id, resume.handle_id, resume.flow_run_id, error
    )
    dead = _dead_letter_resume(resume, DeadLetterReason.RESUME_FAILED, error)
    return state, [mark, dead]


def _dead_letter_resume(
    resume: Resume, reason: DeadLetterReason, detail: str
) -> DeadLetter:
    return DeadLetter(
        resume.correlation_id, reason, resume.payload, resume.source, detail
    )


# ── the machine ─────────────────────────────────────────────────────────────


class Join:
    """The join state of every correlation id this worker has seen.

    Not thread safe: the worker feeds it from one consumer loop.
    """

    def __init__(self, config: JoinConfig | None = None) -> None:
        self.config = config or JoinConfig()
        self._states: dict[str, JoinState] = {}
        self._owners: dict[str, str] = {}  # handle id -> correlation id
        self._early: dict[str, datetime] = {}  # correlation id -> parked at
        self._offsets: dict[tuple[str, int], int] = {}  # highest offset seen

    @classmethod
    def replay(cls, events: Iterable[Event], config: JoinConfig | None = None) -> Join:
        """Rebuild the state from recorded inputs, discarding the decisions.

        They were carried out when first made. Feed events up to the
        committed offsets only, then consume live; `pending_resumes` lists
        what was in flight at the crash.
        """
        join = cls(config)
        for event in events:
            join.apply(event)
        return join

    def apply(self, event: Event) -> list[Action]:
        """Dispatch one recorded input to its handler."""
        match event:
            case HandleChange():
                return self.on_handle_change(event)
            case CallbackReceived(callback, now):
                return self.on_callback(callback, now)
            case CallbackInvalid(callback, reason):
                return self.on_callback_invalid(callback, reason)
            case ResumeSucceeded(handle_id):
                return self.on_resume_succeeded(handle_id)
            case ResumeFailed(handle_id, error, attempt):
                return self.on_resume_failed(handle_id, error, attempt)
            case Tick(now):
                return self.on_tick(now)
            case _:
                assert_never(event)

    def on_handle_change(self, change: HandleChange) -> list[Action]:
        """A change event of one handle, in commit order per correlation id."""
        state = self._state(change.correlation_id)
        state, actions = _apply_change(state, change, self.config)
        self._owners[change.handle_id] = change.correlation_id
        self._put(state)
        return actions

    def on_callback(self, callback: Callback, now: datetime) -> list[Action]:
        """A valid callback; first settles early callbacks past their grace."""
        actions = self.on_tick(now)
        if not self._first_sight(callback.source):
            return [*actions, _ignore(callback, DuplicateReason.REDELIVERED)]

        state, decided = _accept_callback(
            self._state(callback.correlation_id), callback, now, self.config
        )
        self._put(state)
        return [*actions, *decided]

    def on_callback_invalid(self, callback: Callback, reason: str) -> list[Action]:
        """A callback the worker found invalid for the waiting flow's schema."""
        if not self._first_sight(callback.source):
            return [_ignore(callback, DuplicateReason.REDELIVERED)]
        return [_dead_letter(callback, DeadLetterReason.INVALID_PAYLOAD, reason)]

    def on_resume_succeeded(self, handle_id: str) -> list[Action]:
        """Prefect accepted the resume; the RESUMED change event may lag."""
        state = self._owned_state(handle_id)
        if state is not None and handle_id in state.resuming:
            self._put(_record_outcome(state, handle_id, HandleStatus.RESUMED))
        return []

    def on_resume_failed(
        self, handle_id: str, error: str, attempt: int
    ) -> list[Action]:
        """The resume with this `attempt` number failed.

        A report for any other attempt is stale (already answered) and
        changes nothing, so a repeated report cannot schedule two retries.
        """
        state = self._owned_state(handle_id)
        resume = None if state is None else state.resuming.get(handle_id)
        if state is None or resume is None or resume.attempt != attempt:
            return []
        state, actions = _after_failure(state, resume, error, self.config)
        self._put(state)
        return actions

    def on_tick(self, now: datetime) -> list[Action]:
        """Dead-letter early callbacks whose handle did not appear in time."""
        grace = timedelta(seconds=self.config.grace_seconds)
        due = [cid for cid, since in self._early.items() if now - since >= grace]
        actions: list[Action] = []
        for cid in due:
            reason = DeadLetterReason.UNKNOWN_CORRELATION_ID
            state, dropped = _drop_held(self._states[cid], reason)
            self._put(state)
            actions.extend(dropped)
        return actions

    def pending_resumes(self) -> list[Resume]:
        """Resumes in flight; after a rebuild the worker carries them out again.

        Safe to repeat: the worker's lock and the PAUSED -> RESUMED
        compare-and-set in Postgres let only one of them take effect.
        """
        return [r for s in self._states.values() for r in s.resuming.values()]

    def snapshot(self) -> JoinSnapshot:
        """A copy of the state; two machines fed the same inputs compare equal."""
        return JoinSnapshot(dict(self._states), dict(self._offsets))

    def _state(self, correlation_id: str) -> JoinState:
        return self._states.get(correlation_id) or JoinState(correlation_id)

    def _owned_state(self, handle_id: str) -> JoinState | None:
        owner = self._owners.get(handle_id)
        return None if owner is None else self._states.get(owner)

    def _put(self, state: JoinState) -> None:
        """Store a state and keep the early-callback index in step with it."""
        cid = state.correlation_id
        if state.is_empty:
            self._states.pop(cid, None)
        else:
            self._states[cid] = state
        if state.early_since is None:
            self._early.pop(cid, None)
        else:
            self._early[cid] = state.early_since

    def _first_sight(self, source: SourcePosition) -> bool:
        """Record a position; False when it was decided before.

        A partition is consumed in offset order and redelivery replays a
        suffix of it, so the highest offset seen per partition is enough.
        """
        key = (source.topic, source.partition)
        if source.offset <= self._offsets.get(key, -1):
            return False
        self._offsets[key] = source.offset
        return True
