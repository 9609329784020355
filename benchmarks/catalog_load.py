"""Catalog database: bulk load, index build, cone searches; DuckDB vs SQLite vs PostgreSQL.

Synthetic src rows of the real schema (`dcflow.catalog_db.table_columns("src")`) spread over a
Stripe-82-like strip (ra 0..40 deg, |dec| < 1.25 deg: 100 deg^2), generated as tiles of
``--tile-rows`` rows (one visit's worth, each tile a local 0.7 deg box, rows in pixel order
as `tile_arrays` sorts them), then, per backend:

1. bulk load: every tile through the backend's `replace_tile` (one transaction per tile;
   DuckDB: Arrow appends; PostgreSQL: binary COPY built by numpy into healpix partitions,
   one connection, and ``--pg-connections`` loading different tiles at once (as parallel
   load jobs do) on up to 10^6 rows; SQLite: one ``executemany`` per tile), rows/s;
2. the naive load, measured in the same run: row-by-row INSERT statements into a table whose
   indexes already exist, on a sample of ``--naive-rows`` rows, rows/s;
3. index build after the load (DuckDB: the table rewritten in pixel order, then healpix and
   tile indexes; SQLite: healpix and tile indexes; PostgreSQL: q3c, tile and unique row
   indexes over every partition), seconds; the naive order, in the same run: the same index
   on the same rows stored unsorted (DuckDB: healpix; PostgreSQL: q3c);
4. cone searches of radius 1 arcmin and 1 deg at ``--cones`` random centres in the strip:
   median latency in ms (exact distance cut included) and rows returned; the naive way: the
   same pixel-range query on the same rows stored unsorted (no zone map can skip a block);
5. cross-matches (DuckDB and PostgreSQL): an Object table (one row per 10 src rows, at their
   positions) joined with a forced_src table (every src row, given an object id) by object id,
   the light-curve query, forced rows/s; and src matched to Object by position within 1
   arcsec, src rows/s (DuckDB: a hash join on the order-15 pixel and its 8 neighbours, then
   the exact distance; PostgreSQL: q3c_join). The naive way, in the same run: one query per
   object (light curve) or per src row (cone of 1 arcsec) on a sample, rows/s.

Usage: ``python benchmarks/catalog_load.py [--rows 1000000] [--dsn DSN] [--dir DIR]``;
``--rows 100000000`` runs only with ``--large`` (it prints the disk it needs first).
PostgreSQL needs a DSN (``--dsn`` or ``DCFLOW_TEST_PG_DSN``, which `scripts/postgres-up`
writes to run/postgres/env.sh); without one its column is skipped. It works in a schema of
its own (``dcflow_bench``), dropped at the start and the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from dcflow.catalog_db import (
    angular_distance_deg,
    cone_pixel_ranges,
    table_columns,
    tile_arrays,
)
from dcflow.catalog_db.base import TILES_SQL, sql_type
from dcflow.catalog_db.embedded import EmbeddedDatabase
from dcflow.catalog_schema import schema_for

PROVENANCE = {"campaign": "bench", "run_id": "bench", "code_version": "bench"}
BYTES_PER_ROW = 600  # measured: DuckDB file / rows ~ 250 B, PostgreSQL heap + indexes ~ 600 B


def make_tiles(n_rows: int, tile_rows: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    columns = schema_for("src")
    for visit in range(-(-n_rows // tile_rows)):
        n = min(tile_rows, n_rows - visit * tile_rows)
        ra0, dec0 = rng.uniform(0.35, 39.65), rng.uniform(-0.9, 0.9)
        cat = {}
        for name, col in columns.items():
            if col.dtype == "f8":
                cat[name] = rng.normal(size=n)
            elif col.dtype in ("i8", "i4"):
                cat[name] = np.arange(1, n + 1, dtype=col.dtype)
            else:
                cat[name] = rng.random(n) < 0.5
        cat["ra_deg"] = ra0 + rng.uniform(-0.35, 0.35, n)
        cat["dec_deg"] = dec0 + rng.uniform(-0.35, 0.35, n)
        ccd = np.repeat(np.arange(36), -(-n // 36))[:n]
        rows = tile_arrays(
            "src", cat, ids={"visit": visit, "ccd": 0, "filter": "r"}, provenance=PROVENANCE
        )
        rows["ccd"] = ccd.astype("i4")
        rows["id"] = np.arange(1, n + 1, dtype="i8")  # unique per (visit, ccd, id)
        yield visit, rows


def cone_centres(args, seed: int = 2):
    """Positions of random rows of the first tiles (a cone where the data are)."""
    rng = np.random.default_rng(seed)
    centres = []
    for _, rows in make_tiles(min(args.rows, args.cones * args.tile_rows), args.tile_rows):
        pick = rng.integers(len(rows["ra_deg"]))
        centres.append((float(rows["ra_deg"][pick]), float(rows["dec_deg"][pick])))
    return (centres * args.cones)[: args.cones]


def backend_cpu_s(pid: int | None) -> float:
    """CPU seconds of a local server process (the PostgreSQL backend of our connection)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_load(load, args, server_pid: int | None = None) -> tuple[float, float]:
    """Rows per wall second and per CPU second (this process and its threads, plus the
    server backend's) of ``load(visit, rows)`` over every tile; making the rows is not timed.

    The CPU figure is what the load costs on an idle machine; the wall figure also counts
    waiting for the CPU on a shared one (the load average says how shared).
    """
    wall = cpu = 0.0
    n = 0
    for visit, rows in make_tiles(args.rows, args.tile_rows):
        start, start_cpu = time.perf_counter(), time.process_time() + backend_cpu_s(server_pid)
        load(visit, rows)
        wall += time.perf_counter() - start
        cpu += time.process_time() + backend_cpu_s(server_pid) - start_cpu
        n += len(rows["id"])
    return n / wall, n / cpu


