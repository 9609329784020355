"""The embedded backend: one DuckDB file per campaign, no server.

Why DuckDB rather than SQLite (measured by ``benchmarks/catalog_load.py``, README "Catalog
database"): DuckDB ingests an Arrow table in one columnar append, 2.6x faster than
SQLite's ``executemany`` (4.2e5 against 1.6e5 rows/s at 10^6), and scans a pixel range with
its per-row-group min/max (zone maps), so a cone search needs no index once
`EmbeddedDatabase.create_indexes` has rewritten the table in pixel order. Like SQLite it
allows one writing process at a time: every connection here is taken under an exclusive
``flock`` on ``<database>.lock``, so concurrent load jobs of a campaign queue behind each
other instead of failing with DuckDB's "could not set lock" error. Outside a ``with`` block
each call connects and disconnects; inside one, the lock and the connection are held until
the block ends (a load job, a series of queries).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import duckdb
import numpy as np
import pyarrow as pa
from astropy.table import Table

from dcflow.catalog_db.base import TILES_SQL, CatalogDatabase, tile_name
from dcflow.catalog_db.tables import TABLES, cone_pixel_ranges

__all__ = ["EmbeddedDatabase", "haversine_sql"]


def haversine_sql(ra_deg: float, dec_deg: float) -> str:
    """SQL for the angular distance in radians of a row's (ra_deg, dec_deg) from a position.

    The same haversine as `angular_distance_deg`; the position is written as literals
    (``repr`` of a float is exact), measured 25% faster than parameters, which keep DuckDB
    from folding the constant terms.
    """
    ra, dec = repr(float(ra_deg)), repr(float(dec_deg))
    return (
        f"2 * asin(sqrt(least(1, pow(sin(radians(dec_deg - {dec}) / 2), 2) + "
        f"cos(radians(dec_deg)) * cos(radians({dec})) * pow(sin(radians(ra_deg - {ra}) / 2), 2))))"
    )


def arrow_column(values: np.ndarray) -> pa.Array:
    """An Arrow column of a numpy column, without copying strings a row at a time.

    A tile's data id and provenance columns (filter, campaign, run id, code version) hold
    one value: they become a one-entry dictionary, which costs nothing, where converting a
    numpy unicode column costs ~40 ns a row (a third of the load's Python time, measured).
    """
    values = np.asarray(values)
    if values.dtype.kind == "U" and values.size and bool(np.all(values == values[0])):
        indices = pa.array(np.zeros(values.size, dtype=np.int32))
        return pa.DictionaryArray.from_arrays(indices, pa.array([str(values[0])]))
    return pa.array(values)


class EmbeddedDatabase(CatalogDatabase):
    """A campaign's catalogs in a DuckDB file.

    Parameters
    ----------
    path : str or os.PathLike
        The database file (created with its directory on first load).
    """

    backend = "duckdb"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._session: duckdb.DuckDBPyConnection | None = None
        self._session_lock: TextIO | None = None

    def __enter__(self) -> EmbeddedDatabase:
        """Hold the file lock and one connection until the block ends (a job, a query run)."""
        self._session_lock = self._lock()
        self._session = self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lock(self) -> TextIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(self.lock_path, "a")  # noqa: SIM115 (held across calls in a session)
        fcntl.flock(lock, fcntl.LOCK_EX)
        return lock

    def _open(self) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(str(self.path))
        except duckdb.Error as exc:
            raise RuntimeError(f"catalog database {self.path}: {exc}") from exc

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._session is not None:
            yield self._session
            return
        lock = self._lock()
        try:
            con = self._open()
            try:
                yield con
            finally:
                con.close()
        finally:
            lock.close()

    def replace_tile(
        self,
        tile: Mapping[str, object],
        rows: Mapping[str, Sequence[Mapping[str, np.ndarray]]],
        *,
        filters: Iterable[str] = (),
        run_id: str = "",
        before_commit: Callable[[], None] | None = None,
    ) -> dict[str, int]:
        """Replace a tile's rows in one transaction (see `CatalogDatabase.replace_tile`)."""
        loaded: dict[str, int] = {}
        with self._connect() as con:
            self._ensure_tables(con, rows, filters)
            con.execute("BEGIN TRANSACTION")
            try:
                for table, chunks in rows.items():
                    loaded[table] = self._replace(con, table, tile, chunks, run_id)
                if before_commit is not None:
                    before_commit()
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return loaded

    def _ensure_tables(
        self, con: duckdb.DuckDBPyConnection, tables: Iterable[str], filters: Iterable[str]
    ) -> None:
        """Create missing tables with their column comments in one transaction.

        Run on every load, so only when a table is missing: each DDL statement outside a
        transaction is a commit of its own (a WAL write), and the 30-odd statements of a
        table cost more than loading a 50,000-row tile (measured, benchmarks/catalog_load.py).
        """
        present = set(self._tables(con, ledger=True))
        missing = [t for t in tables if t not in present]
        if "catalog_tiles" in present and not missing:
            return
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(TILES_SQL)
            for table in missing:
                for statement in self._create_sql(table, filters):
                    con.execute(statement)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    @staticmethod
    def _replace(
        con: duckdb.DuckDBPyConnection,
        table: str,
        tile: Mapping[str, object],
        chunks: Sequence[Mapping[str, np.ndarray]],
        run_id: str,
    ) -> int:
        keys = TABLES[table].tile_keys
        name = tile_name(table, tile)
        known = con.execute(
            "SELECT count(*) FROM catalog_tiles WHERE table_name = ? AND tile = ?", (table, name)
        ).fetchall()[0][0]
        if known:
            where = " AND ".join(f"{k} = ?" for k in keys)
            con.execute(f"DELETE FROM {table} WHERE {where}", [tile[k] for k in keys])
            con.execute(
                "DELETE FROM catalog_tiles WHERE table_name = ? AND tile = ?", (table, name)
            )
        n_rows = 0
        for chunk in chunks:
            CatalogDatabase._check_tile(table, tile, chunk)
            arrow_rows = pa.table({k: arrow_column(v) for k, v in chunk.items()})
            con.register("tile_rows", arrow_rows)
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM tile_rows")
            con.unregister("tile_rows")
            n_rows += arrow_rows.num_rows
        con.execute(
            "INSERT INTO catalog_tiles (table_name, tile, n_rows, run_id) VALUES (?, ?, ?, ?)",
            (table, name, n_rows, run_id),
        )
        return n_rows

    def create_indexes(self) -> list[str]:
        """Cluster every table present by ``healpix``, then index it (idempotent).

        Rows arrive tile by tile, each tile in pixel order, but a row group (122,880 rows)
        holds several tiles from anywhere on the sky, so its min/max ``healpix`` spans most
        of the sky and no cone search can skip it: at 10^7 rows a 1' cone read every row
        group (57 ms, `benchmarks/catalog_load.py`). Rewriting the table in pixel order once
        after the bulk load (`_cluster`) gives each row group a narrow pixel range, so its
        zone map skips all but the one or two a small cone touches. DuckDB scans pixel
        ranges by zone map, not by its ART index (kept for the names and exact lookups); the
        tile index serves a rerun's delete.
        """
        names = []
        with self._connect() as con:
            present = self._tables(con)
            for table in present:
                self._cluster(con, table)
                for suffix, columns in (
                    ("healpix", ("healpix",)),
                    ("tile", TABLES[table].tile_keys),
                ):
                    index = f"{table}_{suffix}"
                    con.execute(
                        f"CREATE INDEX IF NOT EXISTS {index} ON {table} ({', '.join(columns)})"
                    )
                    names.append(index)
        return names

    @staticmethod
    def _cluster(con: duckdb.DuckDBPyConnection, table: str) -> None:
        """Rewrite ``table`` in ``healpix`` order, unless done since its last load.

        The state of its tiles in ``catalog_tiles`` at the rewrite is kept in
        ``catalog_clustered``; a load or rerun since changes it.
        """
        con.execute(
            "CREATE TABLE IF NOT EXISTS catalog_clustered (table_name TEXT PRIMARY KEY, "
            "tiles_state TEXT NOT NULL)"
        )
        state = str(
            con.execute(
                "SELECT count(*), sum(n_rows), max(loaded_at) FROM catalog_tiles "
                "WHERE table_name = ?",
                (table,),
            ).fetchall()[0]
        )
        done = con.execute(
            "SELECT tiles_state FROM catalog_clustered WHERE table_name = ?", (table,)
        ).fetchall()
        if done and done[0][0] == state:
            return
        comments = con.execute(
            "SELECT column_name, comment FROM duckdb_columns() WHERE table_name = ? "
            "AND comment IS NOT NULL",
            (table,),
        ).fetchall()
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(
                f"CREATE TABLE {table}__clustered AS SELECT * FROM {table} ORDER BY healpix"
            )
            con.execute(f"DROP TABLE {table}")
            con.execute(f"ALTER TABLE {table}__clustered RENAME TO {table}")
            for column, comment in comments:
                quoted = comment.replace("'", "''")
                con.execute(f"COMMENT ON COLUMN {table}.{column} IS '{quoted}'")
            con.execute("INSERT OR REPLACE INTO catalog_clustered VALUES (?, ?)", (table, state))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def analyze(self) -> None:
        """Refresh the planner's statistics (idempotent)."""
        with self._connect() as con:
            con.execute("ANALYZE")
            con.execute("CHECKPOINT")

    def query(self, sql: str, params: Sequence[object] = ()) -> Table:
        """Run one SQL statement (``?`` placeholders); its rows as a table."""
        with self._connect() as con:
            con.execute(TILES_SQL)
            result = con.execute(sql, list(params))
            return Table(result.fetchnumpy())

    def cone(self, table: str, ra_deg: float, dec_deg: float, radius_deg: float) -> Table:
        """Rows of ``table`` within ``radius_deg`` of a position (exact distance cut).

        The pixel ranges let DuckDB skip every row group whose min/max ``healpix`` misses
        them (rows are loaded in pixel order); the haversine cut runs in the same query, so
        only the rows inside the cone become a table (at 1 deg, a third of those read).
        """
        ranges = cone_pixel_ranges(ra_deg, dec_deg, radius_deg)
        pixels = " OR ".join(f"(healpix >= {a} AND healpix < {b})" for a, b in ranges)
        distance = haversine_sql(ra_deg, dec_deg)
        radius = repr(float(radius_deg))
        return self.query(
            f"SELECT * FROM {table} WHERE ({pixels}) AND {distance} <= radians({radius})"
        )

    def close(self) -> None:
        """End a session: close its connection, release the file lock."""
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._session_lock is not None:
            self._session_lock.close()
            self._session_lock = None

    @staticmethod
    def _tables(con: duckdb.DuckDBPyConnection, *, ledger: bool = False) -> list[str]:
        """The catalog tables present (and ``catalog_tiles`` if ``ledger``)."""
        names = [row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        return [n for n in names if n in TABLES or (ledger and n == "catalog_tiles")]
