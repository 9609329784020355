"""Logging set-up shared by the thin scripts that Snakemake rules call, and the fault knob.

A failing job writes one machine-readable line to its log (``DCFLOW-FAILURE {json}``) beside
the human message, so the run ledger can store the error class, its metadata and whether the
job ran out of memory, without guessing from free text.

Fault knob (tests and drills): the environment variable ``DCFLOW_FAULTS`` lists
``rule:tile[:mode]`` entries separated by ``;``. A job whose log is ``.../<rule>/<tile>.log``
(the layout's ``log`` template) fails before doing any work: mode ``error`` (default) raises
`InjectedFaultError`; mode ``memory`` raises `MemoryError`, as a job killed for memory would;
mode ``vmem`` really allocates past the job's address-space limit (``RLIMIT_AS``, which Grid
Engine sets from ``h_vmem``): the kernel refuses and Python raises `MemoryError` (with no limit
set, as on the local backend, it raises `MemoryError` saying so); mode ``exit<N>`` (``exit3``)
ends the process with exit code N and no failure record, as a crashing program would. Example:
``DCFLOW_FAULTS="process_visit:visit=1003;bias:ccd=2:memory"``.
When ``DCFLOW_FAULTS_ONCE`` names a directory, each entry fires once only (a marker file per
tile there, created exclusively), so a rerun of the tile succeeds: a transient fault (chaos
drills, benchmarks/chaos.py).

Run-time limits: a batch system warns a job before it kills it at its limit (Grid Engine sends
SIGUSR1 at ``s_rt`` and SIGXCPU at ``s_cpu``; the kernel sends SIGXCPU at ``RLIMIT_CPU``).
`run_logged` turns either signal into `RunTimeLimitError`, so the job's failure line says "run
time limit" and the ledger classes the attempt ``walltime`` (Python would otherwise die of
SIGUSR1 without a word, and of SIGXCPU with a core dump).
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcflow.errors import StageError

__all__ = [
    "FAILURE_TAG",
    "FAULTS_ENV",
    "FAULTS_ONCE_ENV",
    "FailureRecord",
    "InjectedFaultError",
    "RunTimeLimitError",
    "fault_for",
    "is_memory_text",
    "parse_faults",
    "read_failure",
    "run_logged",
]

FAULTS_ENV = "DCFLOW_FAULTS"
"""Environment variable naming the tiles that must fail (see the module docstring)."""

FAULTS_ONCE_ENV = "DCFLOW_FAULTS_ONCE"
"""Environment variable: a directory; when set, each fault of the knob fires once only."""

FAILURE_TAG = "DCFLOW-FAILURE "
"""Prefix of the machine-readable failure line a failing job writes to its log."""

FAULT_MODES = ("error", "memory", "vmem")

_MEMORY_TEXT = re.compile(
    r"MemoryError|out of memory|oom[- ]?kill|h_vmem|exceeded.*memory|memory.*exceeded|"
    r"std::bad_alloc|Cannot allocate memory",
    re.IGNORECASE,
)


class InjectedFaultError(StageError):
    """A failure injected by the ``DCFLOW_FAULTS`` fault knob (tests and operator drills)."""


class RunTimeLimitError(Exception):
    """The batch system (or the kernel) signalled that the job reached its run-time limit."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"run time limit: {name} received ({_LIMIT_SIGNALS[signum]}); the job stopped"
            " before its end: raise its runtime"
        )
        self.exit_code = 128 + signum


_LIMIT_SIGNALS = {
    signal.SIGUSR1: "Grid Engine's soft wall-clock limit s_rt",
    signal.SIGXCPU: "a CPU-time limit: RLIMIT_CPU, Grid Engine's s_cpu",
}


def _raise_limit(signum: int, frame: object) -> None:
    raise RunTimeLimitError(signum)


@dataclass(frozen=True, slots=True)
class FailureRecord:
    """Why a job failed, as read back from its log.

    Attributes
    ----------
    error_class : str
        Exception class name (``MemoryError``, ``CalibrationError``...).
    message : str
        The exception message.
    metadata : dict
        The StageError metadata (JSON-safe numbers and strings); empty for other errors.
    memory : bool
        True if the job failed for lack of memory.
    exit_code : int
        Exit code of the job's process (1 for a Python exception).
    """

    error_class: str
    message: str
    metadata: Mapping[str, Any]
    memory: bool
    exit_code: int


def is_memory_text(text: str) -> bool:
    """True if an error text says the job ran out of memory (Python, Linux OOM, Grid Engine)."""
    return bool(_MEMORY_TEXT.search(text))


def parse_faults(text: str) -> dict[tuple[str, str], str]:
    """Parse a ``DCFLOW_FAULTS`` value into ``{(rule, tile): mode}``.

    Raises
    ------
    ValueError
        If an entry lacks ``rule:tile`` or names an unknown mode.
    """
    faults: dict[tuple[str, str], str] = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        parts = entry.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ValueError(f"{FAULTS_ENV} entry {entry!r} is not rule:tile[:mode]")
        mode = parts[2] if len(parts) == 3 else "error"
        if mode not in FAULT_MODES and not re.fullmatch(
            r"exit([1-9]|[1-9][0-9]|1[0-9][0-9])", mode
        ):
            raise ValueError(f"{FAULTS_ENV} entry {entry!r}: mode {mode!r} not in {FAULT_MODES}")
        faults[(parts[0], parts[1])] = mode
    return faults


