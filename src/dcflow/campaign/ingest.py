"""Ingest of real raw files through a camera description.

`collect_files` turns directories, files and file lists into one sorted list of FITS files.
`ingest_described` registers the raws among them (file names matching the camera's
``raw.file_pattern``) that the registry does not hold yet:

1. each new raw's primary header is read once, in worker processes, and only for the keywords
   the description needs (`dcflow.campaign.headers`); its data id and registry columns come
   from the description (`dcflow.instruments.camera.CameraDescription.read_data_id`);
2. each companion the description names (SDSS fpM, psField, tsField) is looked up among the
   collected files by its file name (the candidate nearest the raw in the directory tree
   wins), its header is read, and the keywords the description lists must equal the raw's
   data id: a difference rejects the raw, naming both files and each differing keyword;
3. a raw whose data id is already registered under another path is rejected, naming it.

Rejected files are stored with their reason in the registry's ``rejected`` table; known files
are neither read nor touched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcflow.campaign.headers import HeaderReadError, map_chunks, read_keywords
from dcflow.campaign.registry import RawRecord, connect_for_write
from dcflow.dataids import normalize_data_id
from dcflow.instruments.camera import CameraDescription

__all__ = ["FITS_SUFFIXES", "IngestSummary", "collect_files", "ingest_described"]

log = logging.getLogger(__name__)

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fits.fz", ".fz")
"""File-name endings taken as FITS files when a directory is walked."""

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class IngestSummary:
    """What one ingest did.

    Parameters
    ----------
    n_files : int
        FITS files collected from the sources.
    n_raws : int
        Of those, raws of the camera (file name matches).
    n_added : int
        Raws registered by this ingest.
    n_known : int
        Raws the registry already held (not read again).
    rejected : tuple of (str, str)
        Raws (or files) refused, each with the reason.
    n_companions : int
        Companion files linked to the raws added.
    seconds : float
        Wall time.
    """

    n_files: int
    n_raws: int
    n_added: int
    n_known: int
    rejected: tuple[tuple[str, str], ...]
    n_companions: int
    seconds: float


def _is_fits(name: str) -> bool:
    return name.lower().endswith(FITS_SUFFIXES)


def collect_files(
    sources: Iterable[str | os.PathLike], file_lists: Iterable[str | os.PathLike] = ()
) -> tuple[list[str], list[str], dict[str, str]]:
    """The FITS files of some directories, files and file lists, absolute and sorted.

    Parameters
    ----------
    sources : iterable of path-like
        Directories (walked recursively, FITS files by `FITS_SUFFIXES`) or files.
    file_lists : iterable of path-like
        Text files naming one file per line (blank lines and ``#`` comments skipped; relative
        names are relative to the list's directory).

    Returns
    -------
    tuple
        ``(files, missing, trees)``: the files found, the sources or listed files that do not
        exist, and for each file found in a directory source that directory (companions of a
        raw are looked for in the raw's own tree first).
    """
    found: set[str] = set()
    missing: list[str] = []
    trees: dict[str, str] = {}
    for source in sources:
        path = Path(source)
        if path.is_dir():
            top = os.path.abspath(path)
            for root, _dirs, names in os.walk(path):
                for n in names:
                    if _is_fits(n):
                        full = os.path.abspath(os.path.join(root, n))
                        found.add(full)
                        trees.setdefault(full, top)
        elif path.is_file():
            found.add(os.path.abspath(path))
        else:
            missing.append(str(path))
    for listing in file_lists:
        base = Path(listing).parent
        for line in Path(listing).read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path = Path(line) if Path(line).is_absolute() else base / line
            if path.is_file():
                found.add(os.path.abspath(path))
            else:
                missing.append(str(path))
    return sorted(found), missing, trees


def _record(camera: CameraDescription, data_id: dict, metadata: dict, path: str) -> RawRecord:
    core = normalize_data_id(
        {
            "instrument": data_id.get("instrument", camera.name),
            "visit": data_id["visit"],
            "ccd": data_id["ccd"],
            "filter": data_id.get("filter", "none"),
        }
    )

    def optional(key: str) -> float | None:
        return float(metadata[key]) if metadata.get(key) is not None else None

    return RawRecord(
        instrument=str(core["instrument"]),
        visit=int(core["visit"]),
        ccd=int(core["ccd"]),
        obstype=str(metadata.get("obstype", "object")).strip().lower(),
        filter=str(core["filter"]),
        exptime=float(metadata.get("exptime", 0.0)),
        mjd=float(metadata.get("mjd", 0.0)),
        airmass=optional("airmass"),
        ra_deg=optional("ra_deg"),
        dec_deg=optional("dec_deg"),
        path=path,
    )


def _describe_chunk(args: tuple[list[str], CameraDescription]) -> list[tuple[str, Any]]:
    """Worker: header -> (record, full data id) or the reason for rejection, per raw."""
    paths, camera = args
    keywords = camera.header_keywords()
    out: list[tuple[str, Any]] = []
    for path in paths:
        try:
            header = read_keywords(path, keywords)
            data_id, metadata = camera.read_data_id(header, path)
            if "ccd" in data_id:
                camera.detector(int(data_id["ccd"]))
            out.append((path, (_record(camera, data_id, metadata, path), data_id)))
        except HeaderReadError as exc:
            out.append((path, str(exc)))
        except (KeyError, ValueError) as exc:
            out.append((path, f"{path}: {str(exc).strip(chr(39))}"))
    return out


def _companion_chunk(args: tuple[list[str], frozenset[str]]) -> list[tuple[str, Any]]:
    paths, keywords = args
    out: list[tuple[str, Any]] = []
    for path in paths:
        try:
            out.append((path, read_keywords(path, keywords)))
        except HeaderReadError as exc:
            out.append((path, str(exc)))
    return out


def _nearest(raw: str, candidates: Sequence[str]) -> str:
    return max(candidates, key=lambda c: (len(os.path.commonpath([raw, c])), c))


def ingest_described(
    files: Sequence[str],
    registry_path: str | os.PathLike,
    camera: CameraDescription,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    trees: Mapping[str, str] | None = None,
    obstype: str | None = None,
) -> IngestSummary:
    """Register the new raws among ``files`` (see the module docstring).

    Parameters
    ----------
    files : sequence of str
        Absolute paths (`collect_files`): raws and their companions.
    registry_path : path-like
        The campaign registry (created if needed).
    camera : CameraDescription
        The camera that took the raws.
    workers : int, optional
        Worker processes reading headers (default: the CPUs available).
    progress : callable, optional
        ``progress(done, total)`` as raw headers are read.
    trees : mapping of str to str, optional
        File -> the directory source it was found in (`collect_files`): a raw's companions
        are taken only from its own tree when it has one.
    obstype : str, optional
        The exposure type of every raw ingested, for cameras whose headers do not say it (a
        lab camera's Fe55, flat and dark frames: ``fe55``, ``sensor_flat``, ``sensor_bias``);
        default: the description's ``metadata.obstype``.

    Returns
    -------
    IngestSummary
        True counts: a second ingest of the same files adds 0 and knows them all.
    """
    start = time.perf_counter()
    raws = [f for f in files if camera.matches(f)]
    others: dict[str, list[str]] = {}
    for f in files:
        if not camera.matches(f):
            others.setdefault(os.path.basename(f), []).append(f)
    conn = connect_for_write(registry_path)
    try:
        known = {row[0] for row in conn.execute("SELECT path FROM raw")}
        new = [r for r in raws if r not in known]
        chunks = [(new[i : i + _CHUNK], camera) for i in range(0, len(new), _CHUNK)]
        described = map_chunks(
            _describe_chunk, chunks, n_items=len(new), workers=workers, progress=progress
        )
        rejected: list[tuple[str, str]] = []
        accepted: list[tuple[RawRecord, dict]] = []
        for path, result in described:
            if isinstance(result, str):
                rejected.append((path, result))
            elif obstype:
                record, data_id = result
                accepted.append((dataclasses.replace(record, obstype=obstype), data_id))
            else:
                accepted.append(result)
        accepted, links, refused = _match_companions(accepted, camera, others, workers, trees or {})
        rejected += refused
        accepted, refused = _unique_data_ids(conn, accepted)
        rejected += refused
        with conn:
            conn.executemany(
                "INSERT INTO raw VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [r.row() for r, _ in accepted],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO raw_data_id VALUES (?, ?)",
                [(r.path, json.dumps(d, sort_keys=True)) for r, d in accepted],
            )
            kept = {r.path for r, _ in accepted}
            conn.executemany(
                "INSERT OR REPLACE INTO companion VALUES (?, ?, ?)",
                [link for link in links if link[0] in kept],
            )
            conn.executemany("INSERT OR REPLACE INTO rejected VALUES (?,?)", rejected)
            conn.executemany("DELETE FROM rejected WHERE path = ?", [(p,) for p in kept])
    finally:
        conn.close()
    for path, reason in rejected:
        log.warning("rejected %s", reason if path in reason else f"{path}: {reason}")
    return IngestSummary(
        n_files=len(files),
        n_raws=len(raws),
        n_added=len(accepted),
        n_known=len(raws) - len(new),
        rejected=tuple(rejected),
        n_companions=sum(1 for link in links if link[0] in {r.path for r, _ in accepted}),
        seconds=time.perf_counter() - start,
    )


def _match_companions(
    accepted: list[tuple[RawRecord, dict]],
    camera: CameraDescription,
    others: dict[str, list[str]],
    workers: int | None,
    trees: Mapping[str, str],
) -> tuple[list[tuple[RawRecord, dict]], list[tuple[str, str, str]], list[tuple[str, str]]]:
    if not camera.companions or not accepted:
        return accepted, [], []
    wanted: dict[str, list[tuple[str, str]]] = {}
    problems: dict[str, list[str]] = {}
    for record, data_id in accepted:
        for kind, spec in camera.companions.items():
            try:
                name = camera.companion_name(kind, data_id)
            except KeyError as exc:
                problems.setdefault(record.path, []).append(str(exc.args[0]))
                continue
            tree = trees.get(record.path)
            candidates = [
                c for c in others.get(name, ()) if tree is None or trees.get(c, tree) == tree
            ]
            if candidates:
                wanted.setdefault(record.path, []).append((kind, _nearest(record.path, candidates)))
            elif spec["required"]:
                problems.setdefault(record.path, []).append(
                    f"no {kind} companion {name} among the files ingested"
                    + (f" under {tree}" if tree else "")
                )
    paths = sorted({c for links in wanted.values() for _, c in links})
    keywords = camera.companion_keywords()
    chunks = [(paths[i : i + _CHUNK], keywords) for i in range(0, len(paths), _CHUNK)]
    headers = dict(map_chunks(_companion_chunk, chunks, n_items=len(paths), workers=workers))
    links: list[tuple[str, str, str]] = []
    for record, data_id in accepted:
        for kind, companion in wanted.get(record.path, ()):
            header = headers[companion]
            if isinstance(header, str):
                problems.setdefault(record.path, []).append(f"its {kind}: {header}")
                continue
            diff = camera.companion_mismatches(kind, data_id, header)
            if diff:
                problems.setdefault(record.path, []).append(
                    f"{record.path} and its {kind} {companion} disagree: {', '.join(diff)}"
                )
            else:
                links.append((record.path, kind, companion))
    kept = [(r, d) for r, d in accepted if r.path not in problems]
    refused = [
        (path, msgs[0] if len(msgs) == 1 and path in msgs[0] else f"{path}: {'; '.join(msgs)}")
        for path, msgs in problems.items()
    ]
    return kept, links, refused


def _unique_data_ids(
    conn, accepted: list[tuple[RawRecord, dict]]
) -> tuple[list[tuple[RawRecord, dict]], list[tuple[str, str]]]:
    kept, refused = [], []
    seen: dict[tuple, str] = {}
    for record, data_id in accepted:
        key = (record.instrument, record.visit, record.ccd)
        row = conn.execute(
            "SELECT path FROM raw WHERE instrument = ? AND visit = ? AND ccd = ?", key
        ).fetchone()
        other = row[0] if row is not None else seen.get(key)
        if other is not None:
            refused.append(
                (
                    record.path,
                    f"{record.path}: data id instrument={key[0]} visit={key[1]} ccd={key[2]} "
                    f"is already registered by {other}",
                )
            )
            continue
        seen[key] = record.path
        kept.append((record, data_id))
    return kept, refused
