"""Database tables of the catalogs, generated from `dcflow.catalog_schema`.

Every table holds the catalog's own columns (types, units and descriptions from the one
catalog schema) after a fixed prefix: the data ids of the tile and CCD the row came from,
the provenance of the load (campaign, run id, code version) and ``healpix``, the row's
HEALPix pixel in the NESTED scheme at order `HEALPIX_ORDER`. A nested pixel at a coarser
order ``k`` is the range ``[p * 4**(ORDER - k), (p + 1) * 4**(ORDER - k))`` at ``ORDER``, so a
cone search becomes a handful of pixel ranges (`cone_pixel_ranges`) followed by an exact
angular-distance cut, on any backend.

A tile is the unit of loading (one job): a visit for ``src`` and ``forced_src``, a patch
(tract, patch) for ``object``. The table ``catalog_tiles`` records each loaded tile, so a
rerun deletes exactly that tile's rows and a first load deletes nothing (no table scan).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import astropy.units as u
import numpy as np
from astropy_healpix import HEALPix

from dcflow.catalog_schema import ColumnSchema, schema_for

__all__ = [
    "HEALPIX_ORDER",
    "PROVENANCE",
    "TABLES",
    "Column",
    "TableSpec",
    "cone_pixel_ranges",
    "healpix_of",
    "object_filters",
    "table_columns",
    "tile_arrays",
]

HEALPIX_ORDER = 16
"""HEALPix order of the ``healpix`` column: nside 65536, pixels of 3.2 arcsec (NESTED)."""


@dataclass(frozen=True, slots=True)
class Column:
    """One database column: name, numpy dtype, unit and description (the column comment)."""

    name: str
    dtype: str
    unit: str | None
    description: str


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A catalog table: its catalog kind, tile keys and the columns besides the catalog's.

    Attributes
    ----------
    name : str
        Table name (the catalog kind: ``src``, ``forced_src``, ``object``).
    tile_keys : tuple of str
        Data id keys naming one tile (one load job); a rerun replaces rows by these.
    id_columns : tuple of Column
        Data id columns added before the catalog's columns (absent from the catalog).
    extra_columns : tuple of Column
        Columns computed at load time that the FITS table lacks (forced_src positions).
    primary_key : tuple of str
        Columns unique per row, declared by ``dcflow db index``.
    """

    name: str
    tile_keys: tuple[str, ...]
    id_columns: tuple[Column, ...]
    extra_columns: tuple[Column, ...] = ()
    primary_key: tuple[str, ...] = ()


_VISIT = Column("visit", "i8", None, "visit (exposure) id of the row's calexp")
_CCD = Column("ccd", "i4", None, "CCD of the row's calexp")
_FILTER = Column("filter", "U16", None, "filter of the visit")
_POSITION = (
    Column("ra_deg", "f8", "deg", "right ascension of the Object (calexp WCS at x, y)"),
    Column("dec_deg", "f8", "deg", "declination of the Object (calexp WCS at x, y)"),
)

PROVENANCE: tuple[Column, ...] = (
    Column("campaign", "U64", None, "campaign name (config campaign.name)"),
    Column("run_id", "U64", None, "run that loaded the row (DCFLOW_RUN_ID, else the load's id)"),
    Column("code_version", "U32", None, "dcflow version that loaded the row"),
    Column("healpix", "i8", None, f"HEALPix NESTED pixel at order {HEALPIX_ORDER} of ra, dec"),
)
"""Columns every row carries after its data ids."""

TABLES: dict[str, TableSpec] = {
    "src": TableSpec("src", ("visit",), (_VISIT, _CCD, _FILTER), (), ("visit", "ccd", "id")),
    "forced_src": TableSpec(
        "forced_src", ("visit",), (_VISIT, _CCD, _FILTER), _POSITION, ("visit", "ccd", "object_id")
    ),
    "object": TableSpec("object", ("tract", "patch"), (), (), ("object_id",)),
}
"""The catalog tables a campaign's database holds."""


def object_filters(colnames: Iterable[str]) -> list[str]:
    """The filters of an Object table, from its ``<filter>_psf_flux`` columns, in order."""
    return [name[: -len("_psf_flux")] for name in colnames if name.endswith("_psf_flux")]


def table_columns(name: str, *, filters: Iterable[str] = ()) -> list[Column]:
    """Every column of a catalog table, in order.

    Parameters
    ----------
    name : str
        A key of `TABLES`.
    filters : iterable of str
        For ``object``: its filters (per-filter columns).

    Raises
    ------
    KeyError
        If ``name`` is not a catalog table.
    """
    if name not in TABLES:
        raise KeyError(f"no catalog table {name!r} (tables: {', '.join(TABLES)})")
    spec = TABLES[name]
    catalog: Mapping[str, ColumnSchema] = schema_for(name, filters=filters)
    columns = [*spec.id_columns, *PROVENANCE, *spec.extra_columns]
    columns += [Column(c.name, c.dtype, c.unit, c.description) for c in catalog.values()]
    return columns


