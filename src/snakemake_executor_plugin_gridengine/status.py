"""Grid Engine job states: parsing ``qstat -xml`` and ``qacct -j`` output, and the bulk query.

The parsers are pure functions over the command output (tested on recorded output in
tests/gridengine/). :func:`query_states` runs one ``qstat`` for all active jobs and, only for the
jobs that have left ``qstat``, one ``qacct`` per job-name pattern (one per driver run).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from snakemake_interface_common.exceptions import WorkflowError

from dcflow.states import JobState

__all__ = [
    "COMMAND_TIMEOUT_S",
    "MEMORY_PATTERNS",
    "NATIVE_STATE_LETTERS",
    "SHARED_QSTAT_MAX_AGE_S",
    "AccountingRecord",
    "GridEngineCommandError",
    "JobOutcome",
    "SharedQstat",
    "accounting_records",
    "describe_failure",
    "expand_task_ids",
    "failure_cause",
    "jobs_in_error_state",
    "native_state",
    "native_states",
    "outcome_from_accounting",
    "parse_memory_mb",
    "parse_qacct",
    "parse_qstat_xml",
    "query_states",
    "read_log",
    "read_log_tail",
    "run_command",
    "started_on_host",
    "unreported_tasks",
]

COMMAND_TIMEOUT_S = 60.0
"""Timeout of one qsub/qstat/qacct/qdel call, in seconds."""

SHARED_QSTAT_MAX_AGE_S = 10.0
"""Age of a `SharedQstat` snapshot beyond which it is taken again: a job stuck in error state
("Eqw", which DRMAA never reports) is seen at most this much later."""


# One table from native state letters to the project's JobState, in priority order: "Eqw" (error
# state: it will never run unless an operator clears it) is a failure, "dr" a running job being
# deleted, "hqw" a held pending job.
NATIVE_STATE_LETTERS: tuple[tuple[str, JobState], ...] = (
    ("E", JobState.FAILED),
    ("r", JobState.RUNNING),
    ("t", JobState.RUNNING),
    ("s", JobState.RUNNING),
    ("S", JobState.RUNNING),
    ("T", JobState.RUNNING),
    ("R", JobState.SUBMITTED),
    ("h", JobState.SUBMITTED),
    ("w", JobState.SUBMITTED),
    ("q", JobState.SUBMITTED),
    ("d", JobState.RUNNING),
)


class GridEngineCommandError(WorkflowError):
    """A Grid Engine command failed; the message holds the command, exit code and stderr."""

    def __init__(self, argv: list[str], returncode: int | None, stderr: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        what = "timed out" if returncode is None else f"exited with {returncode}"
        super().__init__(f"{' '.join(argv)} {what}: {stderr.strip()}")


def run_command(
    argv: list[str], *, timeout_s: float = COMMAND_TIMEOUT_S, ok_codes: Iterable[int] = (0,)
) -> subprocess.CompletedProcess:
    """Run a Grid Engine command from an argv list (no shell) and return its completed process.

    Raises
    ------
    GridEngineCommandError
        If the command is missing, times out, or exits with a code not in ``ok_codes``.
    """
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as err:
        raise GridEngineCommandError(argv, None, f"no answer within {timeout_s} s") from err
    except OSError as err:
        raise GridEngineCommandError(argv, None, str(err)) from err
    if proc.returncode not in tuple(ok_codes):
        raise GridEngineCommandError(argv, proc.returncode, proc.stderr or proc.stdout)
    return proc


def native_state(code: str) -> JobState | None:
    """Map a ``qstat`` state code ("qw", "r", "Eqw", "dr", ...) to a JobState (None: unknown)."""
    for letter, state in NATIVE_STATE_LETTERS:
        if letter in code:
            return state
    return None


def expand_task_ids(tasks: str) -> list[int]:
    """Expand a qstat task field ("7", "1-5:1", "2,4-6:2") into task numbers."""
    numbers: list[int] = []
    for part in tasks.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if m is None:
            raise ValueError(f"tasks: cannot parse qstat task range {tasks!r}")
        first = int(m.group(1))
        last = int(m.group(2) or first)
        step = int(m.group(3) or 1)
        numbers.extend(range(first, last + 1, step))
    return numbers


def parse_qstat_xml(text: str) -> dict[str, str]:
    """Parse ``qstat -xml`` into ``{job id: native state}``.

    Array tasks are keyed ``"<job>.<task>"``; a pending range ("1-5:1") is expanded.
    """
    states: dict[str, str] = {}
    if not text.strip():
        return states
    root = ET.fromstring(text)
    for entry in root.iter("job_list"):
        number = entry.findtext("JB_job_number", "").strip()
        code = entry.findtext("state", "").strip()
        tasks = entry.findtext("tasks")
        if tasks is None or not tasks.strip():
            states[number] = code
        else:
            for task in expand_task_ids(tasks):
                states[f"{number}.{task}"] = code
    return states


@dataclass(frozen=True, slots=True)
class AccountingRecord:
    """One finished job (or array task) from the accounting file."""

    job_id: str
    job_name: str
    failed_code: int
    failed_reason: str
    exit_status: int
    maxvmem_mb: float
    wallclock_s: float
    category: str


_MEMORY_UNITS = {"B": 1 / 2**20, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2}


def parse_memory_mb(value: str) -> float:
    """Parse a Grid Engine memory figure ("3.465MB", "1.2G", "0.000B", "2048") into MiB."""
    m = re.fullmatch(r"([0-9.]+)\s*([KMGT]?)B?", value.strip(), flags=re.IGNORECASE)
    if m is None:
        raise ValueError(f"value: cannot parse Grid Engine memory figure {value!r}")
    unit = m.group(2).upper() or "B"
    return float(m.group(1)) * _MEMORY_UNITS[unit]


def _seconds(value: str) -> float:
    m = re.match(r"[0-9.]+", value.strip())
    return float(m.group(0)) if m else 0.0


def parse_qacct(text: str) -> dict[str, AccountingRecord]:
    """Parse ``qacct -j`` output into ``{job id: record}``; array tasks are ``"<job>.<task>"``.

    When a job id appears more than once, the last record (the newest) wins.
    """
    records: dict[str, AccountingRecord] = {}
    for block in re.split(r"^=+\s*$", text, flags=re.MULTILINE):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.strip().partition(" ")
            if key:
                fields[key] = value.strip()
        if "jobnumber" not in fields:
            continue
        task = fields.get("taskid", "undefined")
        job_id = (
            fields["jobnumber"]
            if task in ("undefined", "0", "")
            else f"{fields['jobnumber']}.{task}"
        )
        failed = fields.get("failed", "0")
        code, _, reason = failed.partition(":")
        records[job_id] = AccountingRecord(
            job_id=job_id,
            job_name=fields.get("jobname", ""),
            failed_code=int(code.strip() or 0),
            failed_reason=reason.strip(),
            exit_status=int(fields.get("exit_status", "0").split()[0]),
            maxvmem_mb=parse_memory_mb(fields.get("maxvmem", "0B")),
            wallclock_s=_seconds(fields.get("ru_wallclock", "0")),
            category=fields.get("category", ""),
        )
    return records


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What is known about one job: its state and, once finished, how it ended."""

    job_id: str
    state: JobState
    native: str = ""
    exit_status: int | None = None
    signal: str | None = None
    failed_reason: str | None = None
    aborted: bool = False
    maxvmem_mb: float | None = None
    wallclock_s: float | None = None
    lost: str | None = None
    """Why the plugin deleted the job as lost (`tracker.StatusTracker`), if it did."""

    @property
    def finished(self) -> bool:
        """True once the job has ended, well or badly (or sits in Grid Engine's error state)."""
        return self.state.is_terminal()

    @property
    def in_error_state(self) -> bool:
        """True for a job Grid Engine holds in error state ("Eqw"): it must be deleted."""
        return "E" in self.native


