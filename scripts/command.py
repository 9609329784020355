"""The command payload: run a site's own command for a job (``payload.commands.<rule>``).

The template is filled by `dcflow.pipeline.payload.fill_command` (every value shell-quoted)
and run by ``/bin/sh -c``; its output goes to the job's log. A command that exits 0 without
writing every declared output fails, naming the missing file, so a job never counts as done
on a partial result.
"""

import logging
import subprocess

from dcflow.joblog import run_logged
from dcflow.pipeline.payload import fill_command

__all__ = ["CommandPayloadError", "main"]

log = logging.getLogger("command")


class CommandPayloadError(RuntimeError):
    """The site command failed, or exited 0 without writing a declared output."""


def main(*, rule, template, wildcards, inputs, outputs, log_path, threads, mem_mb, runtime):
    from pathlib import Path

    command = fill_command(
        template,
        wildcards=wildcards,
        inputs=inputs,
        outputs=outputs,
        log=log_path,
        threads=threads,
        mem_mb=mem_mb,
        runtime=runtime,
    )
    log.info("%s %s: %s", rule, wildcards, command)
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, check=False)
    for stream, text in (("stdout", done.stdout), ("stderr", done.stderr)):
        if text.strip():
            log.info("%s:\n%s", stream, text.rstrip())
    if done.returncode != 0:
        raise CommandPayloadError(f"{rule} {wildcards}: command exited {done.returncode}")
    declared = [
        p for value in outputs.values() for p in ([value] if isinstance(value, str) else value)
    ]
    missing = [p for p in declared if not Path(p).is_file()]
    if missing:
        raise CommandPayloadError(
            f"{rule} {wildcards}: command exited 0 without writing {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )


def _named(files):
    return {
        name: (list(value) if not isinstance(value, str) else value)
        for name, value in files.items()
    }


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        rule=snakemake.rule,  # noqa: F821
        template=snakemake.params.command,  # noqa: F821
        wildcards=dict(snakemake.wildcards.items()),  # noqa: F821
        inputs=_named(snakemake.input),  # noqa: F821
        outputs=_named(snakemake.output),  # noqa: F821
        log_path=snakemake.log[0],  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
        mem_mb=int(snakemake.resources.get("mem_mb", 0)),  # noqa: F821
        runtime=int(snakemake.resources.get("runtime", 0)),  # noqa: F821
    )
