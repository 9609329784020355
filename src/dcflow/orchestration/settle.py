"""Settling the run ledger against the disk once no run is alive.

A job can end well while nobody records it: its Snakemake is SIGKILLed between the job's
end and the ledger write, a Grid Engine job ends after its driver died and the restarted
driver's recovery records it (clearing its "incomplete" marks), or the job is SIGKILLed
after its atomic writes, in the moment before Snakemake removes a failed job's outputs.
The ledger then says failed or lost while Snakemake, which trusts whole outputs without an
"incomplete" mark, will never run the job again: ``dcflow status`` and ``dcflow rerun
--failed`` would disagree with the files forever. Settling records such an attempt as
succeeded, from the disk and Snakemake's own marks: outputs written atomically
(`dcflow.io`) are whole when present, and a job whose Snakemake did not finish it keeps its
mark, so it is redone, not settled.
"""

from __future__ import annotations

import os

from dcflow.ledger import Ledger
from dcflow.plan import incomplete_outputs

__all__ = ["settle_from_disk"]


def settle_from_disk(ledger: Ledger, workdir: str | os.PathLike) -> int:
    """Record as succeeded the failed or lost last attempts whose job is done on disk.

    Only attempts of finished runs are looked at (a live Snakemake may still be cleaning up a
    failed job's outputs); an attempt qualifies when it declared outputs, every one exists,
    and none is marked incomplete. Returns how many attempts were settled.
    """
    closed = {r.run_id for r in ledger.runs() if r.finished is not None}
    candidates = [a for a in ledger.failed_tiles() if a.run_id in closed and a.outputs]
    if not candidates:
        return 0
    marked = incomplete_outputs(workdir)
    settled = 0
    for attempt in candidates:
        paths = [os.path.normpath(os.path.join(workdir, p)) for p in attempt.outputs]
        if any(p in marked for p in paths) or not all(os.path.exists(p) for p in paths):
            continue
        written = max(os.stat(p).st_mtime for p in paths)
        settled += ledger.record_found_complete(attempt.attempt_id, when=written)
    return settled
