"""What one load job puts in the database: a visit's src and forced_src, a patch's object."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from dcflow.catalog_db.tables import object_filters, tile_arrays

__all__ = ["patch_rows", "visit_rows"]


def visit_rows(
    srcs: Sequence[Table],
    forced: Sequence[Table],
    forced_wcs: Sequence[WCS],
    *,
    visit: int,
    band: str,
    ccds: Sequence[int],
    provenance: Mapping[str, str],
) -> dict[str, list[dict[str, np.ndarray]]]:
    """The src and forced_src rows of one visit, one chunk per CCD.

    Parameters
    ----------
    srcs : sequence of astropy.table.Table
        The visit's src tables, one per CCD in ``ccds`` order.
    forced : sequence of astropy.table.Table
        Its forced_src tables in the same order (empty: the visit overlaps no patch).
    forced_wcs : sequence of astropy.wcs.WCS
        The calexp WCS of each forced_src table (its x, y give the Object's ra, dec).
    visit : int
        The visit.
    band : str
        Its filter.
    ccds : sequence of int
        The science CCDs, in the order of the tables.
    provenance : mapping of str to str
        ``campaign``, ``run_id`` and ``code_version``.

    Raises
    ------
    ValueError
        If the numbers of tables, WCSs and CCDs disagree.
    """
    if len(srcs) != len(ccds) or (forced and len(forced) != len(ccds)):
        raise ValueError(
            f"visit {visit}: {len(srcs)} src and {len(forced)} forced_src tables for "
            f"{len(ccds)} CCDs"
        )
    if len(forced_wcs) != len(forced):
        raise ValueError(f"visit {visit}: {len(forced_wcs)} WCSs for {len(forced)} forced_src")
    out: dict[str, list[dict[str, np.ndarray]]] = {"src": [], "forced_src": []}
    for ccd, table in zip(ccds, srcs, strict=True):
        ids = {"visit": visit, "ccd": ccd, "filter": band}
        out["src"].append(tile_arrays("src", table, ids=ids, provenance=provenance))
    for ccd, table, wcs in zip(ccds, forced, forced_wcs, strict=False):
        ra, dec = wcs.pixel_to_world_values(np.asarray(table["x"]), np.asarray(table["y"]))
        columns = {name: table[name] for name in table.colnames}
        columns["ra_deg"], columns["dec_deg"] = np.mod(ra, 360.0), dec
        ids = {"visit": visit, "ccd": ccd, "filter": band}
        out["forced_src"].append(tile_arrays("forced_src", columns, ids=ids, provenance=provenance))
    return out


def patch_rows(
    objects: Table, *, provenance: Mapping[str, str]
) -> tuple[dict[str, list[dict[str, np.ndarray]]], list[str]]:
    """The object rows of one patch, and the filters of its per-filter columns."""
    filters = object_filters(objects.colnames)
    rows = tile_arrays("object", objects, ids={}, provenance=provenance, filters=filters)
    return {"object": [rows]}, filters