def time_cones(cone, centres, radius_deg):
    times, counts = [], []
    for ra, dec in centres:
        start = time.perf_counter()
        counts.append(len(cone(ra, dec, radius_deg)))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), int(np.median(counts))


class SqliteCatalogs:
    """The SQLite alternative: same columns, executemany per tile, indexes after."""

    def __init__(self, path: Path) -> None:
        self.con = sqlite3.connect(path, isolation_level=None)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.columns = table_columns("src")
        body = ", ".join(f"{c.name} {sql_type(c)}" for c in self.columns)
        self.con.execute(f"CREATE TABLE src ({body})")
        self.insert = f"INSERT INTO src VALUES ({', '.join('?' for _ in self.columns)})"

    def load(self, rows) -> None:
        values = zip(*(rows[c.name].tolist() for c in self.columns), strict=True)
        self.con.execute("BEGIN")
        self.con.executemany(self.insert, values)
        self.con.execute("COMMIT")

    def index(self) -> None:
        self.con.execute("CREATE INDEX IF NOT EXISTS src_healpix ON src (healpix)")
        self.con.execute("CREATE INDEX IF NOT EXISTS src_tile ON src (visit)")
        self.con.execute("ANALYZE")

    def cone(self, ra, dec, radius_deg):
        ranges = cone_pixel_ranges(ra, dec, radius_deg)
        where = " OR ".join(f"(healpix >= {a} AND healpix < {b})" for a, b in ranges)
        got = np.array(
            self.con.execute(f"SELECT ra_deg, dec_deg FROM src WHERE {where}").fetchall()
        ).reshape(-1, 2)
        return got[angular_distance_deg(got[:, 0], got[:, 1], ra, dec) <= radius_deg]


def naive_rate(execute_one, rows, n: int) -> float:
    """Rows/s of one INSERT statement per row (autocommit off: one transaction)."""
    names = list(rows)
    start = time.perf_counter()
    for i in range(n):
        execute_one([rows[name][i].item() for name in names])
    return n / (time.perf_counter() - start)


