"""The PostgreSQL backend: a site's server (or the tests' throw-away cluster) with q3c.

Tables are partitioned by sky region: ``PARTITION BY RANGE (healpix)``, one partition per
HEALPix pixel at ``partition_order`` (order 1: 48 regions of 860 deg^2), so one region's
index is built, vacuumed and scanned without waiting on another. Rows arrive with
``COPY ... FROM STDIN`` in binary format built by numpy (`copy_binary`), in pixel order,
straight into the sky-region partitions they fall in (the server then routes no row); the
q3c index
(``q3c_ang2ipix(ra_deg, dec_deg)``), the tile index and the unique row key are built after
the bulk load by `PostgresDatabase.create_indexes` (``dcflow db index``). Cone searches use
``q3c_radial_query``.

A session commits its tiles with ``synchronous_commit = off``: a tile's COMMIT returns
without waiting for its WAL to reach the disk (an fdatasync of 15-30 ms per 50,000-row
tile, measured here), and `PostgresDatabase.flush` (called by
``close``) then waits once for all of them. Atomicity is unchanged (a killed load leaves
none of its rows); a server crash can lose tiles committed since the last flush, but a load
job ends with ``close``, so a job that reports success has its tiles on disk, and one that
does not is rerun (a rerun replaces its tiles).

The DSN comes from the environment (``DCFLOW_CATALOG_DSN``, or the variable the campaign
names); a password belongs in the server's ``~/.pgpass`` or ``PGPASSWORD``, never in config,
and `redacted_dsn` is what messages show.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import psycopg
from astropy.table import Table
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dcflow.catalog_db.base import TILES_SQL, CatalogDatabase, tile_name
from dcflow.catalog_db.tables import HEALPIX_ORDER, TABLES, cone_pixel_ranges, table_columns

__all__ = ["PostgresDatabase", "copy_binary", "redacted_dsn"]

_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
"""COPY binary signature, flags (0) and header extension length (0)."""
_BINARY_TRAILER = b"\xff\xff"
_BINARY_TYPES = {"i8": ">i8", "i4": ">i4", "f8": ">f8", "?": "u1"}
COPY_BLOCK_ROWS = 4096
"""Rows packed at a time by `copy_binary`: a block (~1 MB for src) stays in the CPU cache while
each column is copied into it, and the server parses one block while the next is packed."""
FLUSH_TIMEOUT_S = 60.0
"""How long `PostgresDatabase.flush` waits for the WAL writer at most."""


def _text_codes(column: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A text column's distinct values in UTF-8 (``S`` array) and each row's index into it.

    Only the distinct values are encoded in Python: a tile's text columns hold one value
    (data ids, provenance) or a handful (an Object's ref_filter).
    """
    if valid.all() and np.all(column == column[0]):
        return np.array([str(column[0]).encode()]), np.zeros(len(column), dtype=np.intp)
    values, inverse = np.unique(np.where(valid, column, ""), return_inverse=True)
    encoded = np.array([str(v).encode() for v in values] or [b""], dtype=object)
    return encoded.astype(bytes), inverse.reshape(-1)


