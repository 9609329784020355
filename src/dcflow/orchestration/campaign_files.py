"""A campaign's files: the checkout, and opening the config, layout, registry and ledger.

Every orchestration module opens them through here, so a missing or broken file becomes one
`dcflow.errors.CampaignError` that names it, whatever the verb.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import yaml

from dcflow.campaign.index import CampaignIndex
from dcflow.config_schema import load_config
from dcflow.errors import (
    ConfigInvalidError,
    ConfigMissingError,
    InputMissingError,
    LedgerUnreadableError,
)
from dcflow.layout import Layout
from dcflow.ledger import Ledger

__all__ = [
    "REPO_ROOT",
    "campaign_ledger_path",
    "index_campaign",
    "load_campaign_config",
    "open_campaign",
    "open_ledger",
    "rooted_layout",
]


REPO_ROOT = Path(__file__).resolve().parents[3]
"""The checkout holding the Snakefile, rules/ and profiles/ (dcflow is installed editable)."""


def load_campaign_config(config_path: str | Path) -> dict:
    """Read, validate and default-fill a campaign config (`dcflow.config_schema.load_config`).

    Raises
    ------
    ConfigMissingError
        If the file does not exist.
    ConfigInvalidError
        If it is not YAML or breaks the schema; the message names the file and the key.
    """
    try:
        return load_config(config_path)
    except FileNotFoundError as exc:
        raise ConfigMissingError(f"{config_path}: no such campaign config") from exc
    except yaml.YAMLError as exc:
        raise ConfigInvalidError(f"{config_path}: not valid YAML: {exc}") from exc
    except ValueError as exc:
        raise ConfigInvalidError(str(exc)) from exc


def index_campaign(config: dict, layout: Layout) -> CampaignIndex:
    """The campaign's index (`CampaignIndex.from_config`).

    Raises
    ------
    InputMissingError
        If the registry does not exist (run `dcflow ingest`).
    """
    try:
        return CampaignIndex.from_config(config, layout)
    except FileNotFoundError as exc:
        raise InputMissingError(str(exc)) from exc


def open_ledger(path: str | Path) -> Ledger:
    """Open (or create) the run ledger at ``path``.

    Raises
    ------
    LedgerUnreadableError
        If it cannot be opened as an SQLite ledger (not a database, no permission).
    """
    try:
        return Ledger(path)
    except (sqlite3.Error, OSError) as exc:
        raise LedgerUnreadableError(f"{path}: run ledger unreadable: {exc}") from exc


def open_campaign(
    config_path: str | Path, workdir: str | Path | None = None
) -> tuple[dict, Layout, CampaignIndex]:
    """Load a campaign config and index it (`CampaignIndex`: arrays, no object per job).

    With ``workdir``, relative layout roots are taken relative to it (Snakemake's
    ``--directory``) instead of the current directory.

    Raises
    ------
    ConfigMissingError, ConfigInvalidError
        If the config is missing or invalid.
    InputMissingError
        If the registry (run `dcflow ingest`) is missing.
    """
    config = load_campaign_config(config_path)
    layout = Layout.from_config(config)
    if workdir is not None:
        layout = Layout(
            input_root=str(Path(workdir) / layout.input_root),
            output_root=str(Path(workdir) / layout.output_root),
            templates=layout.templates,
        )
    return config, layout, index_campaign(config, layout)


def rooted_layout(config_path: str | Path, workdir: Path) -> Layout:
    """The campaign's layout with relative roots under ``workdir`` (no registry read)."""
    layout = Layout.from_config(load_campaign_config(config_path))
    return Layout(
        input_root=str(workdir / layout.input_root),
        output_root=str(workdir / layout.output_root),
        templates=layout.templates,
    )


def campaign_ledger_path(layout: Layout, workdir: Path) -> Path:
    """The campaign's run ledger file, relative paths taken under ``workdir``."""
    path = Path(layout.path("ledger"))
    return path if path.is_absolute() else workdir / path
