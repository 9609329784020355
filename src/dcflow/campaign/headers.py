"""Read the primary headers of many FITS files fast: only the keywords asked for, in parallel.

Ingest reads every raw file's primary header once. ``astropy.io.fits.getheader`` builds a full
`Header` (every card parsed and verified), which costs ~1 ms per file; a campaign of millions
of files needs far less. `read_keywords` reads the header's 2880-byte blocks up to ``END`` and
parses only the cards whose keyword is wanted (strings with ``''`` escapes, integers, floats
with ``D`` exponents, logicals), and reads gzip-compressed files (``.gz`` or the gzip magic)
through `gzip`. `read_keywords_many` spreads the files over worker processes in chunks.
Measured on 2 cores (benchmarks/ingest.py): see the README's ingest section.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

__all__ = ["HeaderReadError", "map_chunks", "parse_value", "read_keywords", "read_keywords_many"]

_BLOCK = 2880
_CARD = 80
_MAX_BLOCKS = 1000


class HeaderReadError(OSError):
    """A file is not a readable FITS file (the message names the file and what was wrong)."""


def parse_value(text: str) -> Any:
    """Parse the value field of a FITS card (columns 11-80), comment dropped.

    Returns
    -------
    str, int, float, bool or None
        Strings lose their quotes and trailing blanks; ``''`` becomes ``'``; an empty value is
        None.

    Raises
    ------
    ValueError
        If the value is neither a string, a logical nor a number.
    """
    text = text.lstrip()
    if text.startswith("'"):
        out, i = [], 1
        while i < len(text):
            char = text[i]
            if char == "'":
                if text[i + 1 : i + 2] == "'":
                    out.append("'")
                    i += 2
                    continue
                return "".join(out).rstrip()
            out.append(char)
            i += 1
        raise ValueError(f"unterminated string {text!r}")
    value = text.split("/", 1)[0].strip()
    if not value:
        return None
    if value == "T":
        return True
    if value == "F":
        return False
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value.replace("D", "E").replace("d", "e"))
    except ValueError:
        raise ValueError(f"not a FITS value: {value!r}") from None


def _open(path: str):
    handle = open(path, "rb")  # noqa: SIM115 - closed by the caller
    magic = handle.read(2)
    handle.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=handle, mode="rb"), handle
    return handle, handle


def read_keywords(path: str | os.PathLike, keywords: Iterable[str] | None = None) -> dict:
    """The values of some keywords of a file's primary header.

    Parameters
    ----------
    path : path-like
        A FITS file, plain or gzip-compressed.
    keywords : iterable of str, optional
        Keywords wanted (upper case); None reads every valued card.

    Returns
    -------
    dict
        Keyword -> value for the wanted keywords present (first occurrence).

    Raises
    ------
    HeaderReadError
        If the file cannot be read, does not start with ``SIMPLE``, ends before ``END`` or
        holds a wanted card whose value cannot be parsed; the message names the file.
    """
    wanted = None if keywords is None else frozenset(keywords)
    found: dict[str, Any] = {}
    try:
        stream, raw = _open(os.fspath(path))
    except OSError as exc:
        raise HeaderReadError(f"{path}: cannot open ({exc.strerror or exc})") from None
    try:
        with raw:
            for n_block in range(_MAX_BLOCKS):
                block = stream.read(_BLOCK)
                if len(block) < _BLOCK:
                    raise HeaderReadError(f"{path}: file ends before the header's END card")
                text = block.decode("ascii", errors="replace")
                if n_block == 0 and not text.startswith("SIMPLE  ="):
                    raise HeaderReadError(f"{path}: not a FITS file (no SIMPLE card)")
                for start in range(0, _BLOCK, _CARD):
                    key = text[start : start + 8].rstrip()
                    if key == "END":
                        return found
                    if (wanted is None or key in wanted) and key not in found:
                        if text[start + 8 : start + 10] != "= ":
                            continue
                        try:
                            found[key] = parse_value(text[start + 10 : start + _CARD])
                        except ValueError as exc:
                            raise HeaderReadError(f"{path}: keyword {key}: {exc}") from None
    except (OSError, EOFError) as exc:
        if isinstance(exc, HeaderReadError):
            raise
        raise HeaderReadError(f"{path}: unreadable ({exc})") from None
    raise HeaderReadError(f"{path}: no END card in the first {_MAX_BLOCKS} header blocks")


def _read_chunk(args: tuple[Sequence[str], frozenset[str] | None]) -> list[tuple[str, Any]]:
    paths, keywords = args
    out: list[tuple[str, Any]] = []
    for path in paths:
        try:
            out.append((path, read_keywords(path, keywords)))
        except HeaderReadError as exc:
            out.append((path, exc))
    return out


def map_chunks(
    func: Callable[[Any], list],
    chunks: Sequence[Any],
    *,
    n_items: int,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list:
    """Apply ``func`` to each chunk in worker processes; concatenate the lists it returns.

    Parameters
    ----------
    func : callable
        A module-level function (picklable) taking one chunk and returning a list.
    chunks : sequence
        The chunks, in order; results keep that order.
    n_items : int
        Total items in the chunks (for ``progress``).
    workers : int, optional
        Worker processes (default: the CPUs this process may use); 1 runs in this process.
    progress : callable, optional
        Called as ``progress(done, n_items)`` after each chunk.
    """
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    workers = max(1, min(workers, len(chunks)))
    results: list = []
    if workers == 1:
        parts: Iterable = map(func, chunks)
        for part in parts:
            results.extend(part)
            if progress:
                progress(len(results), n_items)
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(func, chunks):
            results.extend(part)
            if progress:
                progress(len(results), n_items)
    return results


def read_keywords_many(
    paths: Sequence[str],
    keywords: Iterable[str] | None,
    *,
    workers: int | None = None,
    chunk_size: int = 500,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[str, dict | HeaderReadError]]:
    """`read_keywords` of many files, in worker processes, results in the order of ``paths``.

    Parameters
    ----------
    paths : sequence of str
        Files to read.
    keywords : iterable of str or None
        Keywords wanted (None: all).
    workers : int, optional
        Worker processes (default: the CPUs this process may use); 1 reads in this process.
    chunk_size : int
        Files per task sent to a worker.
    progress : callable, optional
        Called as ``progress(done, total)`` after each chunk.

    Returns
    -------
    list of tuple
        ``(path, keywords dict)`` or ``(path, HeaderReadError)`` per file.
    """
    wanted = None if keywords is None else frozenset(keywords)
    chunks = [(list(paths[i : i + chunk_size]), wanted) for i in range(0, len(paths), chunk_size)]
    return map_chunks(_read_chunk, chunks, n_items=len(paths), workers=workers, progress=progress)
