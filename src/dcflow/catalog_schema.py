"""One schema for the catalogs dcflow writes, from src to diaObject.

The catalogs: src, object (Object), forced_src (ForcedSource), diaSrc and diaSourceTable
(DiaSource), diaObject (DiaObject) and diaTracklet.

Each column has a name (snake_case, the unit in the name where it is not obvious, as in
``ra_deg``; the alert-production catalogs keep the Rubin DPDD's camelCase names, which alert
consumers know, with their units in the schema), a numpy dtype, a unit (FITS / astropy unit
string, None for dimensionless or flags) and a one-line description. `annotate` puts the unit
and description on a table's columns; `dcflow.io.write_table` then writes them as ``TUNITn`` and
``TCOMMn`` (the column comment keyword of the HEASARC convention) beside astropy's own
serialized column metadata.
Per-filter columns of the object table are written ``<filter>_<name>`` (``r_psf_flux``).

The stages that build the tables call `annotate`, which fails on a column the schema does not
describe: a new column cannot be written without saying what it holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from astropy.table import Table

__all__ = [
    "DIA_OBJECT_COLUMNS",
    "DIA_OBJECT_PER_FILTER_COLUMNS",
    "DIA_SOURCE_COLUMNS",
    "DIA_TRACKLET_COLUMNS",
    "FORCED_SRC_COLUMNS",
    "OBJECT_COLUMNS",
    "OBJECT_PER_FILTER_COLUMNS",
    "SRC_COLUMNS",
    "ColumnSchema",
    "annotate",
    "flux_unit_of_zero_point",
    "schema_for",
]


@dataclass(frozen=True, slots=True)
class ColumnSchema:
    """One catalog column.

    Attributes
    ----------
    name : str
        Column name.
    dtype : str
        numpy dtype string (``f8``, ``i8``, ``?``, ``U16``).
    unit : str or None
        Unit as an astropy / FITS unit string; None for dimensionless values and flags.
    description : str
        What the column holds.
    """

    name: str
    dtype: str
    unit: str | None
    description: str


def _columns(*rows: tuple[str, str, str | None, str]) -> dict[str, ColumnSchema]:
    return {name: ColumnSchema(name, dtype, unit, doc) for name, dtype, unit, doc in rows}


SRC_COLUMNS: dict[str, ColumnSchema] = _columns(
    ("id", "i8", None, "source number, 1..n in decreasing detection significance"),
    ("x", "f8", "pix", "PSF-fit column, 0-based array coordinates (FITS x - 1)"),
    ("y", "f8", "pix", "PSF-fit row, 0-based array coordinates (FITS y - 1)"),
    ("ra_deg", "f8", "deg", "right ascension from the calibrated WCS"),
    ("dec_deg", "f8", "deg", "declination from the calibrated WCS"),
    ("ap_flux", "f8", "electron", "circular-aperture flux (radius in the header APRADIUS)"),
    ("ap_flux_err", "f8", "electron", "standard error of ap_flux"),
    ("psf_flux", "f8", "electron", "PSF-model flux (model normalised to unit total flux)"),
    ("psf_flux_err", "f8", "electron", "standard error of psf_flux"),
    ("psf_chi2", "f8", None, "reduced chi^2 of the PSF fit"),
    ("apcorr", "f8", None, "aperture correction: total flux = apcorr * psf_flux"),
    ("snr", "f8", None, "psf_flux / psf_flux_err"),
    ("mag", "f8", "mag", "calibrated magnitude, ZP - 2.5 log10(apcorr * psf_flux)"),
    ("mag_err", "f8", "mag", "statistical magnitude error (zero-point error not included)"),
    (
        "extendedness",
        "f8",
        None,
        "1 extended (galaxy), 0 point-like (star), NaN unmeasured: adaptive-moment size "
        "above the PSF model's by more than EXTFRAC of the header and 3 / snr",
    ),
    (
        "flags",
        "i4",
        None,
        "SourceFlag bits: 1 saturated, 2 edge, 4 bad/CR pixels, 8 blended, 16 suspect pixels",
    ),
    ("used_psf", "?", None, "used to fit the PSF model"),
    ("used_astrom", "?", None, "used in the final astrometric fit"),
    ("used_photcal", "?", None, "used in the zero-point fit"),
)
"""Columns of src (per calexp), in order."""

OBJECT_COLUMNS: dict[str, ColumnSchema] = _columns(
    ("object_id", "i8", None, "Object id: tract and position in the tract"),
    ("tract", "i8", None, "sky-map tract"),
    ("patch", "U16", None, "sky-map patch name within the tract"),
    ("x", "f8", "pix", "column in the patch coadd, 0-based"),
    ("y", "f8", "pix", "row in the patch coadd, 0-based"),
    ("ra_deg", "f8", "deg", "right ascension (reference filter centroid)"),
    ("dec_deg", "f8", "deg", "declination (reference filter centroid)"),
    ("detect_significance", "f8", None, "peak of the multi-band detection image, sigma"),
    ("ref_filter", "U16", None, "filter whose centroid and shape define the Object"),
    ("extendedness", "f8", None, "1 extended, 0 point-like, NaN unmeasured"),
    ("size_ratio", "f8", None, "source / PSF adaptive-moment size ratio in ref_filter"),
    ("parent", "i8", None, "object_id naming the blend family (its first peak); 0: isolated"),
    ("deblend_nChild", "i8", None, "peaks sharing the Object's footprint (1: isolated)"),
    ("deblend_skipped", "?", None, "footprint has too many peaks: measured undeblended"),
)
"""Filter-independent columns of the Object table."""

OBJECT_PER_FILTER_COLUMNS: dict[str, ColumnSchema] = _columns(
    ("centroid_x", "f8", "pix", "Gaussian-weighted centroid column in this filter"),
    ("centroid_y", "f8", "pix", "Gaussian-weighted centroid row in this filter"),
    ("psf_flux", "f8", "nJy", "aperture-corrected PSF flux (at the table's ZP; 31.4 = nJy)"),
    ("psf_flux_err", "f8", "nJy", "standard error of psf_flux"),
    ("psf_flux_flag", "?", None, "psf_flux unusable (masked or off the coadd)"),
    ("psf_inexact", "?", None, "PSF model approximate here (PSF mixture of the inputs)"),
    ("ap_flux", "f8", "nJy", "circular-aperture flux"),
    ("ap_flux_err", "f8", "nJy", "standard error of ap_flux"),
    ("ap_flux_flag", "?", None, "ap_flux unusable"),
    ("ixx", "f8", "pix2", "adaptive second moment xx"),
    ("iyy", "f8", "pix2", "adaptive second moment yy"),
    ("ixy", "f8", "pix2", "adaptive second moment xy"),
    ("moments_flag", "?", None, "adaptive moments failed"),
)
"""Per-filter columns of the Object table, written ``<filter>_<name>``."""

FORCED_SRC_COLUMNS: dict[str, ColumnSchema] = _columns(
    ("object_id", "i8", None, "Object id (object table)"),
    ("x", "f8", "pix", "Object position on the calexp, column, 0-based"),
    ("y", "f8", "pix", "Object position on the calexp, row, 0-based"),
    ("psf_flux", "f8", "nJy", "aperture-corrected forced PSF flux (at the table's ZP)"),
    ("psf_flux_err", "f8", "nJy", "standard error of psf_flux"),
    ("psf_flux_flag", "?", None, "psf_flux unusable (off the calexp or masked)"),
)
"""Columns of forced_src (one row per Object per calexp)."""

DIA_SOURCE_COLUMNS: dict[str, ColumnSchema] = _columns(
    ("diaSourceId", "i8", None, "(visit * 1000 + ccd) * 100000 + row: unique in the campaign"),
    ("visit", "i8", None, "visit of the difference image"),
    ("ccd", "i8", None, "CCD of the difference image"),
    ("band", "U8", None, "filter of the visit"),
    ("midpointMjdTai", "f8", "d", "MJD at the middle of the exposure"),
    ("ra", "f8", "deg", "right ascension of the centroid"),
    ("dec", "f8", "deg", "declination of the centroid"),
    ("raErr", "f8", "deg", "one-axis position error along ra (great circle)"),
    ("decErr", "f8", "deg", "one-axis position error along dec"),
    ("x", "f8", "pix", "centroid column, 0-based array coordinates"),
    ("y", "f8", "pix", "centroid row, 0-based array coordinates"),
    ("xErr", "f8", "pix", "error of x"),
    ("yErr", "f8", "pix", "error of y"),
    ("psfFlux", "f8", "nJy", "difference-image PSF flux (negative: fainter than the template)"),
    ("psfFluxErr", "f8", "nJy", "standard error of psfFlux"),
    ("snr", "f8", None, "psfFlux / psfFluxErr"),
    ("significance", "f8", None, "matched-filter detection significance (sigma)"),
    ("isNegative", "?", None, "detected as a negative source"),
    ("isDipole", "?", None, "paired with an opposite-sign source (misregistration, motion)"),
    ("psfChi2", "f8", None, "reduced chi^2 of the PSF fit"),
    ("flags", "i4", None, "DiaSourceFlag bits: EDGE, NO_TEMPLATE, SATURATED, DIPOLE, BAD_PIXELS"),
    ("reliability", "f8", None, "heuristic real/bogus score in [0, 1] (not a classifier)"),
    ("diaObjectId", "i8", None, "DIAObject of this DIASource (after association)"),
)
"""Columns of diaSrc (per visit and CCD) and diaSourceTable (per patch, with diaObjectId)."""

DIA_OBJECT_COLUMNS: dict[str, ColumnSchema] = _columns(
    ("diaObjectId", "i8", None, "diaSourceId of the DIAObject's first DIASource"),
    ("ra", "f8", "deg", "weighted mean right ascension of its DIASources"),
    ("dec", "f8", "deg", "weighted mean declination of its DIASources"),
    ("raErr", "f8", "deg", "one-axis error of the mean position"),
    ("decErr", "f8", "deg", "one-axis error of the mean position"),
    ("nDiaSources", "i8", None, "number of associated DIASources"),
    ("firstDiaSourceMjdTai", "f8", "d", "epoch of the first DIASource"),
    ("lastDiaSourceMjdTai", "f8", "d", "epoch of the last DIASource"),
)
"""Filter-independent columns of the diaObject table."""

DIA_OBJECT_PER_FILTER_COLUMNS: dict[str, ColumnSchema] = _columns(
    ("psfFluxNdata", "i8", None, "DIASources in this filter"),
    ("psfFluxMean", "f8", "nJy", "inverse-variance weighted mean difference PSF flux"),
    ("psfFluxMeanErr", "f8", "nJy", "standard error of psfFluxMean"),
    ("psfFluxSigma", "f8", "nJy", "sample standard deviation of the PSF fluxes"),
    ("psfFluxChi2", "f8", None, "chi^2 of the PSF fluxes about psfFluxMean"),
)
"""Per-filter columns of the diaObject table, written ``<filter>_<name>``."""

DIA_TRACKLET_COLUMNS: dict[str, ColumnSchema] = _columns(
    ("trackletId", "i8", None, "smallest diaSourceId of the tracklet"),
    ("diaSourceId", "i8", None, "a DIASource of the tracklet"),
    ("midpointMjdTai", "f8", "d", "epoch of the DIASource"),
    ("ra", "f8", "deg", "right ascension of the DIASource"),
    ("dec", "f8", "deg", "declination of the DIASource"),
    ("raRate", "f8", "deg / d", "fitted motion along ra (great circle)"),
    ("decRate", "f8", "deg / d", "fitted motion along dec"),
)
"""Columns of diaTracklet (one row per DIASource of a tracklet)."""

_KINDS = {
    "src": SRC_COLUMNS,
    "object": OBJECT_COLUMNS,
    "forced_src": FORCED_SRC_COLUMNS,
    "diaSource": DIA_SOURCE_COLUMNS,
    "diaObject": DIA_OBJECT_COLUMNS,
    "diaTracklet": DIA_TRACKLET_COLUMNS,
}
_PER_FILTER = {"object": OBJECT_PER_FILTER_COLUMNS, "diaObject": DIA_OBJECT_PER_FILTER_COLUMNS}


def schema_for(kind: str, *, filters: Iterable[str] = ()) -> dict[str, ColumnSchema]:
    """All columns of a catalog kind (``src``, ``object``, ``forced_src``), in order.

    Parameters
    ----------
    kind : str
        Catalog kind.
    filters : iterable of str
        For ``object``: the filters whose per-filter columns the table has.

    Raises
    ------
    ValueError
        If ``kind`` is unknown.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(_KINDS)}; got {kind!r}")
    out = dict(_KINDS[kind])
    if kind in _PER_FILTER:
        for band in filters:
            for name, col in _PER_FILTER[kind].items():
                full = f"{band}_{name}"
                out[full] = ColumnSchema(full, col.dtype, col.unit, f"{band}: {col.description}")
    return out


