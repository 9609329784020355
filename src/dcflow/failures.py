"""Failure classes: one declarative table of failure signatures, each class mapped to an action.

A failed attempt is classified from what the ledger holds of it (state, exit code, exception
class, backend, reason text). The reason text is what the job log's ``DCFLOW-FAILURE`` line or
the executor plugin said: the Grid Engine plugin names the limit it judged from qacct
(``memory failure: out of memory``, when maxvmem is near h_vmem or the log shows an allocation
failure; ``run time limit h_rt=... exceeded``) and the qacct ``failed`` code; the DIRAC plugin
gives the job's status, minor and application status. So the signatures read one vocabulary
for every backend, and recorded backend output is classified the same way live output is.

The first signature that matches wins; a signature matches when every criterion it gives
matches. Actions are what ``dcflow rerun --failed`` does with the tile; a profile may change
them (``failure_actions`` in its ``dcflow.yaml``, see `FailurePolicy`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum

from dcflow.configs import check_fields, config_field
from dcflow.errors import StageError
from dcflow.joblog import InjectedFaultError
from dcflow.states import JobState

__all__ = [
    "SIGNATURES",
    "FailureAction",
    "FailureClass",
    "FailurePolicy",
    "Signature",
    "classify",
    "counts_by_class",
    "escalated_runtime",
    "stage_error_names",
]


class FailureClass(StrEnum):
    """Why an attempt failed, as far as its exit state and log tell."""

    MEMORY = "memory"
    """Out of memory: MemoryError, an allocation failure, an OOM kill, maxvmem at h_vmem."""

    WALLTIME = "walltime"
    """Killed at its run-time limit: h_rt, SIGXCPU / SIGUSR1, a DIRAC CPU or wall-clock limit."""

    NODE_LOST = "node_lost"
    """The node or pilot went away: Grid Engine host failure, DIRAC Stalled or Killed, lost."""

    BAD_INPUT = "bad_input"
    """A StageError: the input data are bad (corrupt FITS, failed calibration); a retry fails
    the same way."""

    TRANSIENT_IO = "transient_io"
    """An I/O error of the site (disk full, EIO, stale NFS handle): someone should look first."""

    UNKNOWN = "unknown"
    """No signature matched (an ordinary exception, a non-zero exit)."""


class FailureAction(StrEnum):
    """What ``rerun --failed`` does with a tile whose last attempt failed."""

    RETRY_MORE_MEMORY = "retry_more_memory"
    """Rerun asking for more mem_mb (the ledger's memory escalation)."""

    RETRY_MORE_TIME = "retry_more_time"
    """Rerun asking for more runtime (`escalated_runtime`)."""

    RETRY_ELSEWHERE = "retry_elsewhere"
    """Rerun as it was: the batch system places it on another node or pilot."""

    RETRY = "retry"
    """Rerun as it was."""

    FAIL_AT_ONCE = "fail_at_once"
    """Do not rerun: the same input fails the same way (``--include-class`` overrides)."""

    HOLD_FOR_REVIEW = "hold_for_review"
    """Do not rerun until an operator has looked (``--include-class`` overrides)."""

    def reruns(self) -> bool:
        """True if ``rerun --failed`` reruns tiles with this action by default."""
        return self not in (FailureAction.FAIL_AT_ONCE, FailureAction.HOLD_FOR_REVIEW)


def stage_error_names() -> frozenset[str]:
    """Class names of the StageError family (bad input), the fault knob's drill error excepted."""
    found, todo = set(), [StageError]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return frozenset(found - {InjectedFaultError.__name__})


@dataclass(frozen=True, slots=True)
class Signature:
    """One row of the catalog: criteria (all given ones must match) and the class they mean.

    Attributes
    ----------
    failure_class : FailureClass
        The class an attempt matching this row has.
    what : str
        The evidence in words.
    error_classes : frozenset of str, optional
        Exception class names (from the job log's failure line).
    exit_codes : frozenset of int, optional
        Exit codes (``128 + n`` and ``-n`` both stand for signal n).
    pattern : str, optional
        Regular expression searched in the reason text (case-insensitive).
    backends : frozenset of str, optional
        Backends the row applies to (the ledger's ``backend``: ``local``, ``gridengine``...).
    states : frozenset of JobState, optional
        Ledger states the row applies to.
    """

    failure_class: FailureClass
    what: str
    error_classes: frozenset[str] | None = None
    exit_codes: frozenset[int] | None = None
    pattern: str | None = None
    backends: frozenset[str] | None = None
    states: frozenset[JobState] | None = None

    def matches(
        self,
        *,
        state: JobState,
        exit_code: int | None,
        error_class: str | None,
        reason: str,
        backend: str | None,
    ) -> bool:
        """True if every criterion this row gives holds for the attempt."""
        return (
            (self.states is None or state in self.states)
            and (self.error_classes is None or error_class in self.error_classes)
            and (self.exit_codes is None or exit_code in self.exit_codes)
            and (self.backends is None or backend in self.backends)
            and (self.pattern is None or re.search(self.pattern, reason, re.IGNORECASE) is not None)
        )


def _signal_codes(*signals: int) -> frozenset[int]:
    return frozenset([*(128 + s for s in signals), *(-s for s in signals)])


_SIGKILL, _SIGUSR1, _SIGXCPU = 9, 10, 24

SIGNATURES: tuple[Signature, ...] = (
    Signature(FailureClass.BAD_INPUT, "a StageError raised by the job", stage_error_names()),
    Signature(FailureClass.MEMORY, "Python MemoryError in the job", frozenset({"MemoryError"})),
    Signature(
        FailureClass.MEMORY,
        "an allocation failure or OOM kill in the log, Grid Engine's maxvmem at h_vmem, a DIRAC"
        " memory status",
        pattern=r"memory failure|MemoryError|out of memory|oom[- ]?kill|Cannot allocate memory"
        r"|std::bad_alloc|unable to allocate|exceeded\b.*\bmemory|memory\b.*\bexceeded"
        r"|memory limit",
    ),
    Signature(
        FailureClass.MEMORY,
        "SIGKILL of a local job: nobody but the kernel's OOM killer sends it",
        exit_codes=_signal_codes(_SIGKILL),
        backends=frozenset({"local"}),
    ),
    Signature(
        FailureClass.WALLTIME,
        "SIGXCPU or SIGUSR1: the batch system's run-time warning signals",
        exit_codes=_signal_codes(_SIGXCPU, _SIGUSR1),
    ),
    Signature(
        FailureClass.WALLTIME,
        "h_rt exceeded or s_rt / s_cpu's signal (Grid Engine), a DIRAC CPU or wall-clock limit,"
        " a watchdog's stalled job",
        pattern=r"run ?time limit|h_rt=\d+ s exceeded|wall[- ]?clock (time )?limit"
        r"|CPU (time )?limit|exceeded\b.*\bCPU|identified this job as stalled"
        r"|killed by signal (SIGXCPU|SIGUSR1)\b",
    ),
    Signature(
        FailureClass.TRANSIENT_IO,
        "an I/O error of the site: no space left, EIO, a stale NFS handle",
        pattern=r"No space left on device|ENOSPC|Input/output error|\bEIO\b|Stale file handle"
        r"|ESTALE|Disk quota exceeded|EDQUOT|\[Errno (5|28|116|122)\]",
    ),
    Signature(
        FailureClass.NODE_LOST,
        "a Grid Engine host failure before or around the job (qacct failed 1-36, error state,"
        " a dispatched job its execution host never reported)",
        pattern=r"qacct failed (?:[1-9]|[12][0-9]|3[0-6]) :|put the job in error state"
        r"|no report from its execution host",
    ),
    Signature(
        FailureClass.NODE_LOST,
        "DIRAC Stalled (the pilot stopped its heartbeat) or Killed with no exit of the payload",
        pattern=r"DIRAC job \d+ (Stalled|Killed)|pilot not running|Received Kill signal",
    ),
    Signature(
        FailureClass.NODE_LOST,
        "lost: the attempt was running when its driver or node went away",
        states=frozenset({JobState.LOST}),
    ),
)
"""The catalog, in priority order (the first matching row decides)."""


def classify(
    *,
    state: JobState = JobState.FAILED,
    exit_code: int | None = None,
    error_class: str | None = None,
    reason: str | None = None,
    backend: str | None = None,
) -> FailureClass:
    """The class of a failed (or lost) attempt: the first `SIGNATURES` row it matches.

    Parameters
    ----------
    state : JobState
        The attempt's ledger state.
    exit_code : int, optional
        Exit code of the job (``128 + n`` or ``-n`` for signal n).
    error_class : str, optional
        Exception class named by the job log's failure line.
    reason : str, optional
        What the job log or the executor plugin said about the failure.
    backend : str, optional
        The ledger's backend of the attempt.
    """
    for row in SIGNATURES:
        if row.matches(
            state=state,
            exit_code=exit_code,
            error_class=error_class,
            reason=reason or "",
            backend=backend,
        ):
            return row.failure_class
    return FailureClass.UNKNOWN


_ACTIONS = {a.value: a.__doc__ or "" for a in FailureAction}


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """The action for each failure class, and how far run time grows after a time-limit kill.

    A profile overrides it with ``failure_actions:`` in its ``dcflow.yaml``.
    """

    memory: str = config_field(
        "retry_more_memory", "Action after an out-of-memory failure", choices=_ACTIONS
    )
    walltime: str = config_field(
        "retry_more_time", "Action after a run-time limit kill", choices=_ACTIONS
    )
    node_lost: str = config_field(
        "retry_elsewhere", "Action after a lost node or pilot", choices=_ACTIONS
    )
    bad_input: str = config_field(
        "fail_at_once", "Action after a StageError (bad input data)", choices=_ACTIONS
    )
    transient_io: str = config_field(
        "hold_for_review",
        "Action after a site I/O error (disk full, EIO, stale handle)",
        choices=_ACTIONS,
    )
    unknown: str = config_field("retry", "Action when no signature matched", choices=_ACTIONS)
    runtime_factor: float = config_field(
        2.0, "Multiplier applied to runtime after a run-time limit kill, dimensionless", minimum=1.0
    )
    runtime_cap_min: int = config_field(
        10080, "Largest runtime escalation may ask for, minutes", minimum=1
    )

    def __post_init__(self) -> None:
        check_fields(self)

    def action(self, failure_class: FailureClass | str) -> FailureAction:
        """The action for a class."""
        return FailureAction(getattr(self, FailureClass(failure_class).value))

    def as_dict(self) -> dict[str, str]:
        """``{class: action}`` for every class."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in _CLASS_NAMES}


_CLASS_NAMES = frozenset(c.value for c in FailureClass)


def escalated_runtime(
    history: Iterable[tuple[str, str, JobState, str | None, int | None]],
    defaults: Mapping[str, int],
    policy: FailurePolicy,
) -> dict[tuple[str, str], int]:
    """Runtime (minutes) each tile must ask for next, after run-time limit kills.

    Parameters
    ----------
    history : iterable of (rule, data_id, state, failure_class, runtime_min_asked)
        Attempts in ledger order; ``runtime_min_asked`` None means the rule default.
    defaults : mapping
        Per rule, the default runtime (minutes).
    policy : FailurePolicy
        Factor and cap.

    Returns
    -------
    dict
        ``(rule, data_id) -> runtime`` (minutes), only for tiles whose last time-limit kill
        has not been followed by a success.
    """
    need: dict[tuple[str, str], int] = {}
    for rule, data_id, state, failure_class, asked in history:
        key = (rule, data_id)
        if state is JobState.FAILED and failure_class == FailureClass.WALLTIME:
            base = asked if asked is not None else need.get(key, defaults.get(rule, 0))
            if base:
                grown = min(policy.runtime_cap_min, math.ceil(base * policy.runtime_factor))
                need[key] = max(need.get(key, 0), grown)
        elif state is JobState.SUCCEEDED:
            need.pop(key, None)
    return need


def counts_by_class(
    attempts: Iterable[tuple[str | None, str | None]],
) -> dict[str, dict[str, int]]:
    """Per stage, how many failed tiles each class holds (for the dashboard and the report).

    Parameters
    ----------
    attempts : iterable of (rule, failure_class)
        One entry per failed tile (e.g. `dcflow.ledger.Ledger.failure_counts` feeds it).
    """
    out: dict[str, dict[str, int]] = {}
    for rule, failure_class in attempts:
        per = out.setdefault(str(rule), {})
        name = failure_class or FailureClass.UNKNOWN.value
        per[name] = per.get(name, 0) + 1
    return out