def fault_for(log_path: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The fault mode the knob sets for the job writing ``log_path``, or None."""
    text = (os.environ if environ is None else environ).get(FAULTS_ENV, "")
    if not text or not log_path:
        return None
    path = Path(log_path)
    rule, tile = path.parent.name, path.name.removesuffix(".log")
    return parse_faults(text).get((rule, tile))


def _fires(log_path: str, environ: Mapping[str, str] | None = None) -> bool:
    """False if the knob fires once only and this tile's fault has fired already."""
    once = (os.environ if environ is None else environ).get(FAULTS_ONCE_ENV, "")
    if not once:
        return True
    path = Path(log_path)
    marker = Path(once) / f"{path.parent.name}__{path.name.removesuffix('.log')}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def _raise_fault(mode: str, log_path: str) -> None:
    if mode.startswith("exit"):
        logging.getLogger(__name__).error("fault knob %s: exit %s injected", FAULTS_ENV, mode[4:])
        logging.shutdown()
        os._exit(int(mode[4:]))
    if mode == "vmem":
        _allocate_past_the_memory_limit(log_path)
    if mode == "memory":
        raise MemoryError(f"fault knob {FAULTS_ENV}: out of memory injected for {log_path}")
    raise InjectedFaultError(f"fault knob {FAULTS_ENV}: failure injected for {log_path}", mode=mode)


def _allocate_past_the_memory_limit(log_path: str) -> None:
    """Ask for as many bytes as the address-space limit allows in all: the kernel refuses.

    Nothing is touched: the refusal comes at the allocation, so no memory is used.
    """
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        raise MemoryError(
            f"fault knob {FAULTS_ENV}: out of memory injected for {log_path} (no address-space"
            " limit such as h_vmem to exceed)"
        )
    try:
        bytearray(limit)
    except MemoryError as exc:
        raise MemoryError(
            f"fault knob {FAULTS_ENV}: allocating {limit / 2**20:.0f} MB failed under the"
            f" address-space limit of {limit / 2**20:.0f} MB (h_vmem) for {log_path}"
        ) from exc
    raise RuntimeError(f"allocating {limit} bytes under RLIMIT_AS={limit} succeeded")


def run_logged(main: Callable[..., Any], log_path: str | None, /, **kwargs: Any) -> Any:
    """Call ``main(**kwargs)`` with logging sent to ``log_path`` (and stderr).

    An exception is logged with its message (which names the file and the problem) and a
    ``DCFLOW-FAILURE`` line before it propagates, so the job exits non-zero and its log says
    why. The ``DCFLOW_FAULTS`` knob may make the job fail before ``main`` runs.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logger = logging.getLogger(getattr(main, "__module__", "dcflow"))
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, _raise_limit) for s in _LIMIT_SIGNALS}
    try:
        mode = fault_for(log_path)
        if mode is not None and log_path and _fires(log_path):
            _raise_fault(mode, log_path)
        return main(**kwargs)
    except BaseException as exc:
        metadata = getattr(exc, "metadata", None)
        logger.error(
            "FAILED: %s: %s%s", type(exc).__name__, exc, f" {metadata}" if metadata else ""
        )
        if isinstance(exc, Exception):
            record = {
                "error_class": type(exc).__name__,
                "message": str(exc),
                "metadata": metadata if isinstance(metadata, dict) else {},
                "memory": isinstance(exc, MemoryError) or is_memory_text(str(exc)),
                "exit_code": exc.exit_code if isinstance(exc, RunTimeLimitError) else 1,
            }
            logger.error("%s%s", FAILURE_TAG, json.dumps(record, default=str))
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for handler in handlers:
            handler.flush()


def read_failure(
    log_path: str | os.PathLike | None, *, tail_bytes: int = 65536
) -> FailureRecord | None:
    """Read the last ``DCFLOW-FAILURE`` record of a job log, or None if it has none.

    Only the last ``tail_bytes`` of the log are read. A log without a record but with text
    that says the job ran out of memory (an OOM kill message) gives a record with
    ``error_class`` ``"unknown"``.
    """
    if not log_path:
        return None
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - tail_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        where = line.find(FAILURE_TAG)
        if where < 0:
            continue
        try:
            data = json.loads(line[where + len(FAILURE_TAG) :])
        except json.JSONDecodeError:
            continue
        return FailureRecord(
            error_class=str(data.get("error_class", "unknown")),
            message=str(data.get("message", "")),
            metadata=dict(data.get("metadata") or {}),
            memory=bool(data.get("memory", False)),
            exit_code=int(data.get("exit_code", 1)),
        )
    if is_memory_text(text):
        last = next((ln for ln in reversed(text.splitlines()) if is_memory_text(ln)), "")
        return FailureRecord("unknown", last.strip(), {}, True, 1)
    return None