def outcome_from_accounting(record: AccountingRecord) -> JobOutcome:
    """Judge a finished job from its accounting record: success only for exit 0 and failed 0."""
    ok = record.exit_status == 0 and record.failed_code == 0
    signal = None
    if record.exit_status > 128:
        signal = str(record.exit_status - 128)
    reason = None
    if record.failed_code:
        reason = f"{record.failed_code} : {record.failed_reason}".strip(" :")
    return JobOutcome(
        job_id=record.job_id,
        state=JobState.SUCCEEDED if ok else JobState.FAILED,
        exit_status=record.exit_status,
        signal=signal,
        failed_reason=reason,
        aborted=record.failed_code != 0 and "deleted" in record.failed_reason.lower(),
        maxvmem_mb=record.maxvmem_mb,
        wallclock_s=record.wallclock_s,
    )


def query_states(job_ids: Iterable[str], name_patterns: Iterable[str]) -> dict[str, JobOutcome]:
    """One bulk status query for ``job_ids``.

    Runs ``qstat -xml`` once; jobs absent from it, and jobs in error state (whose reason is in
    accounting), are looked up with one ``qacct -j <pattern>`` per job-name pattern (each
    driver run names its jobs with its own tag).

    Returns
    -------
    dict of str to JobOutcome
        The jobs found; a job in neither qstat nor accounting is left out (its accounting
        record may not have been flushed yet).
    """
    wanted = set(job_ids)
    if not wanted:
        return {}
    live = parse_qstat_xml(run_command(["qstat", "-xml"]).stdout)
    outcomes: dict[str, JobOutcome] = {}
    for jid in wanted & live.keys():
        state = native_state(live[jid])
        if state is not None:
            outcomes[jid] = JobOutcome(jid, state, native=live[jid])
    missing = {jid for jid in wanted if jid not in outcomes or outcomes[jid].in_error_state}
    if missing:
        for pattern in sorted(set(name_patterns)):
            # qacct exits 1 with "job name ... not found" when nothing matches yet.
            proc = run_command(["qacct", "-j", pattern], ok_codes=(0, 1))
            for jid, record in parse_qacct(proc.stdout).items():
                if jid in missing:
                    outcome = outcome_from_accounting(record)
                    if jid in outcomes:  # still listed in error state: add the reason
                        outcome = replace(outcomes[jid], failed_reason=outcome.failed_reason)
                    outcomes[jid] = outcome
    return outcomes


