"""Profiles (one Snakemake profile per backend): lookup, settings, rule resources, memory."""

from __future__ import annotations

from pathlib import Path

import yaml

from dcflow.configs import from_mapping
from dcflow.errors import ConfigInvalidError, ProfileUnknownError
from dcflow.failures import FailurePolicy
from dcflow.ledger import MemoryPolicy
from dcflow.orchestration.campaign_files import REPO_ROOT
from dcflow.pipeline.spec import STAGES

__all__ = [
    "GRIDENGINE_EXECUTORS",
    "failure_policy",
    "memory_override_args",
    "memory_policy",
    "profile_backend",
    "profile_dir",
    "profile_settings",
    "resource_override_args",
    "rule_defaults",
]


def profile_dir(profile: str) -> Path:
    """A profile's directory: ``profile`` itself or ``profiles/<profile>`` of the checkout.

    Raises
    ------
    ProfileUnknownError
        If neither is a directory.
    """
    path = Path(profile)
    if not path.is_dir():
        path = REPO_ROOT / "profiles" / profile
    if not path.is_dir():
        raise ProfileUnknownError(f"profile {profile!r}: no such directory (nor under profiles/)")
    return path


def profile_settings(profile: str) -> dict:
    """The profile's ``config.yaml`` (Snakemake settings) as a dict."""
    config_file = profile_dir(profile) / "config.yaml"
    if not config_file.is_file():
        return {}
    with open(config_file) as handle:
        return yaml.safe_load(handle) or {}


def profile_backend(profile: str) -> str:
    """The backend a profile runs jobs on: its ``executor`` (``local`` if unset)."""
    return str(profile_settings(profile).get("executor", "local"))


GRIDENGINE_EXECUTORS = frozenset({"gridengine", "drmaa", "cluster-generic", "sge"})
"""Executors that submit to Grid Engine."""


def _profile_extra(profile: str | None, key: str) -> dict:
    """One section of a profile's ``dcflow.yaml`` (site settings Snakemake does not read)."""
    if not profile:
        return {}
    extra = profile_dir(profile) / "dcflow.yaml"
    if not extra.is_file():
        return {}
    with open(extra) as handle:
        section = (yaml.safe_load(handle) or {}).get(key, {})
    if not isinstance(section, dict):
        raise ConfigInvalidError(f"{extra}: {key} must be a mapping, not {section!r}")
    return section


def failure_policy(profile: str | None) -> FailurePolicy:
    """The action per failure class: defaults, then the profile's ``dcflow.yaml``.

    ``failure_actions: {transient_io: retry, runtime_factor: 1.5}`` in a profile's
    ``dcflow.yaml`` changes what ``rerun --failed`` does with those tiles.

    Raises
    ------
    ProfileUnknownError
        If ``profile`` is given and is not a profile.
    ConfigInvalidError
        If a key is not a failure class or an action is unknown (the message names it).
    """
    values = _profile_extra(profile, "failure_actions")
    try:
        return from_mapping(FailurePolicy, values)
    except (TypeError, ValueError) as exc:
        where = profile_dir(profile) / "dcflow.yaml" if profile else "defaults"
        raise ConfigInvalidError(f"{where}: failure_actions: {exc}") from exc


def memory_policy(
    profile: str | None, *, factor: float | None = None, cap_mb: int | None = None
) -> MemoryPolicy:
    """Memory escalation policy: defaults, then the profile's ``dcflow.yaml``, then arguments.

    A profile may hold ``dcflow.yaml`` with ``memory_escalation: {factor: 2.0, cap_mb: 64000}``
    (site settings Snakemake itself does not read).

    Raises
    ------
    ProfileUnknownError
        If ``profile`` is given and is not a profile.
    ConfigInvalidError
        If the resulting policy is invalid (a factor below 1, an unknown key).
    """
    values: dict = {}
    if profile:
        extra = profile_dir(profile) / "dcflow.yaml"
        if extra.is_file():
            with open(extra) as handle:
                values.update((yaml.safe_load(handle) or {}).get("memory_escalation", {}))
    if factor is not None:
        values["factor"] = factor
    if cap_mb is not None:
        values["cap_mb"] = cap_mb
    try:
        return from_mapping(MemoryPolicy, values)
    except (TypeError, ValueError) as exc:
        raise ConfigInvalidError(f"memory escalation: {exc}") from exc


def rule_defaults(profile: str | None) -> dict[str, dict[str, int]]:
    """Per rule ``mem_mb`` and ``runtime`` (min) defaults.

    The pipeline spec's values (every stage has both).
    """
    fallback: dict[str, int] = {}
    if profile:
        for item in profile_settings(profile).get("default-resources", []) or []:
            key, _, value = str(item).partition("=")
            if value.strip().isdigit():
                fallback[key.strip()] = int(value)
    out: dict[str, dict[str, int]] = {}
    for s in STAGES:
        out[s.rule] = {
            **{k: v for k, v in fallback.items() if k in ("mem_mb", "runtime")},
            "mem_mb": s.mem_mb,
            "runtime": s.runtime,
        }
    return out


def _override_entries(
    requests: dict[tuple[str, str], int], defaults: dict[str, dict[str, int]], resource: str
) -> list[str]:
    by_rule: dict[str, dict[str, int]] = {}
    for (rule, tile), value in sorted(requests.items()):
        by_rule.setdefault(rule, {})[tile] = value
    entries: list[str] = []
    for rule, tiles in by_rule.items():
        if resource == "runtime":
            # Snakemake (9.x) parses a runtime given on the command line as a time span before
            # any evaluation, so a per-tile expression is refused: the rule asks for the
            # largest run time its tiles need
            entries.append(f"{rule}:runtime={max(tiles.values())}")
            continue
        default = defaults.get(rule, {}).get(resource, max(tiles.values()))
        lookup = (
            f"{tiles!r}.get(__import__('dcflow.ledger', fromlist=['tile_of'])"
            f".tile_of(dict(wildcards.items())), {default})"
        )
        entries.append(f"{rule}:{resource}={lookup}")
    return entries


def memory_override_args(
    requests: dict[tuple[str, str], int], defaults: dict[str, dict[str, int]]
) -> list[str]:
    """``--set-resources`` arguments giving escalated tiles their mem_mb, per rule.

    Each value is a Python expression Snakemake evaluates per job: a lookup of the job's tile
    (`dcflow.ledger.tile_of` of its wildcards) in the escalated tiles, else the rule default.
    Tiles of rules whose default is unknown get the largest escalation of the rule.
    """
    return resource_override_args(requests, {}, defaults)


def resource_override_args(
    memory: dict[tuple[str, str], int],
    runtime: dict[tuple[str, str], int],
    defaults: dict[str, dict[str, int]],
) -> list[str]:
    """One ``--set-resources`` giving escalated tiles their mem_mb and runtime (minutes).

    One option for both: Snakemake keeps only the last ``--set-resources`` it is given.
    Memory is per tile (an expression over the job's wildcards); runtime is per rule, the
    largest its escalated tiles need: Snakemake parses a command-line runtime as a time span
    and refuses an expression.
    """
    entries = _override_entries(memory, defaults, "mem_mb")
    entries += _override_entries(runtime, defaults, "runtime")
    return ["--set-resources", *entries] if entries else []
