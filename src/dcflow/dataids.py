"""Data ids: the keys (instrument, visit, ccd, amp, filter, tract, patch) that name a tile.

Raws of real cameras carry more keys (SDSS: run, rerun, camcol, field), which path templates
of their input datasets may use; their camera description (`dcflow.instruments.camera`) says
which.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["DATA_ID_KEYS", "INT_KEYS", "format_data_id", "normalize_data_id"]

DATA_ID_KEYS = (
    "instrument",
    "visit",
    "ccd",
    "amp",
    "filter",
    "tract",
    "patch",
    "exposure",
    "run",
    "rerun",
    "camcol",
    "field",
)
"""Every key a data id may hold, in the order used to name logs and ledger rows."""

INT_KEYS = frozenset({"visit", "ccd", "tract", "exposure", "run", "rerun", "camcol", "field"})
"""Keys whose values are non-negative integers (rendered without padding)."""

_FREE_TEXT = frozenset({"instrument", "filter", "amp", "patch"})


def normalize_data_id(data_id: Mapping[str, object]) -> dict[str, int | str]:
    """Check a data id and convert its values to their canonical types.

    Raises
    ------
    ValueError
        If a key is unknown, an integer key is not a non-negative integer, or a text value
        holds characters that are unsafe in a path (anything but letters, digits, ``-_.,``).
    """
    out: dict[str, int | str] = {}
    for key, value in data_id.items():
        if key not in DATA_ID_KEYS:
            raise ValueError(f"unknown data id key {key!r} (known: {', '.join(DATA_ID_KEYS)})")
        if key in INT_KEYS:
            try:
                number = int(str(value))
            except ValueError:
                raise ValueError(f"data id {key}={value!r} is not an integer") from None
            if number < 0:
                raise ValueError(f"data id {key}={value!r} is negative")
            out[key] = number
        else:
            text = str(value)
            if not text or not all(c.isalnum() or c in "-_.," for c in text):
                raise ValueError(f"data id {key}={value!r} holds characters unsafe in a path")
            out[key] = text
    return out


def format_data_id(data_id: Mapping[str, object]) -> str:
    """Render a data id as ``key=value`` pairs joined by ``_`` in canonical key order.

    Used for log names and ledger rows: ``visit=1001_ccd=3``.
    """
    normal = normalize_data_id(data_id)
    return "_".join(f"{k}={normal[k]}" for k in DATA_ID_KEYS if k in normal)
