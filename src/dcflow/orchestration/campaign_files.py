"""A campaign's files: the checkout, and opening the config, layout, registry and ledger.

Every orchestration module opens them through here, so a missing or broken file becomes one
`dcflow.errors.CampaignError` that names it, whatever the verb.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path, PurePosixPath

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
    "rule_paths",
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


def rule_paths(paths: list[str], layout: Layout, workdir: Path) -> list[str]:
    """Paths of the rooted layout (`rooted_layout`) spelt as the rules spell them.

    Snakemake matches a target to a rule by its text, and the rules take their patterns from
    the config's own ``layout`` (relative roots resolved by Snakemake's ``--directory``): a
    path under a relative root becomes relative again, one under an absolute root stays as it
    is (made relative, it matched no rule: issue 20).

    Parameters
    ----------
    paths : list of str
        Paths made by a layout rooted under ``workdir``.
    layout : Layout
        The config's own layout (`Layout.from_config`), not rooted.
    workdir : Path
        The directory the layout was rooted under (Snakemake's ``--directory``).
    """
    roots = sorted(
        (
            (str(workdir / root).rstrip("/") + "/", root)
            for root in {layout.output_root, layout.input_root}
        ),
        key=lambda pair: -len(pair[0]),
    )  # the deeper root first, should one root hold the other
    out = []
    for path in paths:
        for rooted, root in roots:
            if path.startswith(rooted):
                path = str(PurePosixPath(root) / path[len(rooted) :])
                break
        out.append(path)
    return out


def campaign_ledger_path(layout: Layout, workdir: Path) -> Path:
    """The campaign's run ledger file, relative paths taken under ``workdir``."""
    path = Path(layout.path("ledger"))
    return path if path.is_absolute() else workdir / path