def copy_binary(
    chunk: Mapping[str, np.ndarray],
    dtypes: Mapping[str, str],
    *,
    block_rows: int = COPY_BLOCK_ROWS,
) -> Iterator[bytes | memoryview]:
    """Rows in PostgreSQL's binary COPY format, built by numpy a block of rows at a time.

    Every row is a 16-bit field count and, per column, a 32-bit length (-1: NULL) and the
    value in network byte order: numbers have fixed lengths, and so has a text column whose
    values are equally long in UTF-8 (a tile's data ids and provenance hold one value). Rows
    of one layout are one structured array: a template row broadcast, then one strided copy
    per column, with no Python loop over rows and no text formatting or parsing of numbers
    (what makes CSV slow to write and to read). Rows whose layouts differ (text of other
    lengths, NULLs: masked entries of a `numpy.ma.MaskedArray`) are packed by layout, so a
    chunk keeps its row order unless it mixes layouts. Yields the header, the blocks and the
    trailer, for ``Copy.write``.

    Parameters
    ----------
    chunk : mapping of str to array
        Column name -> values, in the order of the COPY column list.
    dtypes : mapping of str to str
        Column name -> the table's numpy dtype (``i8``, ``i4``, ``f8``, ``?``, ``U..``).
    block_rows : int
        Rows packed at a time (`COPY_BLOCK_ROWS`).
    """
    names = list(chunk)
    n_rows = len(chunk[names[0]]) if names else 0
    yield _BINARY_HEADER
    if not n_rows:
        yield _BINARY_TRAILER
        return
    valid = {name: ~np.ma.getmaskarray(chunk[name]) for name in names}
    texts = {
        name: _text_codes(np.asarray(chunk[name]), valid[name])
        for name in names
        if dtypes[name].startswith("U")
    }
    # A row's layout: per column, its value's length in bytes (-1: NULL).
    lengths: dict[str, np.ndarray | int] = {}
    for name in names:
        if name in texts:
            encoded, inverse = texts[name]
            size = np.char.str_len(encoded)[inverse] if len(encoded) > 1 else len(encoded[0])
        else:
            size = np.dtype(_BINARY_TYPES[dtypes[name]]).itemsize
        lengths[name] = size if valid[name].all() else np.where(valid[name], size, -1)
    varying = [
        name
        for name, size in lengths.items()
        if isinstance(size, np.ndarray) and np.any(size != size[0])
    ]
    if varying:
        layouts, layout_of_row = np.unique(
            np.stack([lengths[name] for name in varying], axis=1), axis=0, return_inverse=True
        )
        groups = [np.flatnonzero(layout_of_row.reshape(-1) == k) for k in range(len(layouts))]
    else:
        groups = [slice(0, n_rows)]
    for rows in groups:
        row_index = np.arange(n_rows)[rows]
        if not len(row_index):
            continue
        first = row_index[0]
        layout = {
            name: int(size[first]) if isinstance(size, np.ndarray) else size
            for name, size in lengths.items()
        }
        fields: list[tuple[str, str]] = [("n_fields", ">i2")]
        constants: dict[str, object] = {"n_fields": len(names)}
        columns: dict[str, np.ndarray] = {}
        for i, name in enumerate(names):
            length = layout[name]
            fields.append((f"length{i}", ">i4"))
            constants[f"length{i}"] = length
            if length <= 0:
                continue
            if name in texts:
                encoded, inverse = texts[name]
                fields.append((f"value{i}", f"S{length}"))
                if len(encoded) == 1 or np.all(inverse[rows] == inverse[first]):
                    constants[f"value{i}"] = encoded[inverse[first]]
                else:
                    columns[f"value{i}"] = encoded[inverse[rows]]
            else:
                fields.append((f"value{i}", _BINARY_TYPES[dtypes[name]]))
                columns[f"value{i}"] = np.ma.getdata(chunk[name])[rows]
        row_type = np.dtype(fields)
        template = np.zeros(1, dtype=row_type)
        for field, value in constants.items():
            template[field] = value
        for start in range(0, len(row_index), block_rows):
            stop = min(start + block_rows, len(row_index))
            block = np.empty(stop - start, dtype=row_type)
            # as bytes: a structured assignment copies field by field (462 -> 12 ns a row)
            block.view(np.uint8).reshape(-1, row_type.itemsize)[:] = template.view(np.uint8)
            for field, values in columns.items():
                block[field] = values[start:stop]
            yield memoryview(block).cast("B")
    yield _BINARY_TRAILER


