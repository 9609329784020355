"""One status cycle: the outcomes of all active jobs from as few Grid Engine calls as possible.

DRMAA jobs of this driver are reaped from the DRMAA session (no call per job) plus one ``qstat``
to catch jobs stuck in error state, which DRMAA never reports. Jobs of the command-line backend,
and jobs adopted from a killed driver, take one ``qstat`` and, for those that left it, one
``qacct`` per driver run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from dcflow.states import JobState

from .reattach import Submission
from .status import (
    JobOutcome,
    SharedQstat,
    accounting_records,
    jobs_in_error_state,
    query_states,
)

__all__ = ["REASON_WAIT_S", "VANISHED_AFTER_S", "StatusTracker"]

VANISHED_AFTER_S = 90.0
"""A job absent from qstat and from accounting this long is failed (deleted while pending)."""

REASON_WAIT_S = 30.0
"""How long a failed DRMAA job is held back for its accounting record (the failure reason).

DRMAA reports a job's end before Grid Engine flushes its qacct record; reported at once, a lost
node (qacct ``failed 19``) was classed unknown in 1 run of 2. Held back per job from when its
failure was first seen, then reported with whatever reason is known.
"""


class StatusTracker:
    """Outcomes of active jobs, one bulk query per cycle.

    Parameters
    ----------
    backend : DrmaaBackend or None
        The DRMAA session of this driver; None for the command-line backend.
    name_pattern : str
        ``qacct -j`` pattern matching this driver's job names.
    snapshot : SharedQstat, optional
        The ``qstat`` shared with the other drivers of the working directory, for the error
        state check of DRMAA jobs (default: a ``qstat`` of its own each cycle).
    """

    def __init__(self, backend: Any, name_pattern: str, snapshot: SharedQstat | None = None):
        self.backend = backend
        self.name_pattern = name_pattern
        self.snapshot = snapshot
        self.unknown_since: dict[str, float] = {}
        self.held: dict[str, tuple[JobOutcome, float]] = {}

    def poll(self, active: Mapping[str, Submission]) -> dict[str, JobOutcome]:
        """Outcomes known for the ``active`` jobs (by job id).

        A job still queued or running is absent or has a non-terminal state.
        """
        outcomes: dict[str, JobOutcome] = {}
        own = [jid for jid in active if self.backend is not None and self.backend.owns(jid)]
        own_set = set(own)
        via_cli = {jid: sub for jid, sub in active.items() if jid not in own_set}
        if own:
            self.backend.reap()
            for jid in own:
                outcome = self.backend.outcome(jid)
                if outcome is not None:
                    outcomes[jid] = outcome
                elif jid in self.held:
                    outcomes[jid] = self.held[jid][0]
            waiting = [jid for jid in own if jid not in outcomes]
            for jid, code in jobs_in_error_state(waiting, self.snapshot).items():
                outcomes[jid] = JobOutcome(jid, JobState.FAILED, native=code)
        if via_cli:
            outcomes.update(self._query(via_cli))
        self._add_accounting_reasons(own, outcomes)
        return outcomes

    def _add_accounting_reasons(self, own: list[str], outcomes: dict[str, JobOutcome]) -> None:
        """Give failed DRMAA jobs qacct's reason; hold back those not in accounting yet."""
        failed = [
            jid
            for jid in own
            if jid in outcomes
            and outcomes[jid].state is not JobState.SUCCEEDED
            and not outcomes[jid].failed_reason
        ]
        if not failed:
            return
        records = accounting_records({self.name_pattern})
        now = time.monotonic()
        for jid in failed:
            record = records.get(jid)
            first_seen = self.held.pop(jid, (None, now))[1]
            if record is not None and record.failed_code:
                reason = f"{record.failed_code} : {record.failed_reason}"
                outcomes[jid] = replace(outcomes[jid], failed_reason=reason)
            elif (
                record is None
                and outcomes[jid].state is JobState.FAILED
                and not outcomes[jid].in_error_state
                and now - first_seen < REASON_WAIT_S
            ):
                self.held[jid] = (outcomes.pop(jid), first_seen)

    def _query(self, via_cli: Mapping[str, Submission]) -> dict[str, JobOutcome]:
        found = query_states(via_cli, {sub.name_pattern for sub in via_cli.values()})
        now = time.monotonic()
        outcomes = {}
        for jid in via_cli:
            if jid in found:
                self.unknown_since.pop(jid, None)
                outcomes[jid] = found[jid]
            elif now - self.unknown_since.setdefault(jid, now) > VANISHED_AFTER_S:
                reason = f"not in qstat nor in accounting for {VANISHED_AFTER_S:.0f} s"
                outcomes[jid] = JobOutcome(jid, JobState.FAILED, failed_reason=reason)
        return outcomes
