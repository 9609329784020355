"""A campaign's catalogs in a database: per-tile loads, explicit indexing, queries.

Two backends behind `CatalogDatabase`: `EmbeddedDatabase` (Parquet files per tile and sky
region in a directory beside the campaign's products, a SQLite manifest, DuckDB queries; the
default) and `PostgresDatabase` (a server with q3c, its DSN read
from the environment). `open_catalog_db` picks one from the campaign's ``catalog_db``
config section; the tables come from `dcflow.catalog_schema` (see `tables`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dcflow.catalog_db.base import CatalogDatabase, angular_distance_deg, tile_name
from dcflow.catalog_db.tables import (
    HEALPIX_ORDER,
    TABLES,
    cone_pixel_ranges,
    healpix_of,
    object_filters,
    table_columns,
    tile_arrays,
)
from dcflow.configs import check_fields, config_field, from_mapping

__all__ = [
    "HEALPIX_ORDER",
    "TABLES",
    "CatalogDatabase",
    "CatalogDbConfig",
    "angular_distance_deg",
    "cone_pixel_ranges",
    "healpix_of",
    "object_filters",
    "open_catalog_db",
    "table_columns",
    "tile_arrays",
    "tile_name",
]


@dataclass(frozen=True, slots=True)
class CatalogDbConfig:
    """Where a campaign's catalogs are loaded (the load_*_catalogs stages, ``dcflow db``)."""

    backend: str = config_field(
        "embedded",
        "Database backend",
        choices={
            "embedded": "Parquet files per tile and sky region, queried through DuckDB, in the "
            "campaign's output tree (layout catalog_db)",
            "postgres": "a PostgreSQL server with q3c; DSN from the variable named by dsn_env",
        },
    )
    dsn_env: str = config_field(
        "DCFLOW_CATALOG_DSN",
        "Environment variable holding the PostgreSQL DSN (no password: use ~/.pgpass or "
        "PGPASSWORD); set it in the profile's environment, never in this file",
    )
    partition_order: int = config_field(
        1,
        "HEALPix order of the sky regions, 12 * 4**order per table (1: 48 regions of "
        "860 deg^2): PostgreSQL partitions; embedded region directories, each compacted on "
        "its own by dcflow db index",
        minimum=0,
        maximum=4,
    )

    def __post_init__(self) -> None:
        check_fields(self)


def open_catalog_db(
    config: Mapping[str, Any] | CatalogDbConfig,
    database_path: str,
    *,
    environ: Mapping[str, str] | None = None,
) -> CatalogDatabase:
    """The campaign's catalog database.

    Parameters
    ----------
    config : mapping or CatalogDbConfig
        The campaign's ``catalog_db`` section.
    database_path : str
        The embedded backend's directory (the layout's ``catalog_db`` path).
    environ : mapping, optional
        Environment to read the DSN from (default: ``os.environ``).

    Raises
    ------
    RuntimeError
        If the PostgreSQL backend is chosen and the DSN variable is unset.
    """
    if not isinstance(config, CatalogDbConfig):
        config = from_mapping(CatalogDbConfig, config)
    if config.backend == "embedded":
        from dcflow.catalog_db.embedded import EmbeddedDatabase

        return EmbeddedDatabase(database_path, region_order=config.partition_order)
    dsn = (os.environ if environ is None else environ).get(config.dsn_env, "")
    if not dsn:
        raise RuntimeError(
            f"catalog_db.backend is postgres but ${config.dsn_env} is not set: export the "
            "server's DSN (host=... dbname=... user=...) in the profile's environment"
        )
    from dcflow.catalog_db.postgres import PostgresDatabase

    return PostgresDatabase(dsn, partition_order=config.partition_order)