def bench_duckdb(workdir: Path, args, centres) -> dict:
    db = EmbeddedDatabase(workdir / "catalogs.duckdb")
    with db:  # one session: the lock and connection held, as a load job holds them
        rate, cpu_rate = timed_load(
            lambda v, rows: db.replace_tile({"visit": v}, {"src": [rows]}), args
        )
        start = time.perf_counter()
        db.create_indexes()
        db.analyze()
        index = time.perf_counter() - start
        out = {"load rows/s": rate, "load rows/CPU-s": cpu_rate, "index build s": index}
        for label, radius in (("cone 1' ms", 1 / 60), ("cone 1 deg ms", 1.0)):
            out[label], out[label.replace("ms", "rows")] = time_cones(
                lambda ra, dec, r: db.cone("src", ra, dec, r), centres, radius
            )
    out["disk MB"] = (workdir / "catalogs.duckdb").stat().st_size / 1e6
    import duckdb

    con = duckdb.connect(str(workdir / "catalogs.duckdb"))
    con.execute("CREATE TABLE src_unsorted AS SELECT * FROM src ORDER BY random()")
    start = time.perf_counter()
    con.execute("CREATE INDEX src_unsorted_healpix ON src_unsorted (healpix)")
    out["naive: index, unsorted rows s"] = time.perf_counter() - start
    for radius, name in ((1 / 60, "1'"), (1.0, "1 deg")):
        for table, label in (("src", "pixel-ordered"), ("src_unsorted", "naive: unsorted")):
            out[f"{label}: cone {name} ra,dec ms"], _ = time_cones(
                lambda ra, dec, r, t=table: pixel_cone(con, t, ra, dec, r), centres, radius
            )
    con.execute("DROP TABLE src_unsorted")
    out.update(crossmatch_duckdb(con, args))
    con.close()
    # naive: row inserts into the indexed table
    _, sample = next(make_tiles(args.naive_rows, args.naive_rows, seed=9))
    sample["visit"][:] = 10**6
    con = duckdb.connect(str(workdir / "catalogs.duckdb"))
    statement = f"INSERT INTO src ({', '.join(sample)}) VALUES ({', '.join('?' for _ in sample)})"
    con.execute("BEGIN")
    out["naive row INSERT rows/s"] = naive_rate(
        lambda v: con.execute(statement, v), sample, args.naive_rows
    )
    con.execute("ROLLBACK")
    con.close()
    return out


def pixel_cone(con, table: str, ra: float, dec: float, radius_deg: float) -> np.ndarray:
    """The embedded backend's cone search on a DuckDB connection (pixel ranges, exact cut)."""
    where = " OR ".join(
        f"(healpix >= {a} AND healpix < {b})" for a, b in cone_pixel_ranges(ra, dec, radius_deg)
    )
    got = con.execute(f"SELECT ra_deg, dec_deg FROM {table} WHERE {where}").fetchnumpy()
    return got["ra_deg"][angular_distance_deg(got["ra_deg"], got["dec_deg"], ra, dec) <= radius_deg]


MATCH_ORDER = 15
"""HEALPix order of the positional match: 6.4 arcsec pixels, so a 1 arcsec circle lies in a
pixel and its 8 neighbours."""


def crossmatch_duckdb(con, args) -> dict:
    """Object x forced_src by object id and src x Object by position, vs one query per row."""
    from astropy_healpix import HEALPix

    from dcflow.catalog_db import HEALPIX_ORDER

    out = {}
    con.execute(
        "CREATE TABLE object AS SELECT row_number() OVER () AS object_id, ra_deg, dec_deg, "
        "healpix FROM src USING SAMPLE 10 PERCENT (bernoulli, 3)"
    )
    n_obj = con.execute("SELECT count(*) FROM object").fetchone()[0]
    con.execute(
        "CREATE TABLE forced_src AS SELECT visit, ccd, healpix, psf_flux, psf_flux_err, "
        f"1 + hash(visit, ccd, id) % {n_obj} AS object_id FROM src"
    )
    n_forced = con.execute("SELECT count(*) FROM forced_src").fetchone()[0]
    start = time.perf_counter()
    con.execute(
        "SELECT count(*), sum(f.psf_flux) FROM object o JOIN forced_src f USING (object_id)"
    ).fetchall()
    out["xmatch id: join forced rows/s"] = n_forced / (time.perf_counter() - start)
    con.execute("CREATE INDEX forced_src_object ON forced_src (object_id)")
    ids = np.random.default_rng(4).integers(1, n_obj + 1, 200)
    start, got = time.perf_counter(), 0
    for object_id in ids.tolist():
        got += len(
            con.execute("SELECT * FROM forced_src WHERE object_id = ?", (object_id,)).fetchall()
        )
    out["naive: per-object query forced rows/s"] = got / (time.perf_counter() - start)
    # positional: each Object's order-15 pixel and its neighbours, hash-joined to src
    objects = con.execute("SELECT object_id, healpix FROM object").fetchnumpy()
    grid = HEALPix(nside=2**MATCH_ORDER, order="nested")
    centre = objects["healpix"] >> (2 * (HEALPIX_ORDER - MATCH_ORDER))
    start = time.perf_counter()
    near = np.vstack([centre[None, :], grid.neighbours(centre)])
    object_ids, pixels = np.tile(objects["object_id"], 9), near.ravel()
    con.register(
        "object_pixel_rows",
        pa.table({"object_id": object_ids[pixels >= 0], "pixel": pixels[pixels >= 0]}),
    )
    con.execute("CREATE TABLE object_pixels AS SELECT DISTINCT * FROM object_pixel_rows")
    con.unregister("object_pixel_rows")
    n_src = con.execute("SELECT count(*) FROM src").fetchone()[0]
    radius = 1 / 3600
    matched = con.execute(
        "SELECT count(*) FROM src s "
        f"JOIN object_pixels p ON p.pixel = s.healpix >> {2 * (HEALPIX_ORDER - MATCH_ORDER)} "
        "JOIN object o ON o.object_id = p.object_id "
        "WHERE 2 * asin(sqrt(pow(sin(radians(s.dec_deg - o.dec_deg) / 2), 2) + "
        "cos(radians(s.dec_deg)) * cos(radians(o.dec_deg)) * "
        f"pow(sin(radians(s.ra_deg - o.ra_deg) / 2), 2))) <= radians({radius})"
    ).fetchone()[0]
    out['xmatch position 1": src rows/s'] = n_src / (time.perf_counter() - start)
    out["xmatch position pairs"] = matched
    sample = con.execute("SELECT ra_deg, dec_deg FROM src USING SAMPLE 200 ROWS").fetchall()
    start = time.perf_counter()
    for ra, dec in sample:
        pixel_cone(con, "object", ra, dec, radius)
    out["naive: per-src cone src rows/s"] = len(sample) / (time.perf_counter() - start)
    con.execute("DROP TABLE object_pixels")
    return out


