"""Ingest speed: files per second on N synthetic raw headers (default 100,000), side by side.

Writes N header-only FITS files shaped like cfht_sim raws (about 70 cards, 2 header blocks,
``raw_<visit>_<ccd>.fits`` in one directory per visit), then, from a warm page cache, times

1. ``dcflow ingest``'s path (`dcflow.orchestration.prepare.ingest_files` with the cfht_sim
   camera description: walk, headers read in W worker processes, data ids, SQLite registry);
2. the header reading alone (`dcflow.campaign.headers.read_keywords_many`) with W workers
   and with 1;
3. the alternative: ``astropy.io.fits.getheader`` of each file, serially, and the registry's
   older ingest (`dcflow.campaign.registry.ingest`: getheader + translation + SQLite), on a
   sample of the files (``--sample``), since they are ~10x slower.

Usage: ``python benchmarks/ingest.py [--files 100000] [--workers 2] [--sample 10000]
[--dir DIR]``. Prints one line per method with files/s; the target is >= 2,000 files/s for
(1) on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from astropy.io import fits

from dcflow.campaign.headers import read_keywords_many
from dcflow.campaign.registry import ingest as astropy_ingest
from dcflow.orchestration.prepare import ingest_files

CCDS = 36


def _card(key: str, value: object, comment: str = "") -> str:
    if isinstance(value, bool):
        text = f"{'T' if value else 'F':>20}"
    elif isinstance(value, str):
        text = f"'{value:<8}'".ljust(20)
    elif isinstance(value, float):
        text = f"{value:>20.10G}"
    else:
        text = f"{value:>20}"
    card = f"{key:<8}= {text}" + (f" / {comment}" if comment else "")
    return card[:80].ljust(80)


def _header(visit: int, ccd: int) -> bytes:
    cards = [
        _card("SIMPLE", True, "conforms to FITS standard"),
        _card("BITPIX", 16),
        _card("NAXIS", 0),
        _card("EXTEND", True),
        _card("INSTRUME", "cfht_sim", "instrument"),
        _card("OBSTYPE", "object", "exposure type"),
        _card("EXPNUM", visit, "visit id"),
        _card("CCDNUM", ccd, "CCD number"),
        _card("FILTER", "ugriz"[visit % 5], "band"),
        _card("EXPTIME", 300.0, "exposure time (s)"),
        _card("MJD-OBS", 56000.0 + visit * 0.004, "start (MJD)"),
        _card("AIRMASS", 1.0 + (visit % 7) * 0.05, "airmass"),
        _card("RA_DEG", 150.0 + (visit % 11) * 0.2, "pointing RA (deg)"),
        _card("DEC_DEG", 2.0 + (visit % 13) * 0.2, "pointing Dec (deg)"),
        _card("SATURATE", 65535),
        _card("NAMPS", 2),
        _card("AMPNAMES", "A,B"),
    ]
    for amp, x0 in (("A", 1), ("B", 1057)):
        cards += [
            _card(f"GAIN{amp}", 1.6),
            _card(f"RDNOISE{amp}", 4.0),
            _card(f"DATASEC{amp}", f"[{x0}:{x0 + 1023},1:4612]"),
            _card(f"BIASSEC{amp}", f"[{x0 + 1024}:{x0 + 1055},1:4612]"),
            _card(f"DETSEC{amp}", f"[{x0}:{x0 + 1023},1:4612]"),
        ]
    for i in range(40):
        cards.append(_card(f"HIERK{i:03d}", float(i), "filler keyword of a real header"))
    cards.append("END".ljust(80))
    text = "".join(cards)
    text += " " * (-len(text) % 2880)
    return text.encode("ascii")


def write_headers(root: Path, n_files: int) -> list[str]:
    """Write ``n_files`` header-only raws under ``root``; return their paths."""
    paths = []
    for i in range(n_files):
        visit, ccd = 1000 + i // CCDS, i % CCDS
        folder = root / "raw" / str(visit)
        if ccd == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"raw_{visit}_{ccd}.fits"
        path.write_bytes(_header(visit, ccd))
        paths.append(str(path))
    return paths


def _rate(label: str, n: int, seconds: float) -> float:
    rate = n / seconds
    print(f"{label:<62} {n:>7} files {seconds:8.2f} s {rate:10,.0f} files/s")
    return rate


def main(n_files: int, workers: int, sample: int, directory: str | None) -> None:
    """Write the synthetic raws, time each method and print the figures."""
    root = Path(directory or tempfile.mkdtemp(prefix="dcflow-ingest-bench-"))
    try:
        start = time.perf_counter()
        paths = write_headers(root / "input", n_files)
        print(
            f"wrote {n_files} header-only raws under {root} in {time.perf_counter() - start:.1f} s"
        )
        for path in paths:  # warm the page cache
            with open(path, "rb") as handle:
                handle.read(2880)
        config = root / "campaign.yaml"
        config.write_text(
            "campaign: {name: bench, instrument: cfht_sim}\n"
            f"layout: {{input_root: {root}/input, output_root: {root}/out}}\n"
        )
        print(f"cpus available: {len(os.sched_getaffinity(0))}; workers: {workers}")
        start = time.perf_counter()
        summary = ingest_files(config, [root / "input"], camera="cfht_sim", workers=workers)
        ours = _rate(
            f"dcflow ingest (walk, headers, data ids, SQLite), {workers} workers",
            summary.n_added,
            time.perf_counter() - start,
        )
        assert summary.n_added == n_files and not summary.rejected, summary.rejected[:3]
        start = time.perf_counter()
        again = ingest_files(config, [root / "input"], camera="cfht_sim", workers=workers)
        _rate(
            "dcflow ingest again (all known, nothing read)",
            again.n_known,
            time.perf_counter() - start,
        )
        keywords = ("INSTRUME", "EXPNUM", "CCDNUM", "FILTER", "OBSTYPE", "EXPTIME", "MJD-OBS")
        for n_workers in (workers, 1):
            start = time.perf_counter()
            read_keywords_many(paths, keywords, workers=n_workers)
            _rate(
                f"dcflow read_keywords_many, {n_workers} worker(s)",
                n_files,
                time.perf_counter() - start,
            )
        subset = paths[:sample]
        start = time.perf_counter()
        for path in subset:
            fits.getheader(path)
        theirs = _rate(
            "astropy.io.fits.getheader, serial", len(subset), time.perf_counter() - start
        )
        start = time.perf_counter()
        report = astropy_ingest(subset, root / "out" / "registry_astropy.sqlite3")
        _rate(
            "registry.ingest (getheader + translate + SQLite), serial",
            report.n_added,
            time.perf_counter() - start,
        )
        print(f"dcflow ingest / astropy getheader serial: {ours / theirs:.1f}x")
        print(f"target >= 2,000 files/s: {'met' if ours >= 2000 else 'NOT met'} ({ours:,.0f})")
    finally:
        if directory is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000, help="synthetic raws to write")
    parser.add_argument("--workers", type=int, default=2, help="header-reading processes")
    parser.add_argument("--sample", type=int, default=10_000, help="files for the astropy runs")
    parser.add_argument("--dir", default=None, help="work directory (kept); default: a temp dir")
    args = parser.parse_args()
    main(args.files, args.workers, args.sample, args.dir)
