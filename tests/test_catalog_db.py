"""The catalog database on both backends: per-tile loads, kills, reruns, cone searches.

The embedded (DuckDB) tests always run; the PostgreSQL ones need the server that
scripts/postgres-up starts (``DCFLOW_TEST_PG_DSN``, taken from $DCFLOW_RUN_DIR/postgres/env.sh
when unset; `make test` as root starts it) and skip with that reason elsewhere, but not under
CI as root (conftest).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from astropy.table import MaskedColumn, Table
from astropy.wcs import WCS

from dcflow.catalog_db import (
    TABLES,
    angular_distance_deg,
    cone_pixel_ranges,
    healpix_of,
    table_columns,
)
from dcflow.catalog_db.embedded import EmbeddedDatabase, part_cuts
from dcflow.catalog_db.loading import visit_rows
from dcflow.catalog_schema import annotate, schema_for
from dcflow.status import read_env_file

REPO = Path(__file__).resolve().parents[1]


def _postgres_dsn() -> str:
    """The test server's DSN; its env file (DSN, PGPASSFILE) fills what the caller left unset."""
    env_file = Path(os.environ.get("DCFLOW_RUN_DIR", REPO / "run")) / "postgres" / "env.sh"
    if "DCFLOW_TEST_PG_DSN" not in os.environ and env_file.is_file():
        for key, value in read_env_file(env_file).items():
            os.environ.setdefault(key, value)
    return os.environ.get("DCFLOW_TEST_PG_DSN", "")


PG_DSN = _postgres_dsn()
PROVENANCE = {"campaign": "test", "run_id": "run-1", "code_version": "0.1.0"}
CCDS = (3, 7)


def _catalog(kind: str, n: int, rng, *, ra0=150.0, dec0=2.2, half_width_deg=0.2, filters=()):
    table = Table()
    for col in schema_for(kind, filters=filters).values():
        if col.dtype == "f8":
            table[col.name] = rng.normal(size=n)
        elif col.dtype in ("i8", "i4"):
            table[col.name] = np.arange(1, n + 1, dtype=col.dtype)
        elif col.dtype == "?":
            table[col.name] = rng.random(n) < 0.5
        else:
            table[col.name] = np.full(n, "0,1")
    if "ra_deg" in table.colnames:
        table["ra_deg"] = ra0 + rng.uniform(-half_width_deg, half_width_deg, n)
        table["dec_deg"] = dec0 + rng.uniform(-half_width_deg, half_width_deg, n)
    return annotate(table, kind, filters=filters)


def _wcs(ra0: float, dec0: float) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra0, dec0]
    wcs.wcs.crpix = [100.0, 200.0]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return wcs


def _visit(visit: int, rng, *, n=500, ra0=150.0):
    srcs = [_catalog("src", n + 10 * i, rng, ra0=ra0) for i, _ in enumerate(CCDS)]
    forced = []
    for _ in CCDS:
        table = _catalog("forced_src", n, rng)
        table["x"], table["y"] = rng.uniform(0, 1000, n), rng.uniform(0, 2000, n)
        forced.append(table)
    wcs = [_wcs(ra0, 2.2) for _ in CCDS]
    rows = visit_rows(srcs, forced, wcs, visit=visit, band="r", ccds=CCDS, provenance=PROVENANCE)
    return rows, srcs, forced


# --- backends -----------------------------------------------------------------------------------


@pytest.fixture
def embedded(tmp_path):
    db = EmbeddedDatabase(tmp_path / "db" / "catalogs")
    yield db
    db.close()


@pytest.fixture
def postgres():
    if not PG_DSN:
        pytest.skip(
            "no PostgreSQL test server (DCFLOW_TEST_PG_DSN unset: run scripts/postgres-up as root)"
        )
    from dcflow.catalog_db.postgres import PostgresDatabase

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = PostgresDatabase(PG_DSN)
    admin.con.execute(f"CREATE SCHEMA {schema}")
    dsn = f"{PG_DSN} options='-c search_path={schema},public'"
    db = PostgresDatabase(dsn, partition_order=0)
    db.dsn = dsn
    yield db
    db.close()
    admin.con.execute(f"DROP SCHEMA {schema} CASCADE")
    admin.close()


