"""The interface both catalog database backends implement, and what they share."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from astropy.table import Table

from dcflow.catalog_db.tables import TABLES, Column, table_columns

__all__ = ["CatalogDatabase", "angular_distance_deg", "sql_type", "tile_name"]

_SQL_TYPES = {"f8": "DOUBLE PRECISION", "i8": "BIGINT", "i4": "INTEGER", "?": "BOOLEAN"}


def sql_type(column: Column) -> str:
    """The SQL type of a column (numpy ``U`` strings become TEXT)."""
    return "TEXT" if column.dtype.startswith("U") else _SQL_TYPES[column.dtype]


def column_comment(column: Column) -> str:
    """The database comment of a column: ``[unit] description``."""
    unit = f"[{column.unit}] " if column.unit else ""
    return f"{unit}{column.description}".replace("'", "''")


def tile_name(table: str, tile: Mapping[str, object]) -> str:
    """A tile's key in ``catalog_tiles`` (``visit=1003``, ``tract=0,patch=1,1``)."""
    return ",".join(f"{key}={tile[key]}" for key in TABLES[table].tile_keys)


def angular_distance_deg(
    ra1_deg: np.ndarray, dec1_deg: np.ndarray, ra2_deg: float, dec2_deg: float
) -> np.ndarray:
    """Great-circle distance (haversine, exact at small separations), in degrees."""
    ra1, dec1 = np.radians(ra1_deg), np.radians(dec1_deg)
    ra2, dec2 = np.radians(ra2_deg), np.radians(dec2_deg)
    hav = (
        np.sin((dec1 - dec2) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra1 - ra2) / 2) ** 2
    )
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(hav, 0, 1))))


class CatalogDatabase(abc.ABC):
    """A campaign's catalog database: per-tile loads, explicit index and analyze, queries.

    A backend creates a table on first use with the columns of `table_columns`; a tile is
    loaded in one transaction that first deletes the rows of a previous load of the same
    tile (found in ``catalog_tiles``), so a killed load leaves nothing and a rerun leaves no
    duplicate and touches no other tile.
    """

    backend: str = ""

    @abc.abstractmethod
    def replace_tile(
        self,
        tile: Mapping[str, object],
        rows: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
        *,
        filters: Iterable[str] = (),
        run_id: str = "",
        before_commit: Callable[[], None] | None = None,
    ) -> dict[str, int]:
        """Replace one tile's rows of one or more tables in one transaction.

        Parameters
        ----------
        tile : mapping
            The tile's data id (every table's ``tile_keys``: a visit, or tract and patch).
        rows : mapping of str to sequence of mapping of str to array
            Table name -> chunks of rows from `tile_arrays` (one per CCD, say), each sorted
            by ``healpix``. A table given with no chunk has its tile emptied.
        filters : iterable of str
            For ``object``: its filters (the table's per-filter columns).
        run_id : str
            Recorded with the tile in ``catalog_tiles``.
        before_commit : callable, optional
            Called after the rows are written, before the commit (kill drills).

        Returns
        -------
        dict of str to int
            Rows loaded per table.
        """

    @abc.abstractmethod
    def create_indexes(self) -> list[str]:
        """Build the spatial and tile indexes after the bulk load (idempotent); their names."""

    @abc.abstractmethod
    def analyze(self) -> None:
        """Refresh the planner's statistics (idempotent)."""

    @abc.abstractmethod
    def query(self, sql: str, params: Sequence[object] = ()) -> Table:
        """Run one SQL statement and return its rows as a table (empty: its columns only)."""

    @abc.abstractmethod
    def cone(self, table: str, ra_deg: float, dec_deg: float, radius_deg: float) -> Table:
        """Rows of ``table`` within ``radius_deg`` of a position (exact distance cut)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def tile_rows(self, table: str) -> dict[str, int]:
        """Rows per loaded tile of ``table``, from ``catalog_tiles``."""
        rows = self.query(
            "SELECT tile, n_rows FROM catalog_tiles WHERE table_name = ? ORDER BY tile", (table,)
        )
        return {str(t): int(n) for t, n in zip(rows["tile"], rows["n_rows"], strict=True)}

    def __enter__(self) -> CatalogDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _check_tile(
        table: str, tile: Mapping[str, object], chunk: Mapping[str, np.ndarray]
    ) -> None:
        """Refuse rows of another tile (they would escape the tile's delete on rerun)."""
        for key in TABLES[table].tile_keys:
            if key not in tile:
                raise ValueError(f"{table} tile {dict(tile)} lacks data id key {key!r}")
            values = np.asarray(chunk[key])
            if values.size and not np.all(values == values.dtype.type(tile[key])):
                raise ValueError(
                    f"{table} rows for tile {tile_name(table, tile)} carry another {key} "
                    f"({sorted(set(values.tolist()))[:3]})"
                )

    @staticmethod
    def _create_sql(table: str, filters: Iterable[str], partition_by: str = "") -> list[str]:
        columns = table_columns(table, filters=filters)
        body = ",\n  ".join(f"{c.name} {sql_type(c)}" for c in columns)
        statements = [f"CREATE TABLE IF NOT EXISTS {table} (\n  {body}\n){partition_by}"]
        statements += [
            f"COMMENT ON COLUMN {table}.{c.name} IS '{column_comment(c)}'" for c in columns
        ]
        return statements


TILES_SQL = (
    "CREATE TABLE IF NOT EXISTS catalog_tiles (table_name TEXT NOT NULL, tile TEXT NOT NULL, "
    "n_rows BIGINT NOT NULL, run_id TEXT, loaded_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, "
    "PRIMARY KEY (table_name, tile))"
)
"""The ledger of loaded tiles (rerun: delete the tile's rows only when it is listed)."""
