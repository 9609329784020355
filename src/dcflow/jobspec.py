"""Low-level shared primitives of the job graph: one job as planners see it, instrument traits."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["PROCESSED_INSTRUMENTS", "SIMULATED_INSTRUMENTS", "JobSpec"]

SIMULATED_INSTRUMENTS = frozenset({"cfht_sim"})
"""Instruments whose campaigns carry a truth catalog (science validation runs on them)."""

PROCESSED_INSTRUMENTS = frozenset({"sdss"})
"""Instruments whose frames arrive bias-subtracted and flat-fielded (no ISR, no calibs)."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job of the workflow as the reference planner sees it (mirrors one Snakemake job).

    Attributes
    ----------
    rule : str
        Rule name (the stage).
    data_id : mapping
        The job's wildcards as a data id (empty for campaign-wide jobs).
    outputs : tuple of str
        Output paths (what the job writes; no logs or benchmarks).
    inputs : tuple of str
        Input paths, products of other jobs or raw data.
    filter : str or None
        Filter of the data the job processes, if it has one.
    tract : int or None
        Tract of the data the job processes, if it has one.
    """

    rule: str
    data_id: Mapping[str, int | str]
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    filter: str | None = None
    tract: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
