"""Which offset of a partition may be committed, with effects still running.

A record is done when every effect it started is durable: a Postgres
write, a dead-letter record flushed, or a resume accepted by Prefect and
marked in Postgres. Resumes run in a thread pool, so records finish out of
order; the committable offset is the lowest record not yet done. After a
crash everything from there on is consumed again, and the join and the
PAUSED -> RESUMED compare-and-set make the repeats harmless.
"""

from __future__ import annotations


class OffsetTracker:
    """Open effects per offset of one partition."""

    def __init__(self) -> None:
        self._open: dict[int, int] = {}
        self._next: int | None = None
        self.committed: int | None = None

    def begin(self, offset: int) -> None:
        """A record is being processed; it holds one effect until `end`."""
        self._open[offset] = self._open.get(offset, 0) + 1
        self._next = max(self._next or 0, offset + 1)

    def hold(self, offset: int) -> None:
        """One more effect of the record at `offset` runs in the background."""
        self._open[offset] = self._open.get(offset, 0) + 1

    def end(self, offset: int) -> None:
        """One effect of the record at `offset` is durable."""
        left = self._open.get(offset, 0) - 1
        if left > 0:
            self._open[offset] = left
        else:
            self._open.pop(offset, None)

    def committable(self) -> int | None:
        """The offset to commit (the next record to read after a restart)."""
        if self._open:
            return min(self._open)
        return self._next

    def needs_commit(self) -> int | None:
        """The committable offset if it moved since the last commit."""
        offset = self.committable()
        if offset is None or offset == self.committed:
            return None
        return offset

    @property
    def busy(self) -> bool:
        return bool(self._open)