def bench_sqlite(workdir: Path, args, centres) -> dict:
    db = SqliteCatalogs(workdir / "catalogs.sqlite3")
    rate, cpu_rate = timed_load(lambda v, rows: db.load(rows), args)
    start = time.perf_counter()
    db.index()
    index = time.perf_counter() - start
    out = {"load rows/s": rate, "load rows/CPU-s": cpu_rate, "index build s": index}
    for label, radius in (("cone 1' ms", 1 / 60), ("cone 1 deg ms", 1.0)):
        out[label], out[label.replace("ms", "rows")] = time_cones(db.cone, centres, radius)
    db.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    out["disk MB"] = (workdir / "catalogs.sqlite3").stat().st_size / 1e6
    _, sample = next(make_tiles(args.naive_rows, args.naive_rows, seed=9))
    db.con.execute("BEGIN")
    out["naive row INSERT rows/s"] = naive_rate(
        lambda v: db.con.execute(db.insert, v), sample, args.naive_rows
    )
    db.con.execute("ROLLBACK")
    return out


def _local(dsn: str) -> bool:
    """Whether the server runs on this machine (its backend's CPU time is readable)."""
    from psycopg.conninfo import conninfo_to_dict

    return conninfo_to_dict(dsn).get("host", "localhost") in ("127.0.0.1", "localhost", "::1")


