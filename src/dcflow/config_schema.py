"""The campaign config schema, generated from the stage config dataclasses.

workflow/schemas/config.schema.yaml is this module's output, checked in so that Snakemake's
``validate`` reads it; a test regenerates it and fails if the two differ. Run
``python -m dcflow.config_schema`` to rewrite it after changing a config dataclass.
"""

from __future__ import annotations

import copy
import functools
import importlib
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from dcflow.configs import dataclass_schema
from dcflow.layout import DEFAULT_TEMPLATES, Layout
from dcflow.pipeline.spec import STAGES

__all__ = [
    "SECTIONS",
    "build_schema",
    "check_config",
    "checked_in_schema",
    "load_config",
    "schema_path",
]

SECTIONS: dict[str, str] = {
    "simulation": "dcflow.instruments.cfht_sim:SimConfig",
    "calibs": "dcflow.stages.calibs:CalibConfig",
    "isr": "dcflow.stages.isr:IsrConfig",
    "process_ccd": "dcflow.stages.process_ccd:ProcessCcdConfig",
    "validation": "dcflow.stages.validation:MatchScoreConfig",
    "skymap": "dcflow.campaign.skymap:SkyMapConfig",
    "warp": "dcflow.stages.warp:WarpConfig",
    "coadd": "dcflow.stages.coadd:CoaddConfig",
    "template": "dcflow.stages.coadd:TemplateSelectionConfig",
    "multiband": "dcflow.stages.multiband:MultibandConfig",
    "coadd_measurement": "dcflow.stages.coadd_measurement:CoaddMeasurementConfig",
    "forced_photometry": "dcflow.stages.forced_photometry:ForcedPhotometryConfig",
    "diffim": "dcflow.stages.diffim:DiffimConfig",
    "dia_source": "dcflow.stages.dia_sources:DiaSourceConfig",
    "dia_association": "dcflow.stages.dia_association:DiaAssociationConfig",
    "fe55": "dcflow.instruments.fe55_sim:Fe55SimConfig",
    "fe55_gain": "dcflow.stages.fe55:Fe55Config",
    "photon_transfer": "dcflow.stages.photon_transfer:PhotonTransferConfig",
    "shards": "dcflow.campaign.shards:ShardConfig",
    "catalog_db": "dcflow.catalog_db:CatalogDbConfig",
}
"""Config section -> the dataclass that owns its keys, defaults and bounds."""

OPTIONAL_SECTIONS = frozenset({"skymap"})
"""Sections whose absence switches a part of the pipeline off (no sky map: no coadds)."""

_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"}


