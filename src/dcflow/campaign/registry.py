"""The campaign registry: an SQLite table of raw files and their data ids.

Ingest reads each raw file's primary header once; later stages and the planner query the
registry instead of globbing the file system. Files that cannot be ingested are kept in a
``rejected`` table with the reason, so nothing is silently dropped.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from dcflow.dataids import normalize_data_id

__all__ = [
    "HEADER_KEYS",
    "SENSOR_OBSTYPES",
    "IngestReport",
    "RawRecord",
    "Registry",
    "connect_for_write",
    "ingest",
    "record_from_standard_header",
]

log = logging.getLogger(__name__)

HEADER_KEYS = {
    "instrument": "INSTRUME",
    "visit": "EXPNUM",
    "ccd": "CCDNUM",
    "obstype": "OBSTYPE",
    "filter": "FILTER",
    "exptime": "EXPTIME",
    "mjd": "MJD-OBS",
}
"""Registry column -> header keyword of the standard raw headers (cfht_sim and Fe55 frames)."""

SENSOR_OBSTYPES = ("fe55", "sensor_flat", "sensor_bias")
"""Exposure types of sensor characterisation (kept apart from a camera's science calibs):
Fe55 X-ray frames, the flat pair(s) and the bias (or dark) pair of the photon-transfer gain.
Their ``ccd`` is the sensor number and their ``visit`` the exposure number."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS raw (
    instrument TEXT NOT NULL,
    visit INTEGER NOT NULL,
    ccd INTEGER NOT NULL,
    obstype TEXT NOT NULL,
    filter TEXT NOT NULL,
    exptime REAL NOT NULL,
    mjd REAL NOT NULL,
    airmass REAL,
    ra_deg REAL,
    dec_deg REAL,
    path TEXT NOT NULL UNIQUE,
    PRIMARY KEY (instrument, visit, ccd)
);
CREATE INDEX IF NOT EXISTS raw_by_type ON raw (obstype, filter, visit);
CREATE INDEX IF NOT EXISTS raw_by_visit ON raw (visit);
CREATE TABLE IF NOT EXISTS rejected (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raw_data_id (path TEXT PRIMARY KEY, data_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS companion (
    path TEXT NOT NULL,
    kind TEXT NOT NULL,
    companion_path TEXT NOT NULL,
    PRIMARY KEY (path, kind)
);
"""


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One raw file and its data id, as stored in the registry."""

    instrument: str
    visit: int
    ccd: int
    obstype: str
    filter: str
    exptime: float
    mjd: float
    airmass: float | None
    ra_deg: float | None
    dec_deg: float | None
    path: str

    def row(self) -> tuple:
        """The record as a row of the registry's ``raw`` table (its columns' order)."""
        return (
            self.instrument,
            self.visit,
            self.ccd,
            self.obstype,
            self.filter,
            self.exptime,
            self.mjd,
            self.airmass,
            self.ra_deg,
            self.dec_deg,
            self.path,
        )


def record_from_standard_header(header: Mapping, path: str) -> RawRecord:
    """Read a data id from a raw header written with the standard keywords (`HEADER_KEYS`).

    Raises
    ------
    KeyError
        If a required keyword is missing; the message names it.
    ValueError
        If a value has the wrong type or is unsafe in a path.
    """
    missing = [key for key in HEADER_KEYS.values() if key not in header]
    if missing:
        raise KeyError(f"missing header keyword(s) {', '.join(missing)}")
    ids = normalize_data_id(
        {
            "instrument": header["INSTRUME"],
            "visit": header["EXPNUM"],
            "ccd": header["CCDNUM"],
            "filter": header["FILTER"],
        }
    )

    def optional(key: str) -> float | None:
        return float(header[key]) if key in header else None

    return RawRecord(
        instrument=str(ids["instrument"]),
        visit=int(ids["visit"]),
        ccd=int(ids["ccd"]),
        obstype=str(header["OBSTYPE"]).strip().lower(),
        filter=str(ids["filter"]),
        exptime=float(header["EXPTIME"]),
        mjd=float(header["MJD-OBS"]),
        airmass=optional("AIRMASS"),
        ra_deg=optional("RA_DEG"),
        dec_deg=optional("DEC_DEG"),
        path=path,
    )


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What an ingest did: files added, files already known, files rejected with reasons."""

    n_added: int
    n_known: int
    rejected: tuple[tuple[str, str], ...]
    seconds: float


def _connect(path: str | os.PathLike, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no campaign registry (run `dcflow ingest` first)")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
    conn.row_factory = sqlite3.Row
    return conn


def connect_for_write(path: str | os.PathLike) -> sqlite3.Connection:
    """Open (creating if needed) a registry for writing, with every table in place."""
    return _connect(path)


def ingest(
    paths: Iterable[str | os.PathLike],
    registry_path: str | os.PathLike,
    *,
    translate: Callable[[Mapping, str], RawRecord] = record_from_standard_header,
    describe: Callable[[Mapping, str], dict] | None = None,
    progress_every: int = 10000,
) -> IngestReport:
    """Add raw files to the registry from their primary headers.

    Parameters
    ----------
    paths : iterable of path-like
        Raw files to register. Already-registered paths are skipped without reading.
    registry_path : path-like
        The SQLite registry (created if needed).
    translate : callable
        Instrument-specific header -> `RawRecord` translation.
    describe : callable, optional
        Header, path -> the raw's full data id (run, field... from its camera description),
        kept in the ``raw_data_id`` table for path templates that use those keys.
    progress_every : int
        Log a progress line every this many files.

    Returns
    -------
    IngestReport
        Counts and the rejected files, each with the reason (also stored in the registry).
    """
    start = time.perf_counter()
    conn = _connect(registry_path)
    known = {row[0] for row in conn.execute("SELECT path FROM raw")}
    records: list[RawRecord] = []
    described: dict[str, dict] = {}
    rejected: list[tuple[str, str]] = []
    from astropy.io import fits  # here: shard Snakemakes open the registry, never read a raw

    n_known = 0
    for i, raw_path in enumerate(paths, 1):
        path = str(raw_path)
        if path in known:
            n_known += 1
            continue
        try:
            header = fits.getheader(path, 0)
            records.append(translate(header, path))
            if describe is not None:
                described[path] = describe(header, path)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            reason = str(exc).strip("'\"")
            rejected.append((path, reason))
            log.warning("rejected %s: %s", path, reason)
        if progress_every and i % progress_every == 0:
            log.info("ingest: %d files read, %d accepted", i, len(records))
    with conn:
        conn.executemany(
            "INSERT OR REPLACE INTO raw VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [r.row() for r in records],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO raw_data_id VALUES (?, ?)",
            [(p, json.dumps(d, sort_keys=True)) for p, d in described.items() if d],
        )
        conn.executemany("INSERT OR REPLACE INTO rejected VALUES (?,?)", rejected)
        conn.executemany("DELETE FROM rejected WHERE path = ?", [(r.path,) for r in records])
    conn.close()
    return IngestReport(len(records), n_known, tuple(rejected), time.perf_counter() - start)


class Registry:
    """Read-only queries over a campaign registry.

    Parameters
    ----------
    path : path-like
        The SQLite file written by `ingest`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._conn = _connect(path, readonly=True)

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def _records(self, where: str = "1", args: tuple = ()) -> Iterator[RawRecord]:
        sql = f"SELECT * FROM raw WHERE {where} ORDER BY visit, ccd"
        for row in self._conn.execute(sql, args):
            yield RawRecord(**dict(row))

    def records(self, *, obstype: str | None = None, filter: str | None = None) -> list[RawRecord]:
        """All raw records, optionally of one observation type and filter."""
        clauses, args = [], []
        if obstype is not None:
            clauses.append("obstype = ?")
            args.append(obstype)
        if filter is not None:
            clauses.append("filter = ?")
            args.append(filter)
        return list(self._records(" AND ".join(clauses) or "1", tuple(args)))

    def science_visits(self) -> list[tuple[int, str]]:
        """``(visit, filter)`` of every science (``object``) visit, in visit order."""
        rows = self._conn.execute(
            "SELECT DISTINCT visit, filter FROM raw WHERE obstype = 'object' ORDER BY visit"
        )
        return [(int(v), str(f)) for v, f in rows]

    def ccds(self, obstype: str = "object") -> list[int]:
        """The CCDs present in exposures of one observation type."""
        rows = self._conn.execute(
            "SELECT DISTINCT ccd FROM raw WHERE obstype = ? ORDER BY ccd", (obstype,)
        )
        return [int(r[0]) for r in rows]

    def filters(self, obstype: str = "object") -> list[str]:
        """The filters present in exposures of one observation type."""
        rows = self._conn.execute(
            "SELECT DISTINCT filter FROM raw WHERE obstype = ? ORDER BY filter", (obstype,)
        )
        return [str(r[0]) for r in rows]

    def visit_filter(self, visit: int) -> str:
        """The filter of one visit.

        Raises
        ------
        KeyError
            If the visit is not in the registry.
        """
        row = self._conn.execute(
            "SELECT filter FROM raw WHERE visit = ? LIMIT 1", (visit,)
        ).fetchone()
        if row is None:
            raise KeyError(f"visit {visit} is not in the registry {self.path}")
        return str(row[0])

    def raw_paths(self, visit: int) -> dict[int, str]:
        """CCD -> raw path for one visit."""
        return {r.ccd: r.path for r in self._records("visit = ?", (visit,))}

    def calib_paths(self, obstype: str, ccd: int, filter: str | None = None) -> list[str]:
        """Raw paths of the calibration exposures (``bias``, ``flat``) of one CCD (and filter)."""
        if filter is None:
            records = self._records("obstype = ? AND ccd = ?", (obstype, ccd))
        else:
            records = self._records(
                "obstype = ? AND ccd = ? AND filter = ?", (obstype, ccd, filter)
            )
        return [r.path for r in records]

    def sensor_paths(self, obstype: str, ccd: int, exposure: int | None = None) -> list[str]:
        """Raw paths of one sensor's exposures of a `SENSOR_OBSTYPES` type, in exposure order.

        ``exposure`` (the registry's ``visit``) picks one exposure.
        """
        if exposure is None:
            records = self._records("obstype = ? AND ccd = ?", (obstype, ccd))
        else:
            records = self._records(
                "obstype = ? AND ccd = ? AND visit = ?", (obstype, ccd, exposure)
            )
        return [r.path for r in records]

    def data_id(self, path: str) -> dict:
        """The full data id of a raw registered through a camera description (run, field...).

        Raises
        ------
        KeyError
            If the raw was not ingested through a description.
        """
        found = self.described_data_id(path)
        if not found:
            raise KeyError(f"{path} has no described data id in {self.path}")
        return found

    def described_data_id(self, path: str) -> dict:
        """`data_id`, or an empty dict for a raw ingested without a description."""
        try:
            row = self._conn.execute("SELECT data_id FROM raw_data_id WHERE path = ?", (path,))
        except sqlite3.OperationalError:  # a registry written before descriptions existed
            return {}
        found = row.fetchone()
        return {} if found is None else json.loads(found[0])

    def companions(self, path: str) -> dict[str, str]:
        """Companion kind -> path of the companions matched to a raw at ingest."""
        try:
            rows = self._conn.execute(
                "SELECT kind, companion_path FROM companion WHERE path = ?", (path,)
            )
        except sqlite3.OperationalError:  # a registry written before descriptions existed
            return {}
        return {str(k): str(p) for k, p in rows}

    def rejected(self) -> list[tuple[str, str]]:
        """Files that ingest could not register, with the reason."""
        return [(r[0], r[1]) for r in self._conn.execute("SELECT path, reason FROM rejected")]
