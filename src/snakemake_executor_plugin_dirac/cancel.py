"""Cancel DIRAC jobs: every id in one killJob call (the RPC carries the client's timeout)."""

from __future__ import annotations

from collections.abc import Iterable

from .wms import DiracWMS

__all__ = ["cancel_jobs"]


def cancel_jobs(wms: DiracWMS, job_ids: Iterable[str]) -> list[str]:
    """Kill every job in one call; return the ids asked for.

    Parameters
    ----------
    wms : DiracWMS
        The client.
    job_ids : iterable of str
        DIRAC job ids.

    Returns
    -------
    list of str
        The ids sent to DIRAC.

    Raises
    ------
    DiracError
        If DIRAC refuses (the message names the ids and DIRAC's reason).
    """
    ids = sorted({str(j) for j in job_ids if j}, key=int)
    if ids:
        wms.kill(ids)
    return ids