def unreported_tasks(text: str, job_ids: Iterable[str]) -> set[str]:
    """Which of ``job_ids`` ``qstat -j`` lists with no usage reported by an execution host.

    A dispatched job's usage line reads ``vmem=N/A`` until the execd running it reports it
    (each ``load_report_time``); one that never reached its execd (dispatched while sge_execd
    was down: state "t" until Grid Engine's own resend after 300 s) or that its execd lost
    (state "r" with nothing running) keeps it, or has no usage line. Jobs absent from ``text``
    (ended meanwhile) are not listed.

    Parameters
    ----------
    text : str
        Output of ``qstat -j <job numbers>`` (blocks separated by lines of ``=``).
    job_ids : iterable of str
        ``"<job>"`` or array task ``"<job>.<task>"``; a plain job's usage is that of task 1.
    """
    usage: dict[str, dict[str, str]] = {}
    for block in re.split(r"^=+\s*$", text, flags=re.MULTILINE):
        number = re.search(r"^job_number:\s+(\d+)", block, flags=re.MULTILINE)
        if number is None:
            continue
        tasks = usage.setdefault(number.group(1), {})
        for task, fields in re.findall(r"^usage\s+(\d+):\s+(.*)$", block, flags=re.MULTILINE):
            vmem = re.search(r"\bvmem=([^,\s]+)", fields)
            tasks[task] = vmem.group(1) if vmem else "N/A"
    unreported = set()
    for jid in job_ids:
        number, _, task = jid.partition(".")
        if number in usage and usage[number].get(task or "1", "N/A") == "N/A":
            unreported.add(jid)
    return unreported


