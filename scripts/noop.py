"""The noop payload: write every declared output of a job as a small placeholder.

Under ``campaign.payload: noop`` every rule runs this script instead of its stage (the rules,
inputs and outputs, hence the DAG, are those of the full payload): scale runs of the
orchestration without the science. Only raw inputs are opened, and only to check they are
whole (readable FITS with the registry's keywords, no all-NaN amplifier HDU), so a corrupt
raw fails its job naming the file as a real stage would; an empty raw is a synthetic scale
campaign's stand-in (`dcflow.campaign.synthetic.touch_raws`, millions of files) and is not
checked; other inputs are not read. astropy (via `dcflow.io`) is imported only by a job with a
raw to check: most jobs have none, and the import is about 0.4 s of CPU per job. Each
output is written atomically (`dcflow.atomic.write_text`), so a killed job leaves no partial
file. ``DCFLOW_NOOP_SECONDS`` (default 0) makes each job sleep that long first, to emulate a
stage's duration.
"""

import json
import logging
import os
import time

from dcflow.atomic import write_text
from dcflow.campaign.registry import HEADER_KEYS
from dcflow.joblog import run_logged
from dcflow.pipeline.spec import stage

__all__ = ["NOOP_SECONDS_ENV", "main", "placeholder_text", "raw_inputs"]

log = logging.getLogger("noop")

NOOP_SECONDS_ENV = "DCFLOW_NOOP_SECONDS"
"""Environment variable: seconds each noop job sleeps before writing (emulated stage time)."""


def placeholder_text(rule, wildcards, output):
    """The content of one placeholder output: says which job wrote it (one JSON line)."""
    record = {"payload": "noop", "rule": rule, "wildcards": wildcards, "output": output}
    return json.dumps(record, sort_keys=True) + "\n"


def main(*, rule, wildcards, outputs, n_inputs, raws=(), seconds=0.0):
    whole_raws = [raw for raw in raws if os.path.getsize(raw) > 0]  # empty: touch_raws
    if whole_raws:
        from dcflow.io import check_raw_file  # astropy: only for a job that checks a raw

        for raw in whole_raws:
            check_raw_file(raw, required_keys=tuple(HEADER_KEYS.values()))
    if seconds > 0:
        time.sleep(seconds)
    for output in outputs:
        write_text(placeholder_text(rule, wildcards, output), output)
    log.info(
        "noop %s %s: %d input(s), %d raw(s) checked, %d placeholder(s)",
        rule,
        wildcards,
        n_inputs,
        len(raws),
        len(outputs),
    )


def raw_inputs(rule, inputs):
    """The raw files among a job's named inputs (the stage's inputs of dataset type raw)."""
    names = [i.name for i in stage(rule).inputs if i.dataset == "raw"]
    found = []
    for name in names:
        value = inputs.get(name)
        if value:
            found.extend([value] if isinstance(value, str) else list(value))
    return found


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0] if snakemake.log else None,  # noqa: F821
        rule=snakemake.rule,  # noqa: F821
        wildcards=dict(snakemake.wildcards.items()),  # noqa: F821
        outputs=[str(o) for o in snakemake.output],  # noqa: F821
        n_inputs=len(snakemake.input),  # noqa: F821
        raws=[str(p) for p in raw_inputs(snakemake.rule, snakemake.input)],  # noqa: F821
        seconds=float(os.environ.get(NOOP_SECONDS_ENV, "0") or 0),
    )