def bench_postgres(dsn: str, args, centres) -> dict:
    from dcflow.catalog_db.postgres import PostgresDatabase

    admin = PostgresDatabase(dsn)
    admin.con.execute("DROP SCHEMA IF EXISTS dcflow_bench CASCADE")
    admin.con.execute("CREATE SCHEMA dcflow_bench")
    bench_dsn = f"{dsn} options='-c search_path=dcflow_bench,public'"
    db = PostgresDatabase(bench_dsn, partition_order=1)
    try:
        rate, cpu_rate = timed_load(
            lambda v, rows: db.replace_tile({"visit": v}, {"src": [rows]}),
            args,
            db.con.info.backend_pid if _local(dsn) else None,
        )
        out = {"load rows/s": rate, "load rows/CPU-s": cpu_rate}
        out[f"load rows/s, {args.pg_connections} connections"] = parallel_pg_load(bench_dsn, args)
        start = time.perf_counter()
        db.create_indexes()
        db.analyze()
        out["index build s"] = time.perf_counter() - start
        for label, radius in (("cone 1' ms", 1 / 60), ("cone 1 deg ms", 1.0)):
            out[label], out[label.replace("ms", "rows")] = time_cones(
                lambda ra, dec, r: db.cone("src", ra, dec, r), centres, radius
            )
        out.update(crossmatch_postgres(db.con))
        size = db.query(
            "SELECT sum(pg_total_relation_size(c.oid)) AS b FROM pg_class c "
            "JOIN pg_namespace s ON s.oid = c.relnamespace "
            "WHERE s.nspname = 'dcflow_bench' AND c.relkind = 'r'"
        )
        out["disk MB"] = float(size["b"][0]) / 1e6
        # naive index order: the same rows, unsorted, into a plain table; q3c index after
        con = db.con
        con.execute("CREATE TABLE unsorted AS SELECT * FROM src ORDER BY random()")
        start = time.perf_counter()
        con.execute("CREATE INDEX unsorted_q3c ON unsorted (q3c_ang2ipix(ra_deg, dec_deg))")
        out["q3c index, unsorted rows s"] = time.perf_counter() - start
        start = time.perf_counter()
        con.execute("CREATE INDEX sorted_q3c ON src (q3c_ang2ipix(ra_deg, dec_deg), visit)")
        out["q3c index, pixel-ordered rows s"] = time.perf_counter() - start
        _, sample = next(make_tiles(args.naive_rows, args.naive_rows, seed=9))
        sample["visit"][:] = 10**6
        statement = (
            f"INSERT INTO src ({', '.join(sample)}) VALUES ({', '.join('%s' for _ in sample)})"
        )
        with con.transaction(force_rollback=True):
            out["naive row INSERT rows/s"] = naive_rate(
                lambda v: con.execute(statement, v), sample, args.naive_rows
            )
    finally:
        db.close()
        admin.con.execute("DROP SCHEMA IF EXISTS dcflow_bench CASCADE")
        admin.close()
    return out