def healpix_of(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """HEALPix NESTED pixel at `HEALPIX_ORDER` of each position (-1: not finite, masked)."""
    ra = np.ma.filled(np.ma.asarray(ra_deg, dtype=float), np.nan)
    dec = np.ma.filled(np.ma.asarray(dec_deg, dtype=float), np.nan)
    good = np.isfinite(ra) & np.isfinite(dec)
    pixels = np.full(ra.shape, -1, dtype=np.int64)
    grid = HEALPix(nside=2**HEALPIX_ORDER, order="nested")
    pixels[good] = grid.lonlat_to_healpix(ra[good] * u.deg, dec[good] * u.deg)
    return pixels


def cone_pixel_ranges(
    ra_deg: float, dec_deg: float, radius_deg: float, *, max_ranges: int = 64
) -> list[tuple[int, int]]:
    """Half-open ``healpix`` ranges covering a cone (a superset: cut on distance after).

    The coarsest order whose pixels are no larger than the radius is searched with
    astropy-healpix, each pixel widened to its range at `HEALPIX_ORDER`, and adjacent ranges
    merged; the order is made coarser while more than ``max_ranges`` ranges remain.
    """
    if not radius_deg > 0:
        raise ValueError(f"radius_deg must be > 0, got {radius_deg}")
    order = HEALPIX_ORDER
    while order > 0 and HEALPix(nside=2 ** (order - 1)).pixel_resolution.to_value("deg") < (
        radius_deg
    ):
        order -= 1
    while True:
        grid = HEALPix(nside=2**order, order="nested")
        pixels = np.sort(
            grid.cone_search_lonlat(ra_deg * u.deg, dec_deg * u.deg, radius_deg * u.deg)
        )
        shift = 2 * (HEALPIX_ORDER - order)
        starts, ends = pixels << shift, (pixels + 1) << shift
        breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        first = np.concatenate([[0], breaks]).astype(np.int64)
        last = np.concatenate([breaks, [len(pixels)]]).astype(np.int64) - 1
        ranges = [(int(starts[a]), int(ends[b])) for a, b in zip(first, last, strict=True)]
        if len(ranges) <= max_ranges or order == 0:
            return ranges
        order -= 1


def tile_arrays(
    name: str,
    catalog: Mapping[str, np.ndarray],
    *,
    ids: Mapping[str, object],
    provenance: Mapping[str, str],
    filters: Iterable[str] = (),
) -> dict[str, np.ndarray]:
    """The rows of one catalog (one CCD's src, one patch's object) as database columns.

    Parameters
    ----------
    name : str
        Table name (a key of `TABLES`).
    catalog : mapping of str to array
        The catalog's columns (an astropy Table works), including ``ra_deg`` / ``dec_deg``
        (for ``forced_src``: computed by the caller from the calexp WCS).
    ids : mapping
        Values of the table's data id columns (visit, ccd, filter).
    provenance : mapping of str to str
        ``campaign``, ``run_id`` and ``code_version``.
    filters : iterable of str
        For ``object``: its filters.

    Returns
    -------
    dict of str to numpy.ndarray
        Every column of `table_columns`, in order, rows sorted by ``healpix`` (bulk loads in
        pixel order keep a region's rows together on disk); a catalog column with masked
        entries is a `numpy.ma.MaskedArray` (NULL in the database).

    Raises
    ------
    ValueError
        If a column is missing or a catalog column has no finite position.
    """
    columns = table_columns(name, filters=filters)
    n = len(catalog["ra_deg"])
    names = set(getattr(catalog, "colnames", None) or catalog.keys())
    given = {**dict(ids), **dict(provenance)}
    out: dict[str, np.ndarray] = {}
    for col in columns:
        if col.name == "healpix":
            continue
        if col.name in given:
            value = given[col.name]
            out[col.name] = np.full(n, value).astype(
                str if col.dtype.startswith("U") else col.dtype
            )
        elif col.name in names:
            # the schema's type in native byte order (FITS tables are big-endian)
            dtype = str if col.dtype.startswith("U") else np.dtype(col.dtype)
            values = np.asarray(catalog[col.name]).astype(dtype)
            # masked entries (a FITS TNULL, say) stay masked: the database stores NULL
            mask = np.ma.getmask(catalog[col.name])
            out[col.name] = np.ma.MaskedArray(values, mask=mask) if np.any(mask) else values
        else:
            raise ValueError(f"{name} rows lack column {col.name!r} (data id or catalog column)")
    out["healpix"] = healpix_of(out["ra_deg"], out["dec_deg"])
    order = np.argsort(out["healpix"], kind="stable")
    return {col.name: out[col.name][order] for col in columns}
