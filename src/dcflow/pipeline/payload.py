"""What a stage's job runs: the built-in stage, a placeholder (noop) or a site's own command.

A site that has its own stage code (the LSST science pipelines' command-line tasks, say) sets
``payload.commands.<rule>`` in the campaign config: a command template whose fields are the
job's wildcards (``{visit}``, ``{ccd}``, ``{patch}``...), ``{input.<name>}``,
``{output.<name>}``, ``{log}``, ``{threads}``, ``{mem_mb}`` and ``{runtime}``. Every value is
shell-quoted (a list becomes its quoted items joined by spaces), so nothing from a data id or a
path reaches the shell unquoted; the template's own text is the site's, trusted like a rule.
dcflow keeps the DAG, data ids, outputs, ledger, retries, shards and backends.
"""

from __future__ import annotations

import shlex
import string
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["PayloadError", "command_for", "fill_command", "payload_script"]


class PayloadError(ValueError):
    """A command template that cannot be filled (unknown field, format spec)."""


def command_for(config: Mapping[str, Any], rule: str) -> str:
    """The site command template of a rule, or empty when the rule runs a built-in payload."""
    return str(((config.get("payload") or {}).get("commands") or {}).get(rule) or "")


def payload_script(config: Mapping[str, Any], stage_script: str, rule: str = "") -> str:
    """Name (no suffix) of the script under scripts/ that a stage's rule runs.

    ``command`` when the config gives the rule a command template, ``noop`` when
    ``campaign.payload`` is ``noop`` (placeholder outputs, same DAG), else the stage's own.
    """
    if rule and command_for(config, rule):
        return "command"
    return "noop" if config["campaign"].get("payload", "full") == "noop" else stage_script


def _quoted(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(shlex.quote(str(v)) for v in value)
    return shlex.quote(str(value))


def fill_command(
    template: str,
    *,
    wildcards: Mapping[str, Any],
    inputs: Mapping[str, Sequence[str] | str],
    outputs: Mapping[str, Sequence[str] | str],
    log: str = "",
    threads: int = 1,
    mem_mb: int = 0,
    runtime: int = 0,
) -> str:
    """A command line from a template, every substituted value shell-quoted.

    Raises
    ------
    PayloadError
        If the template names a field the job does not have, or uses a format spec or
        conversion (values are quoted text; formatting them could unquote them).
    """
    scalars: dict[str, Any] = {
        **{str(k): v for k, v in wildcards.items()},
        "log": log,
        "threads": threads,
        "mem_mb": mem_mb,
        "runtime": runtime,
    }
    groups = {"input": inputs, "output": outputs}
    parts: list[str] = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        parts.append(literal)
        if field is None:
            continue
        if spec or conversion:
            raise PayloadError(f"command field {{{field}}}: format specs are not allowed")
        head, _, name = field.partition(".")
        if head in groups and name:
            if name not in groups[head]:
                known = ", ".join(groups[head]) or "none"
                raise PayloadError(f"command field {{{field}}}: no {head} {name!r} ({known})")
            parts.append(_quoted(groups[head][name]))
        elif field in scalars and not name:
            parts.append(_quoted(scalars[field]))
        else:
            known = ", ".join([*scalars, "input.<name>", "output.<name>"])
            raise PayloadError(f"command field {{{field}}} is unknown (known: {known})")
    return "".join(parts)