def parallel_pg_load(dsn: str, args) -> float:
    """Rows/s of the same tiles loaded by ``--pg-connections`` connections at once (as load
    jobs of different visits run), into the schema's second table ``src_parallel``."""
    import threading

    from dcflow.catalog_db.postgres import PostgresDatabase

    tiles = list(make_tiles(args.rows if args.rows <= 10**6 else 10**6, args.tile_rows))
    connections = [PostgresDatabase(dsn) for _ in range(args.pg_connections)]
    first = connections[0].con
    first.execute("DROP SCHEMA IF EXISTS dcflow_bench_parallel CASCADE")
    first.execute("CREATE SCHEMA dcflow_bench_parallel")
    for con in connections:
        con.con.execute("SET search_path = dcflow_bench_parallel, public")
    first.execute(TILES_SQL.replace("loaded_at TIMESTAMP", "loaded_at TIMESTAMPTZ"))
    errors: list[BaseException] = []

    def work(db, mine) -> None:
        try:
            for visit, rows in mine:
                db.replace_tile({"visit": visit}, {"src": [rows]})
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    try:
        start = time.perf_counter()
        threads = [
            threading.Thread(target=work, args=(db, tiles[i :: len(connections)]))
            for i, db in enumerate(connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
    finally:
        first.execute("DROP SCHEMA dcflow_bench_parallel CASCADE")
        for con in connections:
            con.close()
    if errors:
        raise errors[0]
    return sum(len(rows["id"]) for _, rows in tiles) / elapsed


def crossmatch_postgres(con) -> dict:
    """The cross-matches of `crossmatch_duckdb` with q3c: by object id, and q3c_join."""
    out = {}
    con.execute(
        "CREATE TABLE object AS SELECT row_number() OVER () AS object_id, ra_deg, dec_deg "
        "FROM src TABLESAMPLE BERNOULLI (10) REPEATABLE (3)"
    )
    con.execute("CREATE INDEX object_q3c ON object (q3c_ang2ipix(ra_deg, dec_deg))")
    n_obj = con.execute("SELECT count(*) FROM object").fetchone()[0]
    con.execute(
        "CREATE TABLE forced_src AS SELECT visit, ccd, healpix, psf_flux, psf_flux_err, "
        f"1 + (hashtext(visit || ',' || ccd || ',' || id)::bigint & 2147483647) % {n_obj} "
        "AS object_id FROM src"
    )
    con.execute("ANALYZE object")
    con.execute("ANALYZE forced_src")
    n_forced = con.execute("SELECT count(*) FROM forced_src").fetchone()[0]
    start = time.perf_counter()
    con.execute(
        "SELECT count(*), sum(f.psf_flux) FROM object o JOIN forced_src f USING (object_id)"
    ).fetchall()
    out["xmatch id: join forced rows/s"] = n_forced / (time.perf_counter() - start)
    con.execute("CREATE INDEX forced_src_object ON forced_src (object_id)")
    ids = np.random.default_rng(4).integers(1, n_obj + 1, 200)
    start, got = time.perf_counter(), 0
    for object_id in ids.tolist():
        got += len(
            con.execute("SELECT * FROM forced_src WHERE object_id = %s", (object_id,)).fetchall()
        )
    out["naive: per-object query forced rows/s"] = got / (time.perf_counter() - start)
    n_src = con.execute("SELECT count(*) FROM src").fetchone()[0]
    start = time.perf_counter()
    out["xmatch position pairs"] = con.execute(
        "SELECT count(*) FROM src s, object o "
        "WHERE q3c_join(s.ra_deg, s.dec_deg, o.ra_deg, o.dec_deg, 1.0 / 3600)"
    ).fetchone()[0]
    out['xmatch position 1": src rows/s'] = n_src / (time.perf_counter() - start)
    sample = con.execute("SELECT ra_deg, dec_deg FROM src ORDER BY random() LIMIT 200").fetchall()
    start = time.perf_counter()
    for ra, dec in sample:
        con.execute(
            "SELECT * FROM object WHERE q3c_radial_query(ra_deg, dec_deg, %s, %s, %s)",
            (ra, dec, 1 / 3600),
        ).fetchall()
    out["naive: per-src cone src rows/s"] = len(sample) / (time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tile-rows", type=int, default=50_000, help="rows per tile (visit)")
    parser.add_argument("--naive-rows", type=int, default=5_000, help="row INSERTs timed")
    parser.add_argument("--cones", type=int, default=20, help="cone centres per radius")
    parser.add_argument("--dsn", default=os.environ.get("DCFLOW_TEST_PG_DSN", ""))
    parser.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    parser.add_argument(
        "--backends", default="duckdb,sqlite,postgres", help="comma-separated subset"
    )
    parser.add_argument(
        "--pg-connections", type=int, default=2, help="PostgreSQL: parallel load connections"
    )
    parser.add_argument(
        "--large", action="store_true", help="allow more than 10^7 rows (10^8: hours, ~40 GB)"
    )
    args = parser.parse_args()
    need_gb = args.rows * BYTES_PER_ROW / 1e9
    print(
        f"{args.rows:,} src rows, tiles of {args.tile_rows:,}: needs about {need_gb:.1f} GB "
        "of disk per backend"
    )
    if args.rows > 10**7 and not args.large:
        parser.error(f"--rows {args.rows:,} needs --large (disk printed above)")
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="dcflow-catalog-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    centres = cone_centres(args)
    results: dict[str, dict] = {}
    try:
        for backend in args.backends.split(","):
            print(f"... {backend}", flush=True)
            if backend == "duckdb":
                results[backend] = bench_duckdb(workdir, args, centres)
            elif backend == "sqlite":
                results[backend] = bench_sqlite(workdir, args, centres)
            elif backend == "postgres":
                if not args.dsn:
                    print("    skipped: no DSN (--dsn or DCFLOW_TEST_PG_DSN)")
                    continue
                results[backend] = bench_postgres(args.dsn, args, centres)
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    names = list(results)
    metrics = list(dict.fromkeys(k for r in results.values() for k in r))
    print(f"{'':34}" + "".join(f"{n:>16}" for n in names))
    for metric in metrics:
        cells = []
        for n in names:
            value = results[n].get(metric)
            cells.append(f"{'-':>16}" if value is None else f"{value:>16,.1f}")
        print(f"{metric:34}" + "".join(cells))
    print("DC2013 extrapolation (linear in rows; an estimate, not a measurement): a 2e9-row table")
    for n in names:
        rate = results[n]["load rows/s"]
        disk = results[n]["disk MB"] / args.rows * 2e9 / 1e3
        index = results[n]["index build s"] / args.rows * 2e9
        print(
            f"  {n:>10}: load {2e9 / rate / 3600:6.1f} h, index {index / 3600:6.1f} h "
            f"(n log n: more), disk {disk:6.0f} GB (heap + indexes)"
        )


if __name__ == "__main__":
    main()
