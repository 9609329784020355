"""Profiles (one Snakemake profile per backend): lookup, settings, rule resources, memory."""

from __future__ import annotations

from pathlib import Path

import yaml

from dcflow.configs import from_mapping
from dcflow.errors import ConfigInvalidError, ProfileUnknownError
from dcflow.ledger import MemoryPolicy
from dcflow.orchestration.campaign_files import REPO_ROOT
from dcflow.pipeline.spec import STAGES

__all__ = [
    "GRIDENGINE_EXECUTORS",
    "memory_override_args",
    "memory_policy",
    "profile_backend",
    "profile_dir",
    "profile_settings",
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


def memory_override_args(
    requests: dict[tuple[str, str], int], defaults: dict[str, dict[str, int]]
) -> list[str]:
    """``--set-resources`` arguments giving escalated tiles their mem_mb, per rule.

    Each value is a Python expression Snakemake evaluates per job: a lookup of the job's tile
    (`dcflow.ledger.tile_of` of its wildcards) in the escalated tiles, else the rule default.
    Tiles of rules whose default is unknown get the largest escalation of the rule.
    """
    by_rule: dict[str, dict[str, int]] = {}
    for (rule, tile), mem_mb in sorted(requests.items()):
        by_rule.setdefault(rule, {})[tile] = mem_mb
    args: list[str] = []
    for rule, tiles in by_rule.items():
        default = defaults.get(rule, {}).get("mem_mb", max(tiles.values()))
        lookup = (
            f"{tiles!r}.get(__import__('dcflow.ledger', fromlist=['tile_of'])"
            f".tile_of(dict(wildcards.items())), {default})"
        )
        args.append(f"{rule}:mem_mb={lookup}")
    return ["--set-resources", *args] if args else []