def _section_class(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def build_schema() -> dict[str, Any]:
    """The full JSON schema of a campaign config."""
    templates = {
        name: {"type": "string", "description": f"Path template of {name}.", "default": value}
        for name, value in DEFAULT_TEMPLATES.items()
    }
    properties: dict[str, Any] = {
        "campaign": {
            "type": "object",
            "additionalProperties": False,
            "description": "Who the campaign is and which instrument took its data.",
            "required": ["name", "instrument"],
            "properties": {
                "name": {**_NAME, "description": "Campaign name (run ledger, job groups)."},
                "instrument": {
                    "type": "string",
                    "enum": ["cfht_sim", "sdss", "esis1", "fe55_sim"],
                    "description": "Instrument of the raw data: cfht_sim (simulated MegaCam), "
                    "sdss (SDSS corrected frames), esis1 (the MSFC ESIS1 lab camera) or "
                    "fe55_sim (simulated sensors only); the last two make sensor-test "
                    "campaigns of Fe55, flat and bias or dark frames.",
                },
                "payload": {
                    "type": "string",
                    "enum": ["full", "noop"],
                    "default": "full",
                    "description": "What each job runs: full (the stage) or noop (writes "
                    "placeholder outputs only: scale runs of the orchestration).",
                },
            },
        },
        "layout": {
            "type": "object",
            "additionalProperties": False,
            "description": "Where inputs are read and products written.",
            "properties": {
                "input_root": {
                    "type": "string",
                    "default": "results/demo/input",
                    "description": "Directory of the raw data and reference catalogs.",
                },
                "output_root": {
                    "type": "string",
                    "default": "results/demo",
                    "description": "Directory receiving every product of the campaign.",
                },
                "templates": {
                    "type": "object",
                    "additionalProperties": False,
                    "default": {},
                    "description": "Overrides of the path templates, per dataset type.",
                    "properties": templates,
                },
            },
        },
    }
    properties["payload"] = {
        "type": "object",
        "additionalProperties": False,
        "default": {},
        "description": "A site's own stage commands (bring your own pipeline).",
        "properties": {
            "commands": {
                "type": "object",
                "additionalProperties": False,
                "default": {},
                "description": "Per stage (rule name): a command template run instead of the "
                "built-in stage. Fields: the job's wildcards ({visit}, {ccd}, {patch}...), "
                "{input.<name>}, {output.<name>}, {log}, {threads}, {mem_mb}, {runtime}; every "
                "value is shell-quoted. The command must write every declared output.",
                "properties": {
                    s.rule: {
                        "type": "string",
                        "minLength": 1,
                        "description": f"Command of {s.rule}.",
                    }
                    for s in STAGES
                },
            }
        },
    }
    properties["shard"] = {
        "type": "string",
        "description": "Shard mode: the JSON manifest of one shard (set by `dcflow run "
        "--sharded` through --config; absent: the whole campaign).",
    }
    for section, spec in SECTIONS.items():
        sub = dataclass_schema(_section_class(spec))
        if section not in OPTIONAL_SECTIONS:
            sub["default"] = {}
        sub["description"] = (_section_class(spec).__doc__ or "").strip().splitlines()[0]
        properties[section] = sub
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "description": "A dcflow campaign (config.yaml). Generated by dcflow.config_schema.",
        "type": "object",
        "additionalProperties": False,
        "required": ["campaign", "layout"],
        "properties": properties,
    }


def schema_path() -> Path:
    """Where the checked-in schema lives in the repository."""
    return Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


@functools.cache
def checked_in_schema() -> dict[str, Any]:
    """The checked-in schema (equal to `build_schema`, a test says so), read once.

    Building it imports every stage module (scipy, photutils: seconds); reading it does not,
    so `dcflow status` and the planner start fast.
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(schema_path()) as handle:
        return yaml.load(handle, Loader=loader)


def _fill_defaults(instance: dict, schema: dict) -> None:
    for key, sub in schema.get("properties", {}).items():
        if "default" in sub and key not in instance:
            instance[key] = copy.deepcopy(sub["default"])  # the schema is plain YAML data
        if sub.get("type") == "object" and isinstance(instance.get(key), dict):
            _fill_defaults(instance[key], sub)


def check_config(config: dict[str, Any], source: str | Path) -> None:
    """Validate a campaign config against the checked-in schema and fill its defaults in place.

    What the Snakefile does to its config: Snakemake's own ``validate(set_default=True)`` gives
    the same config but took ~150 ms of every shard Snakemake's start-up, this ~15 ms.

    Raises
    ------
    ValueError
        If the config breaks the schema; the message names ``source``, the key and the rule.
    """
    schema = checked_in_schema()
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(config), key=str)
    if errors:
        where = "/".join(map(str, errors[0].absolute_path)) or "(top level)"
        raise ValueError(f"{source}: invalid config at {where}: {errors[0].message}")
    _fill_defaults(config, schema)


def load_config(path: str | Path, overrides: dict | None = None) -> dict[str, Any]:
    """Read, validate and default-fill a campaign config.

    Raises
    ------
    ValueError
        If the file breaks the schema; the message names the file, the key and the rule.
    """
    with open(path) as handle:
        config = yaml.safe_load(handle) or {}
    for key, value in (overrides or {}).items():
        config[key] = value
    check_config(config, path)
    try:
        Layout.from_config(config)  # path templates against the instrument's data-id keys
    except ValueError as exc:
        raise ValueError(f"{path}: invalid config: {exc}") from None
    return config


def main() -> None:
    """Rewrite the checked-in schema file."""
    text = yaml.safe_dump(build_schema(), sort_keys=False, width=100)
    schema_path().write_text(text)
    sys.stdout.write(f"wrote {schema_path()}\n")


if __name__ == "__main__":
    main()