def redacted_dsn(dsn: str) -> str:
    """The DSN without its password (for messages and logs)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo(**{k: str(v) for k, v in params.items()})


class PostgresDatabase(CatalogDatabase):
    """A campaign's catalogs on a PostgreSQL server with the q3c extension.

    Parameters
    ----------
    dsn : str
        libpq connection string (no password in it: use ``~/.pgpass`` or ``PGPASSWORD``).
    partition_order : int
        HEALPix order of the sky-region partitions (12 * 4**order partitions per table).
    synchronous_commit : bool
        True: every tile's COMMIT waits for its WAL flush (the previous behaviour, kept for
        comparison); False: commits are asynchronous and `flush` waits once.

    Raises
    ------
    RuntimeError
        If the server cannot be reached or lacks q3c (the message shows the redacted DSN).
    """

    backend = "postgres"

    def __init__(
        self, dsn: str, *, partition_order: int = 1, synchronous_commit: bool = False
    ) -> None:
        if not 0 <= partition_order <= 4:
            raise ValueError(f"partition_order must be in 0..4, got {partition_order}")
        self.partition_order = partition_order
        self.synchronous_commit = synchronous_commit
        self._unflushed: tuple[str, str, str] | None = None
        self._partition_orders: dict[str, int | None] = {}
        """The last tile committed asynchronously (table, tile, WAL position after it)."""
        try:
            self.con = psycopg.connect(dsn, autocommit=True, client_encoding="utf8")
        except psycopg.Error as exc:
            raise RuntimeError(
                f"catalog database {redacted_dsn(dsn)}: cannot connect ({exc.__class__.__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
            ) from None
        try:
            self.con.execute("CREATE EXTENSION IF NOT EXISTS q3c")
        except psycopg.Error as exc:
            self.con.close()
            raise RuntimeError(
                f"catalog database {redacted_dsn(dsn)}: the q3c extension is not available "
                f"({str(exc).strip()}); install postgresql-<version>-q3c on the server"
            ) from None
        self.con.execute(TILES_SQL.replace("loaded_at TIMESTAMP", "loaded_at TIMESTAMPTZ"))
        if not synchronous_commit:
            self.con.execute("SET synchronous_commit = off")

    def _exists(self, table: str) -> bool:
        """Whether ``table`` exists in the connection's own schema (first of search_path)."""
        found = self.con.execute(
            "SELECT to_regclass(format('%%I.%%I', current_schema(), %s::text))", (table,)
        ).fetchone()[0]
        return found is not None

    def _ensure_table(self, table: str, filters: Iterable[str]) -> None:
        if self._exists(table):
            return
        shift = 2 * (HEALPIX_ORDER - self.partition_order)
        with self.con.transaction():
            # Load jobs starting together on an empty database: one creates, the others wait.
            # An advisory lock does not refresh the catalog cache, so the check below can
            # miss a table the other job just committed: every CREATE is IF NOT EXISTS
            # (a partition without it failed "already exists" in test_concurrent_loads).
            self.con.execute("SELECT pg_advisory_xact_lock(hashtext('dcflow catalog tables'))")
            if self._exists(table):
                return
            for statement in self._create_sql(table, filters, " PARTITION BY RANGE (healpix)"):
                self.con.execute(statement)
            for pixel in range(12 * 4**self.partition_order):
                self.con.execute(
                    f"CREATE TABLE IF NOT EXISTS {table}_p{pixel} PARTITION OF {table} "
                    f"FOR VALUES FROM ({pixel << shift}) TO ({(pixel + 1) << shift})"
                )
            self.con.execute(
                f"CREATE TABLE IF NOT EXISTS {table}_nopos PARTITION OF {table} DEFAULT"
            )

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
        for table in rows:
            self._ensure_table(table, filters)
        loaded: dict[str, int] = {}
        with self.con.transaction():
            for table, chunks in rows.items():
                loaded[table] = self._replace(table, tile, chunks, run_id, filters)
            if before_commit is not None:
                before_commit()
        if rows and not self.synchronous_commit:
            table = list(rows)[-1]
            lsn = self.con.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
            self._unflushed = (table, tile_name(table, tile), lsn)
        return loaded

    def flush(self) -> None:
        """Wait until every tile this session committed is on disk.

        The last tile's ``catalog_tiles`` row is locked in a transaction committed with
        ``synchronous_commit`` on: a row lock is written to the WAL, so that commit waits for
        the WAL up to its own record, which holds every earlier commit. Should another session
        have replaced the tile since, its row is gone and this waits for the WAL writer
        instead (it flushes within three ``wal_writer_delay``).

        Raises
        ------
        RuntimeError
            If the WAL is not flushed within `FLUSH_TIMEOUT_S`.
        """
        if self._unflushed is None:
            return
        table, name, lsn = self._unflushed
        with self.con.transaction():
            self.con.execute("SET LOCAL synchronous_commit = on")
            self.con.execute(
                "SELECT 1 FROM catalog_tiles WHERE table_name = %s AND tile = %s FOR UPDATE",
                (table, name),
            )
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        flushed = "SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn"
        while not self.con.execute(flushed, (lsn,)).fetchone()[0]:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"catalog database: WAL not flushed to {lsn} within {FLUSH_TIMEOUT_S} s"
                )
            time.sleep(0.01)
        self._unflushed = None

    def _replace(
        self,
        table: str,
        tile: Mapping[str, object],
        chunks: Sequence[Mapping[str, np.ndarray]],
        run_id: str,
        filters: Iterable[str],
    ) -> int:
        keys = TABLES[table].tile_keys
        name = tile_name(table, tile)
        # Serialise loads of one tile (two reruns at once must not both insert).
        self.con.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{table}:{name}",))
        known = self.con.execute(
            "SELECT count(*) FROM catalog_tiles WHERE table_name = %s AND tile = %s",
            (table, name),
        ).fetchone()[0]
        if known:
            where = " AND ".join(f"{k} = %s" for k in keys)
            self.con.execute(f"DELETE FROM {table} WHERE {where}", [tile[k] for k in keys])
            self.con.execute(
                "DELETE FROM catalog_tiles WHERE table_name = %s AND tile = %s", (table, name)
            )
        n_rows = 0
        for chunk in chunks:
            self._check_tile(table, tile, chunk)
            n_rows += self._copy(table, chunk, filters)
        self.con.execute(
            "INSERT INTO catalog_tiles (table_name, tile, n_rows, run_id) VALUES (%s, %s, %s, %s)",
            (table, name, n_rows, run_id),
        )
        return n_rows

    def _partitions(self, table: str) -> int | None:
        """The HEALPix order of ``table``'s sky-region partitions, as created.

        Not the order this session was opened with; None if the partitions are not the ones
        `_ensure_table` makes (rows then go through the parent table).
        """
        if table not in self._partition_orders:
            n_leaves = self.con.execute(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = "
                "to_regclass(format('%%I.%%I', current_schema(), %s::text))",
                (table,),
            ).fetchone()[0]
            orders = [k for k in range(5) if 12 * 4**k + 1 == n_leaves]
            self._partition_orders[table] = orders[0] if orders else None
        return self._partition_orders[table]

    def _copy(self, table: str, chunk: Mapping[str, np.ndarray], filters: Iterable[str]) -> int:
        """COPY one chunk, each sky region's rows into its partition."""
        dtypes = {c.name: c.dtype for c in table_columns(table, filters=filters)}
        n_rows = len(next(iter(chunk.values()))) if chunk else 0
        order = self._partitions(table)
        if order is None or not n_rows:
            targets = [(table, slice(0, n_rows))]
        else:
            healpix = np.asarray(chunk["healpix"])
            region = np.where(healpix < 0, -1, healpix >> (2 * (HEALPIX_ORDER - order)))
            if np.any(region[1:] < region[:-1]):
                sort = np.argsort(region, kind="stable")
                chunk = {name: values[sort] for name, values in chunk.items()}
                region = region[sort]
            starts = np.flatnonzero(np.r_[True, region[1:] != region[:-1]])
            stops = np.r_[starts[1:], n_rows]
            targets = [
                (f"{table}_nopos" if region[a] < 0 else f"{table}_p{region[a]}", slice(a, b))
                for a, b in zip(starts, stops, strict=True)
            ]
        columns = ", ".join(chunk)
        for target, rows in targets:
            part = {name: values[rows] for name, values in chunk.items()}
            with self.con.cursor().copy(
                f"COPY {target} ({columns}) FROM STDIN (FORMAT binary)"
            ) as copy:
                for block in copy_binary(part, dtypes):
                    copy.write(block)
        return n_rows

    def create_indexes(self) -> list[str]:
        """The q3c, tile and unique row indexes of every table present (idempotent)."""
        names = []
        for table, spec in TABLES.items():
            if not self._exists(table):
                continue
            indexes = (
                (f"{table}_q3c", "q3c_ang2ipix(ra_deg, dec_deg)", ""),
                (f"{table}_tile", ", ".join(spec.tile_keys), ""),
                (f"{table}_row", ", ".join(("healpix", *spec.primary_key)), "UNIQUE "),
            )
            for index, expression, unique in indexes:
                self.con.execute(
                    f"CREATE {unique}INDEX IF NOT EXISTS {index} ON {table} ({expression})"
                )
                names.append(index)
        return names

    def analyze(self) -> None:
        """Refresh the planner's statistics (idempotent)."""
        for table in TABLES:
            if self._exists(table):
                self.con.execute(f"ANALYZE {table}")
        self.con.execute("ANALYZE catalog_tiles")

    def query(self, sql: str, params: Sequence[object] = ()) -> Table:
        """Run one SQL statement (``?`` placeholders); its rows as a table."""
        with self.con.cursor() as cursor:
            cursor.execute(sql.replace("?", "%s") if params else sql, list(params) or None)
            if cursor.description is None:
                return Table()
            names = [d.name for d in cursor.description]
            rows = cursor.fetchall()
        if not rows:
            return Table(names=names)
        return Table(list(zip(*rows, strict=True)), names=names)

    def cone(self, table: str, ra_deg: float, dec_deg: float, radius_deg: float) -> Table:
        """Rows of ``table`` within ``radius_deg`` of a position (q3c, exact).

        The healpix ranges of the cone are added to the q3c condition so that the planner
        prunes the sky-region partitions the cone cannot touch.
        """
        ranges = cone_pixel_ranges(ra_deg, dec_deg, radius_deg)
        pixels = " OR ".join(f"(healpix >= {a} AND healpix < {b})" for a, b in ranges)
        return self.query(
            f"SELECT * FROM {table} WHERE q3c_radial_query(ra_deg, dec_deg, ?, ?, ?) "
            f"AND ({pixels})",
            (float(ra_deg), float(dec_deg), float(radius_deg)),
        )

    def close(self) -> None:
        """Make the session's tiles durable (`flush`), then release the connection."""
        try:
            if not (self.con.closed or self.con.broken):
                self.flush()
        finally:
            self.con.close()
