"""`dcflow db` and `dcflow query`: the campaign's catalog database, outside the workflow.

Loading is a stage (load_visit_catalogs, load_patch_catalogs); building indexes and
refreshing statistics are explicit steps run once a campaign's (or a region's) bulk load is
done, because an index maintained row by row during a bulk load is what made DC2013's
database take ages. Both steps are idempotent.
"""

from __future__ import annotations

from pathlib import Path

from astropy.table import Table

from dcflow.catalog_db import CatalogDatabase, open_catalog_db
from dcflow.errors import CampaignError
from dcflow.layout import Layout
from dcflow.orchestration.campaign_files import load_campaign_config

__all__ = ["analyze_catalogs", "campaign_catalog_db", "index_catalogs", "query_catalogs"]


class CatalogDbError(CampaignError):
    """The catalog database cannot be reached or refused a statement."""


def campaign_catalog_db(config_path: str | Path) -> CatalogDatabase:
    """The catalog database of the campaign described by ``config_path``.

    Raises
    ------
    CatalogDbError
        If the backend cannot be opened (the message names the database, never a password).
    """
    config = load_campaign_config(config_path)
    path = Layout.from_config(config).path("catalog_db")
    try:
        return open_catalog_db(config.get("catalog_db") or {}, path)
    except RuntimeError as exc:
        raise CatalogDbError(str(exc)) from None


def index_catalogs(config_path: str | Path) -> list[str]:
    """Build the spatial and tile indexes of every loaded table; the index names."""
    with campaign_catalog_db(config_path) as db:
        return db.create_indexes()


def analyze_catalogs(config_path: str | Path) -> None:
    """Refresh the query planner's statistics."""
    with campaign_catalog_db(config_path) as db:
        db.analyze()


def query_catalogs(config_path: str | Path, sql: str, *, output: str | None = None) -> Table:
    """Run one SQL statement; write the rows to ``output`` (.csv, .parquet, .fits, .ecsv).

    Raises
    ------
    CatalogDbError
        If the statement fails (the database's message is kept).
    """
    with campaign_catalog_db(config_path) as db:
        try:
            rows = db.query(sql)
        except Exception as exc:  # each backend raises its own driver's error class
            raise CatalogDbError(
                f"query failed on the {db.backend} catalog database: {exc}"
            ) from None
    if output:
        suffix = Path(output).suffix.lower()
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({n: rows[n].data for n in rows.colnames}), output)
        else:
            rows.write(output, overwrite=True, format={".csv": "ascii.csv"}.get(suffix))
    return rows
