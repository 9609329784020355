"""One status cycle: the outcomes of all active jobs from as few Grid Engine calls as possible.

DRMAA jobs of this driver are reaped from the DRMAA session (no call per job) plus one ``qstat``
to catch jobs stuck in error state, which DRMAA never reports. Jobs of the command-line backend,
and jobs adopted from a killed driver, take one ``qstat`` and, for those that left it, one
``qacct`` per driver run.

A job dispatched while its host's sge_execd was down never reaches it: Grid Engine shows it "t"
until its own resend (after max(300 s, load_report_time), measured 300 s here), or "r" with
nothing running if the execd lost it, which nothing in Grid Engine ever ends (its
``reschedule_unknown`` acts only on hosts silent past ``max_unheard``). Each job seen dispatched
for `UNREPORTED_GRACE_S` is looked up once with ``qstat -j``; one whose execd has reported no
usage of it is deleted (``qdel``) and failed as lost when Grid Engine has removed it (qacct
``failed 21``), so that a rerun places it anew and never runs beside it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from dcflow.states import JobState

from .cancel import cancel_jobs
from .reattach import Submission
from .status import (
    JobOutcome,
    SharedQstat,
    accounting_records,
    native_states,
    query_states,
    read_log,
    run_command,
    started_on_host,
    unreported_tasks,
)

__all__ = ["REASON_WAIT_S", "UNREPORTED_GRACE_S", "VANISHED_AFTER_S", "StatusTracker"]

VANISHED_AFTER_S = 90.0
"""A job absent from qstat and from accounting this long is failed (deleted while pending)."""

REASON_WAIT_S = 30.0
"""How long a failed DRMAA job is held back for its accounting record (the failure reason).

DRMAA reports a job's end before Grid Engine flushes its qacct record; reported at once, a lost
node (qacct ``failed 19``) was classed unknown in 1 run of 2. Held back per job from when its
failure was first seen, then reported with whatever reason is known.
"""

UNREPORTED_GRACE_S = 120.0
"""Seconds a job may be dispatched ("t" or "r") with no usage reported by its execution host
before it is deleted as lost. An execd reports a job it runs at its next load report
(``load_report_time``: 40 s by default, 10 s here); a delivery takes about a second. Grid
Engine's own resend of an undelivered job comes only after 300 s, and a job its execd lost is
never ended by Grid Engine."""


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
    unreported_grace_s : float
        Seconds a dispatched job may go without a usage report before it is deleted as lost.
    """

    def __init__(
        self,
        backend: Any,
        name_pattern: str,
        snapshot: SharedQstat | None = None,
        *,
        unreported_grace_s: float = UNREPORTED_GRACE_S,
    ):
        self.backend = backend
        self.name_pattern = name_pattern
        self.snapshot = snapshot
        self.unreported_grace_s = unreported_grace_s
        self.unknown_since: dict[str, float] = {}
        self.held: dict[str, tuple[JobOutcome, float]] = {}
        self.dispatched_since: dict[str, float] = {}
        self.absent_since: dict[str, float] = {}
        self.reported: set[str] = set()
        self.lost: dict[str, str] = {}

    def poll(self, active: Mapping[str, Submission]) -> dict[str, JobOutcome]:
        """Outcomes known for the ``active`` jobs (by job id).

        A job still queued or running is absent or has a non-terminal state.
        """
        outcomes: dict[str, JobOutcome] = {}
        own = [jid for jid in active if self.backend is not None and self.backend.owns(jid)]
        own_set = set(own)
        via_cli = {jid: sub for jid, sub in active.items() if jid not in own_set}
        live: dict[str, str] = {}
        if own:
            self.backend.reap()
            for jid in own:
                outcome = self.backend.outcome(jid)
                if outcome is not None:
                    outcomes[jid] = outcome
                elif jid in self.held:
                    outcomes[jid] = self.held[jid][0]
            waiting = [jid for jid in own if jid not in outcomes]
            for jid, code in native_states(waiting, self.snapshot).items():
                if "E" in code:
                    outcomes[jid] = JobOutcome(jid, JobState.FAILED, native=code)
                else:
                    live[jid] = code
            via_cli.update(self._gone_unreaped(waiting, live, active))
        if via_cli:
            found = self._query(via_cli)
            outcomes.update(found)
            live.update({jid: o.native for jid, o in found.items() if not o.finished})
        self._add_accounting_reasons(own, outcomes)
        self._delete_unreported(live, active)
        for jid, outcome in outcomes.items():
            if jid in self.lost and outcome.finished:
                outcomes[jid] = replace(outcome, state=JobState.FAILED, lost=self.lost.pop(jid))
            if outcome.finished:
                self.absent_since.pop(jid, None)
                self.reported.discard(jid)
        return outcomes

    def _gone_unreaped(
        self, waiting: list[str], live: Mapping[str, str], active: Mapping[str, Submission]
    ) -> dict[str, Submission]:
        """DRMAA jobs out of ``qstat`` for `VANISHED_AFTER_S` that DRMAA never reported.

        DRMAA reaps a job deleted before it ran without its id ("no usage information"), so
        it would wait on it forever: such jobs are looked up like the command line's.
        """
        now = time.monotonic()
        gone = {}
        for jid in waiting:
            if jid in live:
                self.absent_since.pop(jid, None)
            elif now - self.absent_since.setdefault(jid, now) > VANISHED_AFTER_S or (
                jid in self.lost
            ):
                gone[jid] = active[jid]
        return gone

    def _delete_unreported(self, live: Mapping[str, str], active: Mapping[str, Submission]) -> None:
        """Delete the jobs dispatched for `unreported_grace_s` that no execd has reported.

        ``live``: native states of the active jobs still in ``qstat``. Each job is looked up
        (one ``qstat -j`` for all due) until its execd is seen reporting it, then never again.
        A job with no usage whose log shows it started on its host ran: its end is only
        reported late (after a qmaster restart), and it is waited for, never deleted.
        """
        now = time.monotonic()
        for jid in set(self.dispatched_since) - live.keys():
            del self.dispatched_since[jid]
        due = []
        for jid, code in live.items():
            if jid in self.reported or jid in self.lost or "d" in code:
                continue
            if "t" in code or "r" in code:
                since = self.dispatched_since.setdefault(jid, now)
                if now - since >= self.unreported_grace_s:
                    due.append(jid)
        if not due:
            return
        numbers = sorted({jid.partition(".")[0] for jid in due}, key=int)
        text = run_command(["qstat", "-j", ",".join(numbers)], ok_codes=(0, 1)).stdout
        silent = unreported_tasks(text, due)
        silent -= {jid for jid in silent if started_on_host(read_log(active[jid].log), jid)}
        self.reported.update(set(due) - silent)
        if not silent:
            return
        cancel_jobs(silent)
        for jid in silent:
            waited = now - self.dispatched_since[jid]
            self.lost[jid] = (
                f"no report from its execution host {waited:.0f} s after dispatch (Grid Engine "
                f"state {live[jid]}: its sge_execd never ran it); deleted, to be placed anew"
            )

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