def started_on_host(log_text: str, job_id: str) -> bool:
    """Whether a job's log holds the line its script writes first on its host (`job_script`).

    Tells a job that ran but whose end Grid Engine has not reported (after a qmaster restart
    sge_execd holds back for 600 s the end of jobs of a DRMAA or ``qsub -sync`` session, and a
    job shorter than ``load_report_time`` shows no usage meanwhile) from one its execd never
    ran (no line).

    Parameters
    ----------
    log_text : str
        The job's log (appended to by every attempt of the same job).
    job_id : str
        ``"<job>"`` or array task ``"<job>.<task>"``.
    """
    number, _, task = job_id.partition(".")
    task_pattern = re.escape(task) if task else r"\S*"
    header = rf"^== gridengine job {re.escape(number)} task {task_pattern} on "
    return re.search(header, log_text, flags=re.MULTILINE) is not None


def read_log(path: str) -> str:
    """A job's whole log ("" when it does not exist)."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def read_log_tail(path: str, n_bytes: int = 4096) -> str:
    """The last ``n_bytes`` of a job's log ("" when it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - n_bytes))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def native_states(job_ids: Iterable[str], snapshot: SharedQstat | None = None) -> dict[str, str]:
    """``{job id: native state}`` of those of ``job_ids`` still in ``qstat``, from one call.

    With a ``snapshot`` the ``qstat`` is the one shared by every driver of the working
    directory.
    """
    wanted = set(job_ids)
    if not wanted:
        return {}
    if snapshot is not None:
        live = snapshot.states()
    else:
        live = parse_qstat_xml(run_command(["qstat", "-xml"]).stdout)
    return {jid: code for jid, code in live.items() if jid in wanted}


def jobs_in_error_state(
    job_ids: Iterable[str], snapshot: SharedQstat | None = None
) -> dict[str, str]:
    """Which of ``job_ids`` Grid Engine holds in error state ("Eqw"), from one ``qstat``.

    DRMAA reports a job only once it has ended, and a job in error state never ends.
    """
    return {jid: code for jid, code in native_states(job_ids, snapshot).items() if "E" in code}


class SharedQstat:
    """One ``qstat -xml`` shared by every process that watches jobs of one working directory.

    A sharded run has one Snakemake per running shard, each checking its jobs every few
    seconds; a ``qstat`` of a 700-job queue each time, in each of them, cost more driver CPU
    than everything else per job. The parsed states are kept in ``path`` (JSON, replaced
    atomically); a caller takes them from there while they are younger than ``max_age_s``,
    otherwise it runs ``qstat`` under an exclusive lock (``path`` + ``.lock``), so that at most
    one ``qstat`` per ``max_age_s`` runs for the whole cluster's jobs of the campaign.

    Parameters
    ----------
    path : path-like
        The snapshot file (its directory must exist).
    max_age_s : float
        Age in seconds beyond which a snapshot is taken again.
    """

    def __init__(self, path: str | os.PathLike, *, max_age_s: float) -> None:
        self.path = Path(path)
        self.max_age_s = max_age_s

    def _read_fresh(self) -> dict[str, str] | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or time.time() - float(data.get("taken", 0)) > self.max_age_s:
            return None
        return dict(data.get("states") or {})

    def states(self) -> dict[str, str]:
        """``{job id: native state}`` of every job of this user, at most ``max_age_s`` old."""
        fresh = self._read_fresh()
        if fresh is not None:
            return fresh
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            fresh = self._read_fresh()  # another process may have taken it meanwhile
            if fresh is not None:
                return fresh
            taken = time.time()
            live = parse_qstat_xml(run_command(["qstat", "-xml"]).stdout)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps({"taken": taken, "states": live}))
            os.replace(tmp, self.path)
            return live


