"""Every error pausewire raises on purpose.

    PausewireError
    ├── ConfigurationError        a setting is missing or contradicts another
    ├── InvalidWaitRequestError   bad arguments to wait_for_user_input (ValueError)
    ├── HandleConflictError       a correlation id already waits in another run
    ├── PauseFailedError          Prefect refused or never answered the pause
    ├── ResumeFailedError         resuming failed so often a person must look
    ├── WaitTimeoutError          nobody answered before the handle expired
    ├── StoreUnavailableError     Postgres could not be reached or refused
    ├── MigrationError            a migration file failed to apply
    ├── CallbackRejectedError     a callback cannot be applied; goes to the DLQ
    ├── LockNotAcquiredError      no quorum of Redis masters granted a resume lock
    └── DeadLetterError           the dead-letter topic was not written or read

Ids are attributes, so a caller can log or match on them without parsing
the message. Driver errors are translated at the boundary with `from`.
"""

from __future__ import annotations


class PausewireError(Exception):
    """Base of every error raised by pausewire itself."""


class ConfigurationError(PausewireError):
    """A setting is missing, malformed, or contradicts another one."""


class InvalidWaitRequestError(PausewireError, ValueError):
    """The arguments to `wait_for_user_input` are unusable; nothing was written."""


class HandleConflictError(PausewireError):
    """The correlation id already has an active handle in another flow run."""

    def __init__(
        self, correlation_id: str, existing_flow_run_id: str, flow_run_id: str
    ) -> None:
        self.correlation_id = correlation_id
        self.existing_flow_run_id = existing_flow_run_id
        self.flow_run_id = flow_run_id
        super().__init__(
            f"correlation id {correlation_id!r} already waits in flow run "
            f"{existing_flow_run_id}; flow run {flow_run_id} may not reuse it"
        )


class PauseFailedError(PausewireError):
    """Prefect did not accept the pause; the handle was compensated."""

    def __init__(self, correlation_id: str, flow_run_id: str, reason: str) -> None:
        self.correlation_id = correlation_id
        self.flow_run_id = flow_run_id
        self.reason = reason
        super().__init__(
            f"pausing flow run {flow_run_id} for correlation id {correlation_id!r} "
            f"failed: {reason}"
        )


class ResumeFailedError(PausewireError):
    """The resumer gave up on this wait; the handle is RESUME_FAILED."""

    def __init__(self, correlation_id: str, reason: str) -> None:
        self.correlation_id = correlation_id
        self.reason = reason
        super().__init__(
            f"resuming the wait for correlation id {correlation_id!r} failed for "
            f"good: {reason}; see the handle's last_error and the resumer's log"
        )


class WaitTimeoutError(PausewireError, TimeoutError):
    """No answer arrived before the handle expired."""

    def __init__(self, correlation_id: str, timeout_seconds: float) -> None:
        self.correlation_id = correlation_id
        self.timeout_seconds = timeout_seconds
        super().__init__(
            f"no answer for correlation id {correlation_id!r} within "
            f"{timeout_seconds:g} s; the handle is EXPIRED"
        )


class StoreUnavailableError(PausewireError):
    """Postgres could not be reached, or refused the statement."""


class MigrationError(PausewireError):
    """A migration file failed; the transaction that applied it rolled back."""

    def __init__(self, filename: str, reason: str) -> None:
        self.filename = filename
        self.reason = reason
        super().__init__(f"migration {filename} failed: {reason}")


class CallbackRejectedError(PausewireError):
    """A callback cannot be applied and belongs in the dead-letter topic."""

    def __init__(self, reason: str, correlation_id: str | None = None) -> None:
        self.reason = reason
        self.correlation_id = correlation_id
        super().__init__(
            f"callback for correlation id {correlation_id!r} rejected: {reason}"
        )


class LockNotAcquiredError(PausewireError):
    """No quorum of Redis masters granted the resume lock of a correlation id.

    Another worker holds it, or too many masters are down; the resume must
    not run now and is retried later.
    """

    def __init__(self, correlation_id: str, attempts: int) -> None:
        self.correlation_id = correlation_id
        self.attempts = attempts
        super().__init__(
            f"resume lock for correlation id {correlation_id!r} not acquired "
            f"after {attempts} attempts"
        )


class DeadLetterError(PausewireError):
    """A dead letter was not written durably, or a Kafka read or write of the
    dead-letter tools failed.

    When `DeadLetterQueue.send` raises it, the callback's source offset must
    not be committed: the callback is then consumed and dead-lettered again.
    """

    def __init__(
        self, topic: str, reason: str, correlation_id: str | None = None
    ) -> None:
        self.topic = topic
        self.reason = reason
        self.correlation_id = correlation_id
        about = f" for correlation id {correlation_id!r}" if correlation_id else ""
        super().__init__(f"topic {topic}{about}: {reason}")
