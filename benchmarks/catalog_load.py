"""Catalog database: bulk load, index build, cone searches; DuckDB vs SQLite vs PostgreSQL.

Synthetic src rows of the real schema (`dcflow.catalog_db.table_columns("src")`) spread over a
Stripe-82-like strip (ra 0..40 deg, |dec| < 1.25 deg: 100 deg^2), generated as tiles of
``--tile-rows`` rows (one visit's worth, each tile a local 0.7 deg box, rows in pixel order
as `tile_arrays` sorts them), then, per backend:

1. bulk load: every tile through the backend's `replace_tile` (one transaction per tile;
   embedded: Parquet files per tile and region; PostgreSQL: binary COPY built by numpy,
   streamed a block at a time straight into the healpix partitions by ``--pg-connections``
   connections loading different tiles at once (as parallel load jobs do), commits
   asynchronous and each session's tiles flushed to disk once at its end; the previous way
   in the same run, on the same tiles: one connection, every commit waiting for its WAL
   flush; and one connection with asynchronous commits on ``--table-rows`` rows; SQLite:
   one ``executemany`` per tile), rows/s and rows per CPU-s (PostgreSQL: this process and
   the connections' backends, then each alone);
2. the naive load, measured in the same run: row-by-row INSERT statements into a table whose
   indexes already exist, on a sample of ``--naive-rows`` rows, rows/s;
3. index build after the load (embedded: each region's files compacted into pixel-sorted
   parts by an external sort that holds one bucket of ~2e6 rows; SQLite: healpix and tile
   indexes; PostgreSQL: q3c, tile and unique row indexes over every partition), seconds;
   the naive order, in the same run (PostgreSQL): the q3c index on the same rows unsorted;
4. cone searches of radius 1 arcmin and 1 deg at ``--cones`` random centres in the strip:
   median latency in ms (exact distance cut included) and rows returned; the naive way
   (embedded): the same cone on the tile files as loaded, before the index step;
5. cross-matches (DuckDB and PostgreSQL): an Object table (one row per 10 src rows, at their
   positions) joined with a forced_src table (every src row, given an object id) by object id,
   the light-curve query, forced rows/s; and src matched to Object by position within 1
   arcsec, src rows/s (DuckDB: a hash join on the order-15 pixel and its 8 neighbours, then
   the exact distance, in chunks of sky of ``--xmatch-chunk-rows`` src rows so that memory
   stays bounded; PostgreSQL: q3c_join). The naive way, in the same run: one query per
   object (light curve) or per src row (cone of 1 arcsec) on a sample, rows/s.

Usage: ``python benchmarks/catalog_load.py [--rows 1000000] [--dsn DSN] [--dir DIR]``;
``--rows 100000000`` runs only with ``--large`` (it prints the disk it needs first);
``--reuse-load`` runs the index step, cones and cross-match on catalogs an earlier run of
the same ``--rows`` left in ``--dir`` (a 10^8 run in two sessions).
PostgreSQL needs a DSN (``--dsn`` or ``DCFLOW_TEST_PG_DSN``, else the one
`scripts/postgres-up` writes to $DCFLOW_RUN_DIR/postgres/env.sh); without one its column is
skipped. It works in schemas of its own (``dcflow_bench``, ``dcflow_bench_old``), dropped at
the start and the end. Its CPU figures count this process and the connections' backends;
"with server helpers" adds the WAL writer, checkpointer and background writer (shared with
any other client of the server).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import shutil
import sqlite3
import statistics
import tempfile
import threading
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
from dcflow.catalog_db.base import sql_type
from dcflow.catalog_db.embedded import EmbeddedDatabase, arrow_column
from dcflow.catalog_schema import schema_for
from dcflow.status import read_env_file

PROVENANCE = {"campaign": "bench", "run_id": "bench", "code_version": "bench"}
PG_BYTES_PER_ROW = 600  # measured: PostgreSQL heap + indexes ~ 370 B at 1e6, 600 B with q3c twice
EMBEDDED_BYTES_PER_ROW = 150  # measured: Parquet files / rows, 146 B at 1e6 and 1e7
EMBEDDED_PEAK_BYTES_PER_ROW = 2 * EMBEDDED_BYTES_PER_ROW + 40
"""The index step holds a region's tile files and its parts at once (at worst one region is
the whole table); the cross-match adds a DuckDB forced_src table (~40 B a row)."""


class Figures(dict):
    """A backend's figures, each also printed as it is measured (a long run that fails
    late keeps what it measured)."""

    def __setitem__(self, key: str, value: float) -> None:
        print(f"    {key}: {value:,.1f}", flush=True)
        super().__setitem__(key, value)

    def update(self, other: dict) -> None:  # type: ignore[override]
        for key, value in other.items():
            self[key] = value


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


def server_helpers_cpu_s(backend_pid: int | None) -> float:
    """CPU seconds of the WAL writer, checkpointer and background writer of a local server
    (the children of ``backend_pid``'s postmaster), which write what the backends logged."""
    if backend_pid is None:
        return 0.0
    postmaster = Path(f"/proc/{backend_pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    total = 0.0
    for task in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split():
        try:
            name = Path(f"/proc/{task}/cmdline").read_bytes()
        except OSError:  # a backend that just ended
            continue
        if name.split(b"\0")[0].split(b": ")[-1].strip() in HELPERS:
            total += backend_cpu_s(int(task))
    return total


HELPERS = (b"walwriter", b"checkpointer", b"background writer")


def run_queue_wait_s() -> float:
    """Seconds this thread has waited for a CPU while runnable (/proc schedstat)."""
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def timed_load(load, args, server_pid: int | None = None) -> tuple[float, float, float]:
    """Rows per wall second, per CPU second (this process and its threads, plus the
    server backend's) and per wall second less the time the loading thread waited for a
    CPU (runnable but not running: the machine's other jobs), of ``load(visit, rows)``
    over every tile; making the rows is not timed.

    The CPU figure is what the load costs; the wall figure also counts waiting for the CPU
    on a shared machine, which the third figure takes out (it still counts I/O waits).
    """
    wall = cpu = waited = 0.0
    n = 0
    for visit, rows in make_tiles(args.rows, args.tile_rows):
        start, start_cpu = time.perf_counter(), time.process_time() + backend_cpu_s(server_pid)
        start_wait = run_queue_wait_s()
        load(visit, rows)
        wall += time.perf_counter() - start
        cpu += time.process_time() + backend_cpu_s(server_pid) - start_cpu
        waited += run_queue_wait_s() - start_wait
        n += len(rows["id"])
    return n / wall, n / cpu, n / max(wall - waited, 1e-9)


def time_cones(cone, centres, radius_deg, out: dict | None = None, label: str = ""):
    """Median wall ms and rows of ``cone`` at each centre; with ``out``, also the median
    CPU ms (this process's threads) and wall ms less the main thread's wait for a CPU."""
    times, cpus, ready, counts = [], [], [], []
    for ra, dec in centres:
        start, start_cpu, start_wait = time.perf_counter(), time.process_time(), run_queue_wait_s()
        counts.append(len(cone(ra, dec, radius_deg)))
        times.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
        ready.append(times[-1] - (run_queue_wait_s() - start_wait))
    if out is not None:
        out[f"{label} CPU ms"] = 1e3 * statistics.median(cpus)
        out[f"{label} less CPU wait ms"] = 1e3 * statistics.median(ready)
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
    import duckdb

    db = EmbeddedDatabase(workdir / "catalogs", region_order=args.region_order)
    out = Figures()
    with db:  # one session, as a load job or a query run holds it
        if not args.reuse_load:
            rate, cpu_rate, ready_rate = timed_load(
                lambda v, rows: db.replace_tile({"visit": v}, {"src": [rows]}), args
            )
            out.update(
                {
                    "load rows/s": rate,
                    "load rows/CPU-s": cpu_rate,
                    "load rows/s less CPU wait": ready_rate,
                }
            )
            n_parallel = min(args.rows, args.table_rows)
            out[f"load rows/s, {args.processes} processes ({n_parallel:.0e})"] = (
                parallel_embedded_load(workdir / "parallel", args, n_parallel)
            )
        elif sum(db.tile_rows("src").values()) != args.rows:
            raise SystemExit(f"--reuse-load: {db.path} does not hold {args.rows:,} src rows")
        cones = (
            ("cone 1' ms", 1 / 60, centres),
            ("cone 1 deg ms", 1.0, centres[: args.cones_1deg]),
        )
        for label, radius, where in cones:  # naive: tile files as loaded, before the index step
            if "naive-cones" in args.skip:
                continue
            out[f"naive: {label}, tile files"], _ = time_cones(
                lambda ra, dec, r: db.cone("src", ra, dec, r),
                where,
                radius,
                out,
                f"naive: {label[:-3]}, tile files",
            )
        out["files before index"] = len(db.files("src"))
        start, start_cpu = time.perf_counter(), time.process_time()
        db.create_indexes()
        db.analyze()
        out["index build s"] = time.perf_counter() - start
        out["index build CPU-s (this process)"] = time.process_time() - start_cpu
        out["files after index"] = len(db.files("src"))
        for label, radius, where in cones:
            out[label], out[label.replace("ms", "rows")] = time_cones(
                lambda ra, dec, r: db.cone("src", ra, dec, r), where, radius, out, label[:-3]
            )
        files = [str(db.path / f) for f in db.files("src")["file"]]
    out["disk MB"] = sum(p.stat().st_size for p in db.path.rglob("*") if p.is_file()) / 1e6
    con = duckdb.connect(str(workdir / "xmatch.duckdb"))
    # DuckDB's default limit is 80% of the host's RAM: cap it, spill beside the data
    con.execute(f"SET memory_limit = '{args.duckdb_memory}'")
    con.execute(f"SET temp_directory = '{workdir / 'xmatch.tmp'}'")
    con.execute("SET preserve_insertion_order = false")
    quoted = ", ".join(f"'{f}'" for f in files)
    con.execute(f"CREATE VIEW src AS SELECT * FROM read_parquet([{quoted}])")
    out.update(crossmatch_duckdb(con, args))
    con.close()
    (workdir / "xmatch.duckdb").unlink()
    shutil.rmtree(workdir / "xmatch.tmp", ignore_errors=True)
    if args.reuse_load or "table" in args.skip:
        return out
    # the previous embedded backend: Arrow appends into a DuckDB table, on the first tiles
    table_args = argparse.Namespace(rows=min(args.rows, args.table_rows), tile_rows=args.tile_rows)
    con = duckdb.connect(str(workdir / "table.duckdb"))
    body = ", ".join(f"{c.name} {sql_type(c)}" for c in table_columns("src"))
    con.execute(f"CREATE TABLE src ({body})")

    def append(visit, rows) -> None:
        con.execute("BEGIN TRANSACTION")
        con.register("tile", pa.table({k: arrow_column(v) for k, v in rows.items()}))
        con.execute("INSERT INTO src BY NAME SELECT * FROM tile")
        con.unregister("tile")
        con.execute("COMMIT")

    table_rate, table_cpu, table_ready = timed_load(append, table_args)
    out[f"DuckDB table append, {table_args.rows:.0e} rows/s"] = table_rate
    out["DuckDB table append rows/CPU-s"] = table_cpu
    out["DuckDB table append less CPU wait"] = table_ready
    # naive: row inserts into the indexed table
    con.execute("CREATE INDEX src_healpix ON src (healpix)")
    _, sample = next(make_tiles(args.naive_rows, args.naive_rows, seed=9))
    sample["visit"][:] = 10**6
    statement = f"INSERT INTO src ({', '.join(sample)}) VALUES ({', '.join('?' for _ in sample)})"
    con.execute("BEGIN")
    out["naive row INSERT rows/s"] = naive_rate(
        lambda v: con.execute(statement, v), sample, args.naive_rows
    )
    con.execute("ROLLBACK")
    con.close()
    (workdir / "table.duckdb").unlink()
    return out


def parallel_embedded_load(path: Path, args, n_rows: int) -> float:
    """Rows/s of ``n_rows`` loaded by ``--processes`` processes at once into one embedded
    database (as concurrent load jobs of different visits run); tiles made before timing."""
    import multiprocessing

    tiles = list(make_tiles(n_rows, args.tile_rows))
    context = multiprocessing.get_context("fork")
    start_flag = context.Event()

    def work(mine) -> None:
        db = EmbeddedDatabase(path, region_order=args.region_order)
        start_flag.wait()
        for visit, rows in mine:
            db.replace_tile({"visit": visit}, {"src": [rows]})
        db.close()

    workers = [
        context.Process(target=work, args=(tiles[i :: args.processes],))
        for i in range(args.processes)
    ]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # every worker forked and waiting
    start = time.perf_counter()
    start_flag.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    if any(worker.exitcode != 0 for worker in workers):
        raise RuntimeError("a parallel embedded load process failed")
    loaded = EmbeddedDatabase(path).tile_rows("src")
    if sum(loaded.values()) != n_rows:
        raise RuntimeError(f"parallel embedded load: {sum(loaded.values())} rows of {n_rows}")
    shutil.rmtree(path)
    return n_rows / elapsed


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


XMATCH_CELL_ORDER = 8
"""HEALPix order of the cells the positional match is chunked by (0.23 deg, 52 k src rows
at 10^8 rows on 100 deg^2)."""


def positional_match_duckdb(con, radius_deg: float, *, chunk_rows: int) -> tuple[int, int]:
    """Pairs (src, Object) closer than ``radius_deg``, and the chunks it took.

    The sky is cut into chunks of consecutive order-8 cells holding at most ``chunk_rows``
    src rows (one cell more if a cell alone holds more). Per chunk: the Objects in its cells
    and their neighbour cells, each with its order-15 pixel and that pixel's 8 neighbours
    (numpy), hash-joined by pixel to the chunk's src rows (a healpix range: DuckDB skips
    the Parquet row groups outside it), then the exact distance. Each src row falls in one
    chunk, and each Object within a 6.4" pixel of it is among its chunk's Objects, so every
    pair is counted once. Memory: one chunk's src and Object rows, not the whole table (at
    10^8 rows the single join of every src row held ~90 M object pixels and ran out).
    """
    from astropy_healpix import HEALPix

    from dcflow.catalog_db import HEALPIX_ORDER

    cell_shift = 2 * (HEALPIX_ORDER - XMATCH_CELL_ORDER)
    match_shift = 2 * (HEALPIX_ORDER - MATCH_ORDER)
    cells = con.execute(
        f"SELECT healpix >> {cell_shift} AS cell, count(*) AS n FROM src WHERE healpix >= 0 "
        "GROUP BY cell ORDER BY cell"
    ).fetchnumpy()
    cell_ids, cell_rows = cells["cell"].astype(np.int64), cells["n"].astype(np.int64)
    chunks, first, held = [], 0, 0
    for i, n in enumerate(cell_rows.tolist()):
        if held and held + n > chunk_rows:
            chunks.append(cell_ids[first:i])
            first, held = i, 0
        held += n
    chunks.append(cell_ids[first:])
    cell_grid = HEALPix(nside=2**XMATCH_CELL_ORDER, order="nested")
    pixel_grid = HEALPix(nside=2**MATCH_ORDER, order="nested")
    pairs = 0
    for chunk in chunks:
        near = np.concatenate([chunk, cell_grid.neighbours(chunk).ravel()])
        near = np.unique(near[near >= 0])
        con.register("near_cells", pa.table({"cell": near}))
        objects = con.execute(
            "SELECT object_id, ra_deg, dec_deg, healpix FROM object "
            f"WHERE healpix >= {int(near[0]) << cell_shift} "
            f"AND healpix < {(int(near[-1]) + 1) << cell_shift} "
            f"AND healpix >> {cell_shift} IN (SELECT cell FROM near_cells)"
        ).fetchnumpy()
        con.unregister("near_cells")
        centre = objects["healpix"] >> match_shift
        pixels = np.vstack([centre[None, :], pixel_grid.neighbours(centre)]).ravel()
        keep = pixels >= 0
        con.register(
            "object_pixels",
            pa.table(
                {
                    name: np.tile(objects[name], 9)[keep]
                    for name in ("object_id", "ra_deg", "dec_deg")
                }
                | {"pixel": pixels[keep]}
            ),
        )
        low, high = int(chunk[0]) << cell_shift, (int(chunk[-1]) + 1) << cell_shift
        pairs += con.execute(
            "SELECT count(*) FROM (SELECT ra_deg, dec_deg, healpix >> "
            f"{match_shift} AS pixel FROM src WHERE healpix >= {low} AND healpix < {high}) s "
            "JOIN (SELECT DISTINCT * FROM object_pixels) o ON o.pixel = s.pixel "
            "WHERE 2 * asin(sqrt(pow(sin(radians(s.dec_deg - o.dec_deg) / 2), 2) + "
            "cos(radians(s.dec_deg)) * cos(radians(o.dec_deg)) * "
            f"pow(sin(radians(s.ra_deg - o.ra_deg) / 2), 2))) <= radians({radius_deg})"
        ).fetchall()[0][0]
        con.unregister("object_pixels")
    return int(pairs), len(chunks)


def crossmatch_duckdb(con, args) -> dict:
    """Object x forced_src by object id and src x Object by position, vs one query per row."""
    import duckdb

    out = Figures()
    con.execute(
        "CREATE TABLE object AS SELECT row_number() OVER (ORDER BY healpix) AS object_id, "
        "ra_deg, dec_deg, healpix FROM (SELECT * FROM src USING SAMPLE 10 PERCENT "
        "(bernoulli, 3)) ORDER BY healpix"
    )
    n_obj = con.execute("SELECT count(*) FROM object").fetchone()[0]
    if "xmatch-id" not in args.skip:
        con.execute(
            "CREATE TABLE forced_src AS SELECT visit, ccd, healpix, psf_flux, psf_flux_err, "
            f"1 + hash(visit, ccd, id) % {n_obj} AS object_id FROM src"
        )
        n_forced = con.execute("SELECT count(*) FROM forced_src").fetchone()[0]
        start, start_cpu = time.perf_counter(), time.process_time()
        con.execute(
            "SELECT count(*), sum(f.psf_flux) FROM object o JOIN forced_src f USING (object_id)"
        ).fetchall()
        out["xmatch id: join forced rows/s"] = n_forced / (time.perf_counter() - start)
        out["xmatch id: forced rows/CPU-s"] = n_forced / (time.process_time() - start_cpu)
        try:
            con.execute("CREATE INDEX forced_src_object ON forced_src (object_id)")
        except duckdb.OutOfMemoryException as exc:  # the index must fit in --duckdb-memory
            print(f"    naive per-object query skipped: {exc}", flush=True)
        else:
            ids = np.random.default_rng(4).integers(1, n_obj + 1, 200)
            start, got = time.perf_counter(), 0
            for object_id in ids.tolist():
                got += len(
                    con.execute(
                        "SELECT * FROM forced_src WHERE object_id = ?", (object_id,)
                    ).fetchall()
                )
            out["naive: per-object query forced rows/s"] = got / (time.perf_counter() - start)
    # positional: each Object's order-15 pixel and its neighbours, hash-joined to src, in
    # chunks of sky (--xmatch-chunk-rows src rows each) so that memory stays bounded
    n_src = con.execute("SELECT count(*) FROM src").fetchone()[0]
    radius = 1 / 3600
    start, start_cpu = time.perf_counter(), time.process_time()
    out["xmatch position pairs"], out["xmatch position chunks"] = positional_match_duckdb(
        con, radius, chunk_rows=args.xmatch_chunk_rows
    )
    out['xmatch position 1": src rows/s'] = n_src / (time.perf_counter() - start)
    out['xmatch position 1": src rows/CPU-s'] = n_src / (time.process_time() - start_cpu)
    sample = con.execute("SELECT ra_deg, dec_deg FROM src USING SAMPLE 200 ROWS").fetchall()
    start = time.perf_counter()
    for ra, dec in sample:
        pixel_cone(con, "object", ra, dec, radius)
    out["naive: per-src cone src rows/s"] = len(sample) / (time.perf_counter() - start)
    return out


def bench_sqlite(workdir: Path, args, centres) -> dict:
    db = SqliteCatalogs(workdir / "catalogs.sqlite3")
    rate, cpu_rate, ready_rate = timed_load(lambda v, rows: db.load(rows), args)
    start = time.perf_counter()
    db.index()
    index = time.perf_counter() - start
    out = {
        "load rows/s": rate,
        "load rows/CPU-s": cpu_rate,
        "load rows/s less CPU wait": ready_rate,
    }
    out["index build s"] = index
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
    out = Figures()
    try:
        out.update(postgres_previous_loads(admin, dsn, args))
        admin.con.execute("DROP SCHEMA IF EXISTS dcflow_bench CASCADE")
        admin.con.execute("CREATE SCHEMA dcflow_bench")
        bench_dsn = f"{dsn} options='-c search_path=dcflow_bench,public'"
        loaders = [PostgresDatabase(bench_dsn) for _ in range(args.pg_connections)]
        rate, cpu_rate, helpers_rate, client_rate = timed_parallel_load(loaders, args, _local(dsn))
        out["load connections"] = args.pg_connections
        out["load rows/s"] = rate
        out["load rows/CPU-s"] = cpu_rate
        out["load rows/CPU-s with server helpers"] = helpers_rate
        out["load rows/CPU-s, client"] = client_rate
        if _local(dsn):
            out["load rows/CPU-s, backends"] = 1 / (1 / cpu_rate - 1 / client_rate)
        out["load: load average (1 min)"] = os.getloadavg()[0]
        for loader in loaders:
            loader.close()
        db = PostgresDatabase(bench_dsn, partition_order=1)
        pid = db.con.info.backend_pid if _local(dsn) else None
        start, start_cpu = time.perf_counter(), time.process_time() + backend_cpu_s(pid)
        db.create_indexes()
        db.analyze()
        out["index build s"] = time.perf_counter() - start
        out["index build CPU-s (backend)"] = time.process_time() + backend_cpu_s(pid) - start_cpu
        for label, radius in (("cone 1' ms", 1 / 60), ("cone 1 deg ms", 1.0)):
            out[label], out[label.replace("ms", "rows")] = time_cones(
                lambda ra, dec, r: db.cone("src", ra, dec, r), centres, radius
            )
        out.update(crossmatch_postgres(db.con, db.con.info.backend_pid if _local(dsn) else None))
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
        db.close()
    finally:
        admin.con.execute("DROP SCHEMA IF EXISTS dcflow_bench CASCADE")
        admin.close()
    return out


def postgres_previous_loads(admin, dsn: str, args) -> dict:
    """The load of every tile on one connection committing synchronously (the previous
    way), then ``--table-rows`` rows on one connection committing asynchronously, each into
    a schema dropped afterwards."""
    from dcflow.catalog_db.postgres import PostgresDatabase

    out = {}
    old_dsn = f"{dsn} options='-c search_path=dcflow_bench_old,public'"
    for synchronous, n_rows in ((True, args.rows), (False, min(args.rows, args.table_rows))):
        admin.con.execute("DROP SCHEMA IF EXISTS dcflow_bench_old CASCADE")
        admin.con.execute("CREATE SCHEMA dcflow_bench_old")
        db = PostgresDatabase(old_dsn, synchronous_commit=synchronous)
        try:
            if synchronous:
                helpers = server_helpers_cpu_s(db.con.info.backend_pid if _local(dsn) else None)
                rate, cpu_rate, ready_rate = timed_load(
                    lambda v, rows, db=db: db.replace_tile({"visit": v}, {"src": [rows]}),
                    args,
                    db.con.info.backend_pid if _local(dsn) else None,
                )
                helpers = (
                    server_helpers_cpu_s(db.con.info.backend_pid if _local(dsn) else None) - helpers
                )
                cpu_s = args.rows / cpu_rate
                out["previous: 1 connection, synchronous commits rows/s"] = rate
                out["previous: rows/CPU-s"] = cpu_rate
                out["previous: rows/CPU-s with server helpers"] = args.rows / (cpu_s + helpers)
                out["previous: rows/s less CPU wait"] = ready_rate
                out["previous: load average (1 min)"] = os.getloadavg()[0]
            else:
                rate, cpu_rate, _, _ = timed_parallel_load([db], args, _local(dsn), n_rows)
                out[f"1 connection, async commits, {n_rows:.0e} rows/s"] = rate
                out["1 connection, async commits rows/CPU-s"] = cpu_rate
        finally:
            db.close()
            admin.con.execute("DROP SCHEMA IF EXISTS dcflow_bench_old CASCADE")
    return out


PARALLEL_BATCH_TILES = 40
"""Tiles made (untimed) before each timed stretch of `timed_parallel_load` (2e6 rows)."""


def timed_parallel_load(databases, args, local: bool, n_rows: int | None = None):
    """Rows per wall second, per CPU second (this process's threads and the server
    backends of ``databases``), per CPU second with the server helpers, and per CPU second
    of this process alone, of ``n_rows`` (default ``--rows``) loaded by one thread per
    database, each taking the next tile (as load jobs of different visits run side by
    side), then each session's `flush` (its tiles on disk). The tiles are made in batches
    of `PARALLEL_BATCH_TILES` between the timed stretches."""
    pids = [db.con.info.backend_pid for db in databases] if local else []
    tiles = make_tiles(args.rows if n_rows is None else n_rows, args.tile_rows)
    errors: list[BaseException] = []

    def work(db, queue) -> None:
        try:
            while queue:
                visit, rows = queue.popleft()
                db.replace_tile({"visit": visit}, {"src": [rows]})
        except IndexError:  # another thread took the last tile
            pass
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    def cpu_now() -> float:
        return time.process_time() + sum(backend_cpu_s(pid) for pid in pids)

    helpers = server_helpers_cpu_s(pids[0] if pids else None)
    wall = cpu = client = 0.0
    n = 0
    while batch := list(itertools.islice(tiles, PARALLEL_BATCH_TILES)):
        queue = collections.deque(batch)
        start, start_cpu, start_client = time.perf_counter(), cpu_now(), time.process_time()
        threads = [threading.Thread(target=work, args=(db, queue)) for db in databases]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        wall += time.perf_counter() - start
        cpu += cpu_now() - start_cpu
        client += time.process_time() - start_client
        n += sum(len(rows["id"]) for _, rows in batch)
    start, start_cpu, start_client = time.perf_counter(), cpu_now(), time.process_time()
    for db in databases:
        db.flush()
    wall += time.perf_counter() - start
    cpu += cpu_now() - start_cpu
    client += time.process_time() - start_client
    helpers = server_helpers_cpu_s(pids[0] if pids else None) - helpers
    return n / wall, n / cpu, n / (cpu + helpers), n / client


def crossmatch_postgres(con, server_pid: int | None) -> dict:
    """The cross-matches of `crossmatch_duckdb` with q3c: by object id, and q3c_join.

    CPU figures count this process and the connection's backend, not parallel workers.
    """
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
    start, start_cpu = time.perf_counter(), time.process_time() + backend_cpu_s(server_pid)
    con.execute(
        "SELECT count(*), sum(f.psf_flux) FROM object o JOIN forced_src f USING (object_id)"
    ).fetchall()
    out["xmatch id: join forced rows/s"] = n_forced / (time.perf_counter() - start)
    cpu = time.process_time() + backend_cpu_s(server_pid) - start_cpu
    out["xmatch id: forced rows/CPU-s"] = n_forced / cpu
    con.execute("CREATE INDEX forced_src_object ON forced_src (object_id)")
    ids = np.random.default_rng(4).integers(1, n_obj + 1, 200)
    start, got = time.perf_counter(), 0
    for object_id in ids.tolist():
        got += len(
            con.execute("SELECT * FROM forced_src WHERE object_id = %s", (object_id,)).fetchall()
        )
    out["naive: per-object query forced rows/s"] = got / (time.perf_counter() - start)
    n_src = con.execute("SELECT count(*) FROM src").fetchone()[0]
    start, start_cpu = time.perf_counter(), time.process_time() + backend_cpu_s(server_pid)
    out["xmatch position pairs"] = con.execute(
        "SELECT count(*) FROM src s, object o "
        "WHERE q3c_join(s.ra_deg, s.dec_deg, o.ra_deg, o.dec_deg, 1.0 / 3600)"
    ).fetchone()[0]
    out['xmatch position 1": src rows/s'] = n_src / (time.perf_counter() - start)
    cpu = time.process_time() + backend_cpu_s(server_pid) - start_cpu
    out['xmatch position 1": src rows/CPU-s'] = n_src / cpu
    sample = con.execute("SELECT ra_deg, dec_deg FROM src ORDER BY random() LIMIT 200").fetchall()
    start = time.perf_counter()
    for ra, dec in sample:
        con.execute(
            "SELECT * FROM object WHERE q3c_radial_query(ra_deg, dec_deg, %s, %s, %s)",
            (ra, dec, 1 / 3600),
        ).fetchall()
    out["naive: per-src cone src rows/s"] = len(sample) / (time.perf_counter() - start)
    return out


def postgres_test_dsn() -> str:
    """``DCFLOW_TEST_PG_DSN``, else the test server's from its env file (which also gives
    PGPASSFILE)."""
    env_file = Path(os.environ.get("DCFLOW_RUN_DIR", Path(__file__).parents[1] / "run"))
    env_file = env_file / "postgres" / "env.sh"
    if "DCFLOW_TEST_PG_DSN" not in os.environ and env_file.is_file():
        for key, value in read_env_file(env_file).items():
            os.environ.setdefault(key, value)
    return os.environ.get("DCFLOW_TEST_PG_DSN", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tile-rows", type=int, default=50_000, help="rows per tile (visit)")
    parser.add_argument("--naive-rows", type=int, default=5_000, help="row INSERTs timed")
    parser.add_argument("--cones", type=int, default=20, help="cone centres per radius")
    parser.add_argument("--dsn", default=None, help="PostgreSQL DSN (default: see above)")
    parser.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    parser.add_argument(
        "--backends", default="duckdb,sqlite,postgres", help="comma-separated subset"
    )
    parser.add_argument(
        "--pg-connections", type=int, default=2, help="PostgreSQL: parallel load connections"
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="embedded: parallel load processes"
    )
    parser.add_argument(
        "--region-order", type=int, default=1, help="embedded: HEALPix order of the regions"
    )
    parser.add_argument(
        "--table-rows",
        type=int,
        default=2_000_000,
        help="embedded: rows appended to a DuckDB table (the previous backend), for comparison",
    )
    parser.add_argument(
        "--xmatch-chunk-rows",
        type=int,
        default=4_000_000,
        help="embedded: src rows per chunk of the positional cross-match (its memory bound)",
    )
    parser.add_argument(
        "--duckdb-memory",
        default="4GB",
        help="embedded: DuckDB memory_limit of the cross-match connection (it spills beyond)",
    )
    parser.add_argument(
        "--cones-1deg", type=int, default=None, help="cone centres of radius 1 deg (--cones)"
    )
    parser.add_argument(
        "--reuse-load",
        action="store_true",
        help="embedded: use the catalogs a previous run of the same --rows loaded in --dir "
        "(no load figures; stopped after them, say)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="embedded, comma-separated: naive-cones (on the tile files), xmatch-id (Object x "
        "forced_src by id and its naive query), table (the DuckDB-table comparison)",
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help="allow more than 10^7 rows (10^8: about an hour, ~34 GB at peak)",
    )
    args = parser.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    if args.dsn is None:
        args.dsn = postgres_test_dsn()
    if args.cones_1deg is None:
        args.cones_1deg = args.cones
    print(
        f"{args.rows:,} src rows, tiles of {args.tile_rows:,}: needs about "
        f"{args.rows * EMBEDDED_PEAK_BYTES_PER_ROW / 1e9:.1f} GB of disk at peak (embedded: "
        f"{args.rows * EMBEDDED_BYTES_PER_ROW / 1e9:.1f} GB after indexing), "
        f"{args.rows * PG_BYTES_PER_ROW / 1e9:.1f} GB (PostgreSQL)"
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
        figures = results[n]
        load = (
            f"load {2e9 / figures['load rows/s'] / 3600:6.1f} h at this run's wall rate "
            f"({2e9 / figures['load rows/CPU-s'] / 3600:5.2f} CPU-h), "
            if "load rows/s" in figures
            else "load not run (--reuse-load), "
        )
        disk = figures["disk MB"] / args.rows * 2e9 / 1e3
        index = figures["index build s"] / args.rows * 2e9
        index_cpu = next((v for k, v in figures.items() if k.startswith("index build CPU-s")), None)
        index_cpu_text = (
            "" if index_cpu is None else f" ({index_cpu / args.rows * 2e9 / 3600:5.2f} CPU-h)"
        )
        print(f"  {n:>10}: {load}index {index / 3600:6.1f} h{index_cpu_text}, disk {disk:6.0f} GB")


if __name__ == "__main__":
    main()
