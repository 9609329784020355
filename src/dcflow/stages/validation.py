"""Science validation: calibrated sources scored against a truth catalog.

This is how the campaign proves its processCcd outputs: astrometric offsets and calibrated
magnitude residuals of high-S/N stars, and detection completeness as a function of the
S/N each truth star is predicted to have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table

from dcflow.configs import check_fields, config_field
from dcflow.exposure import Exposure, MaskPlane

__all__ = ["MatchScoreConfig", "MatchScoreResult", "footprint_mask", "score_against_truth"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MatchScoreConfig:
    """How sources are matched to truth and which ones are scored."""

    match_radius_arcsec: float = config_field(
        0.5, "Largest source-to-truth separation counted as a match (arcsec).", exclusive_minimum=0
    )
    accuracy_snr_min: float = config_field(
        100.0, "Sources above this S/N enter the astrometric and photometric rms.", minimum=1
    )
    completeness_snr_min: float = config_field(
        10.0, "Truth stars predicted above this S/N enter the completeness.", minimum=1
    )
    isolation_arcsec: float = config_field(
        3.0,
        "Truth stars with a neighbour closer than this are left out of completeness (arcsec).",
        minimum=0,
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, slots=True)
class MatchScoreResult:
    """Scores of one set of sources against truth."""

    n_sources: int
    n_matched: int
    n_accuracy: int
    astrom_rms_mas: float
    mag_rms_mmag: float
    mag_median_mmag: float
    n_completeness: int
    completeness: float
    snr10_mag: float
    offsets_mas: np.ndarray
    mag_residuals_mmag: np.ndarray
    accuracy_mags: np.ndarray


def footprint_mask(truth: Table, exposures: list[Exposure], *, margin_pix: int = 10) -> np.ndarray:
    """Which truth stars fell on the usable area of any of ``exposures``.

    A star counts when it lands at least ``margin_pix`` from the edge of an exposure whose
    WCS is set, on a pixel not marked BAD, SAT or NO_DATA.
    """
    inside = np.zeros(len(truth), dtype=bool)
    unusable = MaskPlane.BAD | MaskPlane.SAT | MaskPlane.NO_DATA
    for exposure in exposures:
        if exposure.wcs is None:
            continue
        x, y = exposure.wcs.all_world2pix(truth["ra_deg"], truth["dec_deg"], 0)
        ny, nx = exposure.shape
        ok = (x >= margin_pix) & (x < nx - margin_pix) & (y >= margin_pix) & (y < ny - margin_pix)
        ok &= np.isfinite(x) & np.isfinite(y)
        ix = np.clip(np.round(x).astype(int), 0, nx - 1)
        iy = np.clip(np.round(y).astype(int), 0, ny - 1)
        ok &= (exposure.mask[iy, ix] & unusable) == 0
        inside |= ok
    return inside


def _snr_limit_mag(mag: np.ndarray, snr: np.ndarray, snr_min: float) -> float:
    """Magnitude at which detected stars reach ``snr_min``, from a fit of log S/N vs mag."""
    good = np.isfinite(mag) & np.isfinite(snr) & (snr > 3) & (snr < 300)
    if good.sum() < 5:
        return float("nan")
    slope, intercept = np.polyfit(mag[good], np.log10(snr[good]), 1)
    if slope >= 0:
        return float("nan")
    return float((np.log10(snr_min) - intercept) / slope)


def score_against_truth(
    src: Table,
    truth: Table,
    *,
    band: str,
    footprint_mask: np.ndarray,
    config: MatchScoreConfig = MatchScoreConfig(),
) -> MatchScoreResult:
    """Match sources to truth stars and measure accuracy and completeness.

    Parameters
    ----------
    src : astropy.table.Table
        Calibrated sources with ``ra_deg``, ``dec_deg``, ``mag``, ``snr`` columns; when a
        ``flags`` column exists, only unflagged sources enter the accuracy figures.
    truth : astropy.table.Table
        Truth catalog with ``ra_deg``, ``dec_deg`` and ``<band>_mag`` columns.
    band : str
        Filter whose truth magnitudes are compared.
    footprint_mask : numpy.ndarray
        Boolean per truth row: True where the star fell on the imaged, unmasked area.
    config : MatchScoreConfig
        Match radius and S/N thresholds.

    Returns
    -------
    MatchScoreResult
        rms values are NaN when no source qualifies.

    Raises
    ------
    ValueError
        If a column is missing or ``footprint_mask`` does not match ``truth``.
    """
    for name, table, columns in (
        ("src", src, ("ra_deg", "dec_deg", "mag", "snr")),
        ("truth", truth, ("ra_deg", "dec_deg", f"{band}_mag")),
    ):
        missing = [c for c in columns if c not in table.colnames]
        if missing:
            raise ValueError(f"{name} lacks column(s) {', '.join(missing)}")
    if len(footprint_mask) != len(truth):
        raise ValueError(f"footprint_mask has {len(footprint_mask)} rows, truth has {len(truth)}")
    truth_mag = np.asarray(truth[f"{band}_mag"], dtype=float)
    truth_coord = SkyCoord(truth["ra_deg"], truth["dec_deg"], unit="deg")
    neighbour_sep = np.full(len(truth), np.inf)
    if len(truth) > 1:
        _, sep2, _ = truth_coord.match_to_catalog_sky(truth_coord, nthneighbor=2)
        neighbour_sep = sep2.arcsec
    empty = np.array([], dtype=float)
    if len(src) == 0:
        n_in = int(footprint_mask.sum())
        return MatchScoreResult(
            0, 0, 0, np.nan, np.nan, np.nan, n_in, 0.0, np.nan, empty, empty, empty
        )

    src_coord = SkyCoord(src["ra_deg"], src["dec_deg"], unit="deg")
    idx, sep, _ = src_coord.match_to_catalog_sky(truth_coord)
    matched = sep < config.match_radius_arcsec * u.arcsec
    snr = np.asarray(src["snr"], dtype=float)
    mag = np.asarray(src["mag"], dtype=float)

    clean = np.asarray(src["flags"]) == 0 if "flags" in src.colnames else np.ones(len(src), bool)
    best = matched & clean & (snr > config.accuracy_snr_min) & np.isfinite(mag)
    best &= neighbour_sep[idx] > config.isolation_arcsec
    d_ra = (src_coord.ra - truth_coord.ra[idx]).wrap_at(180 * u.deg) * np.cos(truth_coord.dec[idx])
    d_dec = src_coord.dec - truth_coord.dec[idx]
    offsets = np.hypot(d_ra.to_value(u.mas), d_dec.to_value(u.mas))[best]
    residuals = (mag - truth_mag[idx])[best] * 1000.0
    astrom_rms = float(np.sqrt(np.mean(offsets**2))) if offsets.size else float("nan")
    mag_rms = float(np.std(residuals)) if residuals.size else float("nan")
    mag_median = float(np.median(residuals)) if residuals.size else float("nan")

    limit_mag = _snr_limit_mag(truth_mag[idx[matched]], snr[matched], config.completeness_snr_min)
    expected = footprint_mask & (truth_mag < limit_mag) & (neighbour_sep > config.isolation_arcsec)
    found = np.zeros(len(truth), dtype=bool)
    found[idx[matched]] = True
    n_expected = int(expected.sum())
    completeness = float(found[expected].mean()) if n_expected else float("nan")
    log.info(
        "%d sources, %d matched; astrometric rms %.1f mas and magnitude rms %.1f mmag over %d "
        "stars with S/N > %g; completeness %.3f over %d stars brighter than %.2f",
        len(src),
        int(matched.sum()),
        astrom_rms,
        mag_rms,
        offsets.size,
        config.accuracy_snr_min,
        completeness,
        n_expected,
        limit_mag,
    )
    return MatchScoreResult(
        n_sources=len(src),
        n_matched=int(matched.sum()),
        n_accuracy=int(offsets.size),
        astrom_rms_mas=astrom_rms,
        mag_rms_mmag=mag_rms,
        mag_median_mmag=mag_median,
        n_completeness=n_expected,
        completeness=completeness,
        snr10_mag=limit_mag,
        offsets_mas=offsets,
        mag_residuals_mmag=residuals,
        accuracy_mags=truth_mag[idx][best],
    )