def flux_unit_of_zero_point(zero_point_mag: float) -> str | None:
    """``nJy`` for fluxes at an AB zero point of 31.4 (1 nJy), else None (units of the ZP)."""
    return "nJy" if abs(float(zero_point_mag) - 31.4) < 1e-6 else None


def annotate(
    table: Table,
    kind: str,
    *,
    filters: Iterable[str] = (),
    flux_unit: str | None = "nJy",
) -> Table:
    """Set each column's unit and description from the schema (modified in place).

    Parameters
    ----------
    table : astropy.table.Table
        A catalog of ``kind``.
    kind : str
        ``src``, ``object`` or ``forced_src``.
    filters : iterable of str
        For ``object``: its filters.
    flux_unit : str or None
        Unit of the ``nJy`` columns when the table's zero point is not 31.4 (None: the
        fluxes are in units of that zero point, stated in ``meta["ZP"]``).

    Returns
    -------
    astropy.table.Table
        ``table`` itself.

    Raises
    ------
    ValueError
        If a column is not in the schema.
    """
    schema = schema_for(kind, filters=filters)
    unknown = [name for name in table.colnames if name not in schema]
    if unknown:
        raise ValueError(
            f"{kind} table column(s) {', '.join(unknown)} are not in dcflow.catalog_schema"
        )
    for name in table.colnames:
        col = schema[name]
        unit = flux_unit if col.unit == "nJy" else col.unit
        table[name].unit = unit
        table[name].description = col.description
    return table