BACKENDS = ["embedded", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db(request):
    return request.getfixturevalue(request.param)


def _count(db, table: str, where: str = "TRUE") -> int:
    return int(db.query(f"SELECT count(*) AS n FROM {table} WHERE {where}")["n"][0])


# --- tests --------------------------------------------------------------------------------------


def test_rows_per_tile_equal_the_tables_and_carry_ids_provenance_and_pixel(db):
    rng = np.random.default_rng(1)
    rows, srcs, forced = _visit(1003, rng)
    loaded = db.replace_tile({"visit": 1003}, rows, run_id="run-1")
    assert loaded == {"src": sum(map(len, srcs)), "forced_src": sum(map(len, forced))}
    for ccd, src in zip(CCDS, srcs, strict=True):
        assert _count(db, "src", f"visit = 1003 AND ccd = {ccd}") == len(src)
    assert db.tile_rows("src") == {"visit=1003": sum(map(len, srcs))}
    got = db.query("SELECT * FROM src WHERE ccd = 7 ORDER BY id")
    assert list(got.colnames) == [c.name for c in table_columns("src")]
    assert set(got["campaign"]) == {"test"} and set(got["run_id"]) == {"run-1"}
    assert set(got["filter"]) == {"r"}
    np.testing.assert_array_equal(np.asarray(got["id"]), np.asarray(srcs[1]["id"]))
    np.testing.assert_array_equal(
        np.asarray(got["healpix"]), healpix_of(srcs[1]["ra_deg"], srcs[1]["dec_deg"])
    )
    # forced_src positions come from the calexp WCS at the forced x, y
    forced_rows = db.query("SELECT object_id, ra_deg, dec_deg FROM forced_src WHERE ccd = 3")
    order = np.argsort(np.asarray(forced_rows["object_id"]))
    ra, dec = _wcs(150.0, 2.2).pixel_to_world_values(forced[0]["x"], forced[0]["y"])
    np.testing.assert_allclose(np.asarray(forced_rows["ra_deg"])[order], ra, atol=1e-9)
    np.testing.assert_allclose(np.asarray(forced_rows["dec_deg"])[order], dec, atol=1e-9)


def test_rows_read_back_from_fits_load_as_written(db, tmp_path):
    from dcflow.io import read_table, write_table

    rng = np.random.default_rng(12)
    tables = []
    for ccd in CCDS:
        path = tmp_path / f"src_{ccd}.fits"
        write_table(_catalog("src", 300, rng), path)
        tables.append(read_table(path))  # big-endian columns, as every FITS table
    rows = visit_rows(tables, [], [], visit=4, band="g", ccds=CCDS, provenance=PROVENANCE)
    assert db.replace_tile({"visit": 4}, rows)["src"] == 600
    got = db.query("SELECT psf_flux FROM src WHERE ccd = 3 ORDER BY id")
    np.testing.assert_array_equal(np.asarray(got["psf_flux"]), np.asarray(tables[0]["psf_flux"]))


def _extreme_catalog(kind: str, n: int, rng, *, filters=()) -> Table:
    """A catalog whose every column holds its type's edge values, masked entries among them:
    int extremes, NaN, infinities, -0.0, subnormals, text with quotes, backslashes and
    separators of several lengths."""
    table = _catalog(kind, n, rng, filters=filters)
    for name in table.colnames:
        column = table[name]
        if column.dtype.kind in "iu":
            info = np.iinfo(column.dtype)
            values = np.asarray(column).copy()
            values[:3] = (info.min, info.max, 0)
        elif column.dtype.kind == "f" and name not in ("ra_deg", "dec_deg"):
            values = np.asarray(column).copy()
            values[:7] = (np.nan, np.inf, -np.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.1)
        elif column.dtype.kind in "US":
            values = np.array(["r", "it's", "b\\s", 'q"t', "a,b\tc", "\\N", ""] * n)[:n]
        else:
            values = np.asarray(column)
        table[name] = MaskedColumn(values, mask=(np.arange(n) % 5 == 4))
    return table


def _assert_rows_equal(got: list[tuple], want: Table, columns: list[str]) -> None:
    """Database rows equal a catalog's: masked -> NULL, NaN -> NaN, bits of zeros alike."""
    for name, values in zip(columns, zip(*got, strict=True), strict=True):
        column = want[name]
        mask = np.ma.getmaskarray(column)
        assert [v is None for v in values] == list(mask), name
        kept = [value for value, masked in zip(values, mask, strict=True) if not masked]
        for value, expected in zip(kept, np.asarray(column)[~mask].tolist(), strict=True):
            expected = expected.decode() if isinstance(expected, bytes) else expected  # FITS text
            assert type(value) is type(expected), name
            if isinstance(expected, float):
                assert np.isnan(value) if np.isnan(expected) else value == expected, name
                assert np.signbit(value) == np.signbit(expected), name
            else:
                assert value == expected, name


@pytest.mark.postgres
def test_binary_copy_round_trips_every_column_type_of_a_fits_table_exactly(postgres, tmp_path):
    from dcflow.catalog_db.loading import patch_rows
    from dcflow.io import write_table

    rng = np.random.default_rng(21)
    provenance = {"campaign": "Ωmega 'c' \\ \"dr1\"", "run_id": "rün-1\t,", "code_version": "0.1"}
    src = _extreme_catalog("src", 40, rng)
    src["y"] = MaskedColumn(np.arange(40) + 0.5)  # the key to compare rows by
    objects = _extreme_catalog("object", 40, rng, filters=("g", "r"))
    objects["tract"], objects["patch"] = 7, MaskedColumn(np.full(40, "o'k\\1,1"))
    objects["object_id"] = MaskedColumn(np.arange(40))
    tables = {}
    for kind, table in (("src", src), ("object", objects)):
        write_table(table, tmp_path / f"{kind}.fits")
        tables[kind] = Table.read(tmp_path / f"{kind}.fits", mask_invalid=False)
        assert np.ma.getmaskarray(tables[kind]["flags" if kind == "src" else "parent"]).any()
    rows = visit_rows([tables["src"]], [], [], visit=5, band="r", ccds=[3], provenance=provenance)
    postgres.replace_tile({"visit": 5}, rows)
    object_rows, filters = patch_rows(tables["object"], provenance=provenance)
    postgres.replace_tile({"tract": 7, "patch": "o'k\\1,1"}, object_rows, filters=filters)

    for kind, key in (("src", "y"), ("object", "object_id")):
        catalog = list(schema_for(kind, filters=filters if kind == "object" else ()))
        got = postgres.con.execute(f"SELECT {', '.join(catalog)} FROM {kind} ORDER BY {key}")
        _assert_rows_equal(got.fetchall(), tables[kind], catalog)
        stored = postgres.con.execute(f"SELECT DISTINCT campaign, run_id FROM {kind}").fetchall()
        assert stored == [(provenance["campaign"], provenance["run_id"])]


def test_a_rerun_replaces_its_tile_only(db):
    rng = np.random.default_rng(2)
    first, _, _ = _visit(1, rng)
    other, other_srcs, _ = _visit(2, rng, ra0=150.3)
    db.replace_tile({"visit": 1}, first, run_id="run-1")
    db.replace_tile({"visit": 2}, other, run_id="run-1")
    before = db.query("SELECT sum(ra_deg) AS s, count(*) AS n FROM src WHERE visit = 2")
    n_first = _count(db, "src", "visit = 1")
    db.replace_tile({"visit": 1}, first, run_id="run-2")
    assert _count(db, "src", "visit = 1") == n_first
    tiles = db.query(
        "SELECT tile, run_id FROM catalog_tiles WHERE table_name = 'src' ORDER BY tile"
    )
    assert list(tiles["tile"]) == ["visit=1", "visit=2"]
    assert list(tiles["run_id"]) == ["run-2", "run-1"]
    after = db.query("SELECT sum(ra_deg) AS s, count(*) AS n FROM src WHERE visit = 2")
    assert after["n"][0] == before["n"][0] == sum(map(len, other_srcs))
    assert after["s"][0] == pytest.approx(before["s"][0], rel=1e-12)
    # a rerun with fewer rows leaves exactly those
    smaller = {"src": first["src"][:1], "forced_src": []}
    db.replace_tile({"visit": 1}, smaller, run_id="run-3")
    assert _count(db, "src", "visit = 1") == len(first["src"][0]["id"])
    assert _count(db, "forced_src", "visit = 1") == 0
    dup = db.query(
        "SELECT count(*) AS n FROM (SELECT visit, ccd, id FROM src "
        "GROUP BY visit, ccd, id HAVING count(*) > 1) AS d"
    )
    assert dup["n"][0] == 0


def test_rows_of_another_tile_are_refused(db):
    rng = np.random.default_rng(3)
    rows, _, _ = _visit(5, rng)
    with pytest.raises(ValueError, match="visit=6 carry another visit"):
        db.replace_tile({"visit": 6}, rows)
    assert db.tile_rows("src") == {}


_KILLED_LOAD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_catalog_db import _visit, _open
    db = _open({backend!r}, {target!r})
    rows, _, _ = _visit(9, np.random.default_rng(9))
    def hang():
        print("ROWS-WRITTEN", flush=True)
        time.sleep(120)
    db.replace_tile({{"visit": 9}}, rows, run_id="killed", before_commit=hang)
    """
)


def _open(backend: str, target: str):
    if backend == "embedded":
        return EmbeddedDatabase(target)
    from dcflow.catalog_db.postgres import PostgresDatabase

    return PostgresDatabase(target, partition_order=0)


def test_a_load_killed_mid_way_leaves_no_rows_and_the_rerun_loads_once(db, monkeypatch):
    backend = "embedded" if isinstance(db, EmbeddedDatabase) else "postgres"
    target = str(db.path) if backend == "embedded" else db.dsn
    rng = np.random.default_rng(4)
    kept, kept_srcs, _ = _visit(8, rng)
    db.replace_tile({"visit": 8}, kept, run_id="run-1")
    code = _KILLED_LOAD.format(tests=str(REPO / "tests"), backend=backend, target=target)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ROWS-WRITTEN"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _count(db, "src", "visit = 9") == 0
    assert _count(db, "forced_src", "visit = 9") == 0
    assert "visit=9" not in db.tile_rows("src")
    assert _count(db, "src", "visit = 8") == sum(map(len, kept_srcs))
    if backend == "embedded":  # the killed load's files: unlisted, then removed by analyze
        from dcflow.catalog_db import embedded as module

        listed = {str(f) for t in ("src", "forced_src") for f in db.files(t)["file"]}
        on_disk = {p.relative_to(db.path).as_posix() for p in db.path.rglob("*.parquet")}
        assert on_disk > listed
        monkeypatch.setattr(module, "GARBAGE_AGE_S", -1.0)
        db.analyze()
        on_disk = {p.relative_to(db.path).as_posix() for p in db.path.rglob("*.parquet")}
        assert on_disk == listed
    rows, srcs, _ = _visit(9, np.random.default_rng(9))
    db.replace_tile({"visit": 9}, rows, run_id="rerun")
    assert _count(db, "src", "visit = 9") == sum(map(len, srcs))


@pytest.mark.parametrize("radius_deg", [1 / 60, 0.1])
def test_a_cone_search_returns_exactly_the_brute_force_rows(db, radius_deg):
    rng = np.random.default_rng(5)
    for visit, ra0 in ((1, 149.9), (2, 150.1)):
        rows, _, _ = _visit(visit, rng, n=3000, ra0=ra0)
        db.replace_tile({"visit": visit}, rows)
    db.create_indexes()
    db.create_indexes()  # idempotent
    db.analyze()
    everything = db.query("SELECT visit, ccd, id, ra_deg, dec_deg FROM src")
    distance = angular_distance_deg(
        np.asarray(everything["ra_deg"], float),
        np.asarray(everything["dec_deg"], float),
        150.0,
        2.2,
    )
    expected = {
        (int(v), int(c), int(i))
        for v, c, i, d in zip(
            everything["visit"], everything["ccd"], everything["id"], distance, strict=True
        )
        if d <= radius_deg
    }
    got = db.cone("src", 150.0, 2.2, radius_deg)
    found = {
        (int(v), int(c), int(i))
        for v, c, i in zip(got["visit"], got["ccd"], got["id"], strict=True)
    }
    assert len(expected) > 10
    assert found == expected


def _assert_compacted(embedded, table: str) -> None:
    """Every listed file is a part whose rows are in pixel order, ranges disjoint per region."""
    import pyarrow.parquet as pq

    files = embedded.files(table)
    assert set(files["kind"]) == {"part"}
    for region in set(files["region"]):
        mine = files[files["region"] == region]
        assert np.all(np.asarray(mine["hmin"])[1:] > np.asarray(mine["hmax"])[:-1])
    for file in files["file"]:
        healpix = pq.read_table(embedded.path / file, columns=["healpix"])["healpix"].to_numpy()
        assert np.all(np.diff(healpix) >= 0)


def test_part_cuts_fall_between_pixels():
    assert part_cuts(np.array([1, 1, 2, 2, 2, 3, 4, 4]), 3) == [0, 2, 5, 8]
    assert part_cuts(np.array([5] * 7), 3) == [0, 7]
    assert part_cuts(np.array([1, 2, 3]), 3) == [0, 3]


def test_indexing_compacts_the_embedded_regions_in_pixel_order_keeping_rows_and_comments(
    tmp_path, monkeypatch
):
    """The embedded index step merges a region's tile files into pixel-sorted parts."""
    from dcflow.catalog_db import embedded as module

    monkeypatch.setattr(module, "PART_FILE_ROWS", 1500)  # a bucket is cut into several files
    embedded = EmbeddedDatabase(tmp_path / "catalogs", region_order=8)  # 0.05 deg^2 regions
    rng = np.random.default_rng(11)
    for visit, ra0 in ((1, 150.2), (2, 149.8), (3, 150.0)):
        rows, _, _ = _visit(visit, rng, n=2000, ra0=ra0)
        embedded.replace_tile({"visit": visit}, rows)
    loaded = embedded.files("src")
    assert set(loaded["kind"]) == {"tile"} and len(set(loaded["region"])) > 1
    before = embedded.query("SELECT visit, ccd, id, healpix FROM src ORDER BY visit, ccd, id")
    embedded.create_indexes()
    _assert_compacted(embedded, "src")
    assert len(embedded.files("src")) < len(loaded)
    assert max(embedded.files("src")["n_rows"]) <= 1500
    after = embedded.query("SELECT visit, ccd, id, healpix FROM src ORDER BY visit, ccd, id")
    assert len(after) == len(before) and all(np.all(after[c] == before[c]) for c in after.colnames)
    comment = embedded.query(
        "SELECT comment FROM duckdb_columns() WHERE table_name = 'src' AND column_name = 'ra_deg'"
    )["comment"][0]
    assert comment.startswith("[deg]")
    # a rerun of a tile after compaction: the parts lose its old rows, its new rows load once
    rows, srcs, _ = _visit(2, np.random.default_rng(12), n=1500, ra0=149.8)
    embedded.replace_tile({"visit": 2}, rows)
    assert _count(embedded, "src", "visit = 2") == sum(map(len, srcs))
    assert _count(embedded, "src", "visit <> 2") == int(np.sum(before["visit"] != 2))
    embedded.create_indexes()
    _assert_compacted(embedded, "src")
    assert _count(embedded, "src", "visit = 2") == sum(map(len, srcs))
    # nothing but listed files is left on disk
    listed = {str(f) for f in embedded.files("src")["file"]} | {
        str(f) for f in embedded.files("forced_src")["file"]
    }
    on_disk = {p.relative_to(embedded.path).as_posix() for p in embedded.path.rglob("*.parquet")}
    assert on_disk == listed


def test_a_rerun_during_compaction_is_neither_lost_nor_duplicated(tmp_path, monkeypatch):
    """A compaction whose input files a rerun replaced meanwhile is redone, not committed."""

    path = tmp_path / "catalogs"
    db = EmbeddedDatabase(path)
    rng = np.random.default_rng(21)
    for visit in (1, 2, 3):
        rows, _, _ = _visit(visit, rng, n=800)
        db.replace_tile({"visit": visit}, rows)
    n_others = _count(db, "src", "visit <> 2")
    rerun, rerun_srcs, rerun_forced = _visit(2, np.random.default_rng(22), n=600)
    original = EmbeddedDatabase._write_part
    calls = []

    def rerun_first(self, table, *args):  # after the src compaction's first part
        written = original(self, table, *args)
        if not calls and table == "src":
            calls.append(table)
            other = EmbeddedDatabase(path)
            other.replace_tile({"visit": 2}, rerun, run_id="during-index")
            other.close()
        return written

    monkeypatch.setattr(EmbeddedDatabase, "_write_part", rerun_first)
    db.create_indexes()
    assert calls
    assert _count(db, "src", "visit = 2") == sum(map(len, rerun_srcs))
    assert _count(db, "src", "visit <> 2") == n_others
    assert _count(db, "forced_src", "visit = 2") == sum(map(len, rerun_forced))
    _assert_compacted(db, "src")
    db.close()


def test_compact_rows_is_checked():
    with pytest.raises(ValueError, match="compact_rows must be >= 1, got 0"):
        EmbeddedDatabase("unused", compact_rows=0)


_PEAK_SCRIPT = """
import sys
import pyarrow as pa
from dcflow.catalog_db.embedded import EmbeddedDatabase, part_cuts
db = EmbeddedDatabase(sys.argv[1], region_order=0, compact_rows=int(sys.argv[2]))
db.files("src")
before = pa.default_memory_pool().max_memory()
db.create_indexes()
print(pa.default_memory_pool().max_memory() - before, len(db.files("src")))
"""


def test_the_index_step_holds_one_bucket_not_a_region(tmp_path):
    """Peak Arrow memory of compacting one region: bounded by compact_rows, not the region.

    Measured in a fresh process each (the pool's peak cannot be reset): with compact_rows of
    10,000 rows the peak is a fraction of the region's bytes, and it grows with the bound;
    with no bound (the whole region at once, as the DuckDB sort did) it exceeds them, so
    the measure can fail.
    """
    path = tmp_path / "catalogs"
    db = EmbeddedDatabase(path, region_order=0)
    rng = np.random.default_rng(31)
    for visit in range(24):
        rows, _, _ = _visit(visit, rng, n=3_000, ra0=150.0 + 0.5 * (visit % 8))
        db.replace_tile({"visit": visit}, rows)
    files = db.files("src")
    assert len(set(files["region"])) == 1
    region_bytes = sum((path / f).stat().st_size for f in files["file"])
    n_rows = _count(db, "src")
    db.close()
    peaks = {}
    for bound in (10_000, 40_000, 10**9):
        work = tmp_path / f"copy-{bound}"
        shutil.copytree(path, work)
        out = subprocess.run(
            [sys.executable, "-c", _PEAK_SCRIPT, str(work), str(bound)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        peaks[bound] = int(out[0])
        compacted = EmbeddedDatabase(work)
        assert _count(compacted, "src") == n_rows
        _assert_compacted(compacted, "src")
        assert len(compacted.files("src")) == int(out[1])
        compacted.close()
    # measured: 4.7, 13.7 and 48.3 MB against a region of 21.0 MB
    assert peaks[10_000] < region_bytes / 3, (peaks, region_bytes)
    assert peaks[10_000] < peaks[40_000] / 2, peaks
    assert peaks[10**9] > region_bytes, (peaks, region_bytes)


def test_cone_pixel_ranges_cover_the_cone():
    rng = np.random.default_rng(6)
    ra = 10.0 + rng.uniform(-2, 2, 20000)
    dec = -30.0 + rng.uniform(-2, 2, 20000)
    pixels = healpix_of(ra, dec)
    inside = angular_distance_deg(ra, dec, 10.0, -30.0) <= 0.5
    ranges = cone_pixel_ranges(10.0, -30.0, 0.5)
    covered = np.zeros(len(ra), dtype=bool)
    for start, end in ranges:
        covered |= (pixels >= start) & (pixels < end)
    assert inside.sum() > 100
    assert covered[inside].all()
    assert covered.sum() < 3 * inside.sum()  # a tight superset, not the whole sky
    with pytest.raises(ValueError, match="radius_deg must be > 0"):
        cone_pixel_ranges(10.0, -30.0, 0.0)


def test_object_tables_get_per_filter_columns_and_comments(db):
    rng = np.random.default_rng(7)
    objects = _catalog("object", 200, rng, filters=("g", "r"))
    objects["tract"] = 0
    objects["patch"] = "1,1"
    from dcflow.catalog_db.loading import patch_rows

    rows, filters = patch_rows(objects, provenance=PROVENANCE)
    assert filters == ["g", "r"]
    db.replace_tile({"tract": 0, "patch": "1,1"}, rows, filters=filters)
    assert db.tile_rows("object") == {"tract=0,patch=1,1": 200}
    got = db.query("SELECT r_psf_flux FROM object ORDER BY object_id")
    np.testing.assert_allclose(np.asarray(got["r_psf_flux"]), np.asarray(objects["r_psf_flux"]))
    if isinstance(db, EmbeddedDatabase):
        sql = (
            "SELECT comment FROM duckdb_columns() WHERE table_name = 'object' "
            "AND column_name = 'ra_deg'"
        )
    else:
        sql = (
            "SELECT col_description('object'::regclass, a.attnum) AS comment FROM pg_attribute a "
            "WHERE a.attrelid = 'object'::regclass AND a.attname = 'ra_deg'"
        )
    assert db.query(sql)["comment"][0] == "[deg] right ascension (reference filter centroid)"


def test_concurrent_loads_all_land(db):
    """Two load processes at once on an empty database (embedded: they queue on the lock)."""
    backend = "embedded" if isinstance(db, EmbeddedDatabase) else "postgres"
    target = str(db.path) if backend == "embedded" else db.dsn
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        sys.path.insert(0, {tests!r})
        from test_catalog_db import _visit, _open
        db = _open({backend!r}, {target!r})
        for visit in range({first}, {first} + 3):
            rows, _, _ = _visit(visit, np.random.default_rng(visit))
            db.replace_tile({{"visit": visit}}, rows)
        """
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                code.format(tests=str(REPO / "tests"), backend=backend, target=target, first=f),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in (100, 200)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    tiles = db.tile_rows("src")
    assert sorted(tiles) == [f"visit={v}" for v in (100, 101, 102, 200, 201, 202)]


def test_load_jobs_starting_together_on_a_new_embedded_database_all_open_it(tmp_path):
    """Processes opening a fresh embedded database at the same instant each get its manifest.

    Two SQLite connections switching a new file to WAL together got "database is locked"
    without waiting (40 of 100 two-process starts before the retry).
    """
    import multiprocessing

    context = multiprocessing.get_context("fork")

    def open_manifest(path, go):
        go.wait()
        EmbeddedDatabase(path)._sql()

    failed = 0
    for trial in range(12):
        go = context.Event()
        workers = [
            context.Process(target=open_manifest, args=(tmp_path / f"db{trial}", go))
            for _ in range(3)
        ]
        for worker in workers:
            worker.start()
        time.sleep(0.05)
        go.set()
        for worker in workers:
            worker.join(60)
        failed += sum(worker.exitcode != 0 for worker in workers)
    assert failed == 0


def test_tables_follow_the_catalog_schema():
    for name in TABLES:
        columns = [c.name for c in table_columns(name, filters=("g",))]
        schema = list(schema_for(name, filters=("g",)))
        assert columns[-len(schema) :] == schema
        assert {"campaign", "run_id", "code_version", "healpix"} <= set(columns)


@pytest.mark.postgres
def test_postgres_credentials_never_appear_in_messages():
    from dcflow.catalog_db.postgres import PostgresDatabase, redacted_dsn

    secret = "s3cr3t-" + uuid.uuid4().hex[:8]
    assert secret not in redacted_dsn(f"host=127.0.0.1 user=dcflow password={secret}")
    if not PG_DSN:
        pytest.skip(
            "no PostgreSQL test server (DCFLOW_TEST_PG_DSN unset: run scripts/postgres-up as root)"
        )
    with pytest.raises(RuntimeError) as caught:
        PostgresDatabase(f"{PG_DSN} password={secret} connect_timeout=5")
    assert "cannot connect" in str(caught.value)
    assert secret not in str(caught.value) and secret not in repr(caught.value.__cause__)


@pytest.mark.postgres
def test_postgres_tiles_commit_asynchronously_and_flush_puts_them_on_disk(postgres):
    """The WAL writer flushes a partial page up to 200 ms late: right after the commit only
    `flush` puts the WAL on disk, also when another session removed the tile's ledger row."""
    assert postgres.query("SHOW synchronous_commit")["synchronous_commit"][0] == "off"
    for visit in (11, 12):
        rows, srcs, _ = _visit(visit, np.random.default_rng(visit))
        postgres.replace_tile({"visit": visit}, rows)
        committed = postgres.query("SELECT pg_current_wal_insert_lsn()::text AS lsn")["lsn"][0]
        if visit == 12:  # the row flush() would lock is gone: it waits for the WAL writer
            postgres.query("DELETE FROM catalog_tiles WHERE tile = 'visit=12'")
        postgres.flush()
        on_disk = "SELECT pg_current_wal_flush_lsn() >= ?::pg_lsn AS done"
        assert postgres.query(on_disk, (committed,))["done"][0]
        assert _count(postgres, "src", f"visit = {visit}") == sum(map(len, srcs))


def test_db_index_analyze_and_query_through_the_command(tmp_path):
    from campaigns import write_campaign_config

    from dcflow.config_schema import load_config
    from dcflow.layout import Layout

    config_path = write_campaign_config(tmp_path)
    path = Layout.from_config(load_config(config_path)).path("catalog_db")
    rows, srcs, _ = _visit(1001, np.random.default_rng(11))
    EmbeddedDatabase(path).replace_tile({"visit": 1001}, rows)
    dcflow = [str(Path(sys.executable).with_name("dcflow")), "--config", str(config_path)]

    def run(*args):
        return subprocess.run([*dcflow[:1], *args, *dcflow[1:]], capture_output=True, text=True)

    for _ in range(2):  # idempotent
        done = run("db", "index")
        assert done.returncode == 0, done.stderr
        assert "index src_healpix: present" in done.stdout
    assert run("db", "analyze").returncode == 0
    out = tmp_path / "counts.csv"
    done = run(
        "query",
        "SELECT ccd, count(*) AS n FROM src GROUP BY ccd ORDER BY ccd",
        "--output",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    counts = Table.read(out, format="ascii.csv")
    assert list(counts["ccd"]) == list(CCDS)
    assert list(counts["n"]) == [len(t) for t in srcs]
    bad = run("query", "SELECT nothing FROM nowhere")
    assert bad.returncode == 1
    assert "query failed on the duckdb catalog database" in bad.stderr