def accounting_records(name_patterns: Iterable[str]) -> Mapping[str, AccountingRecord]:
    """All accounting records whose job name matches one of ``name_patterns``."""
    records: dict[str, AccountingRecord] = {}
    for pattern in sorted(set(name_patterns)):
        proc = run_command(["qacct", "-j", pattern], ok_codes=(0, 1))
        records.update(parse_qacct(proc.stdout))
    return records


MEMORY_PATTERNS = (
    "MemoryError",
    "Cannot allocate memory",
    "std::bad_alloc",
    "Out of memory",
    "out of memory",
    "unable to allocate",
)
"""Log phrases of a process that hit its address-space limit (h_vmem is an rlimit)."""


def failure_cause(
    outcome: JobOutcome,
    *,
    h_vmem_mb: int | None,
    h_rt_s: int | None,
    slots: int,
    log_tail: str,
) -> str | None:
    """Name the limit a failed job most likely hit: ``"memory"``, ``"runtime"`` or None.

    Under h_vmem an allocation fails (the job usually exits 1 with a MemoryError) or Grid
    Engine kills the job (qacct failed 37); under h_rt it is killed at the limit.
    """
    killed = outcome.signal is not None or (outcome.failed_reason or "").startswith("37")
    if h_rt_s and killed and (outcome.wallclock_s or 0) >= h_rt_s - 1:
        return "runtime"
    if any(p in log_tail for p in MEMORY_PATTERNS):
        return "memory"
    if h_vmem_mb and (outcome.maxvmem_mb or 0) >= 0.9 * h_vmem_mb * slots:
        return "memory"
    return None


def describe_failure(
    outcome: JobOutcome,
    *,
    log: str,
    h_vmem_mb: int | None = None,
    h_rt_s: int | None = None,
    slots: int = 1,
    log_tail: str = "",
) -> str:
    """One line saying how a job failed: exit status, signal, qacct reason, limit, log path.

    The job's exit status is that of the Snakemake process running the rule in the job; the
    rule command's own status is taken from the log when Snakemake printed it there.
    """
    parts = []
    if outcome.lost:
        parts.append(f"lost: {outcome.lost}")
    if outcome.in_error_state:
        parts.append("Grid Engine put the job in error state (E); it was deleted")
    if outcome.aborted or outcome.state is JobState.CANCELLED:
        parts.append("deleted (qdel) or never started")
    if outcome.exit_status is not None:
        parts.append(f"exit status {outcome.exit_status}")
    command_exit = re.findall(r"returned non-zero exit status (\d+)", log_tail)
    if command_exit:
        parts.append(f"rule command exit status {command_exit[-1]}")
    if outcome.signal:
        parts.append(f"killed by signal {outcome.signal}")
    if outcome.failed_reason:
        parts.append(f"qacct failed {outcome.failed_reason}")
    cause = failure_cause(
        outcome, h_vmem_mb=h_vmem_mb, h_rt_s=h_rt_s, slots=slots, log_tail=log_tail
    )
    if cause == "memory":
        limit = f"h_vmem={h_vmem_mb}M per slot x {slots}" if h_vmem_mb else "no h_vmem asked"
        parts.append(
            f"memory failure: out of memory ({limit}, peak vmem {outcome.maxvmem_mb or 0:.0f} MiB);"
            " raise mem_mb, e.g. make it grow with attempt and use --retries"
        )
    elif cause == "runtime":
        parts.append(f"run time limit h_rt={h_rt_s} s exceeded; raise runtime (minutes)")
    parts.append(f"log: {log}")
    return f"Grid Engine job {outcome.job_id} failed: " + "; ".join(parts) + "\n"
