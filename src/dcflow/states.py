"""The one job-state vocabulary shared by the run ledger, the executor plugins and the CLI."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ACTIVE_STATES", "TERMINAL_STATES", "JobState"]


class JobState(StrEnum):
    """State of one job attempt, as stored in the run ledger and reported by backends.

    Values are lower-case words, stored as text in SQLite and printed by ``dcflow status``.
    """

    PLANNED = "planned"
    """In the plan of a run (counted by Snakemake's dry run), not yet handed to a backend."""

    SUBMITTED = "submitted"
    """Handed to the backend (queued in Grid Engine / DIRAC); not yet known to be running."""

    RUNNING = "running"
    """Executing on a worker (local process, Grid Engine slot, DIRAC pilot)."""

    SUCCEEDED = "succeeded"
    """Finished with exit code 0 and Snakemake accepted its outputs."""

    FAILED = "failed"
    """Finished with a non-zero exit code or missing outputs; the ledger keeps the reason."""

    CANCELLED = "cancelled"
    """Stopped on purpose (qdel, DIRAC kill, Ctrl-C of the driver) before it finished."""

    LOST = "lost"
    """Was submitted or running when its driver died: nobody watched it end. Whether it
    produced its outputs is read from disk (``dcflow status``)."""

    def is_terminal(self) -> bool:
        """True if the attempt can no longer change state (succeeded, failed, cancelled)."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
"""States after which an attempt never changes."""

ACTIVE_STATES = frozenset({JobState.SUBMITTED, JobState.RUNNING})
"""States of an attempt that a live driver is still watching."""
