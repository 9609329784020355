"""Astrometric calibration: match detections to a reference catalogue, fit a TAN-SIP WCS.

Matching survives a pointing error of several arcsec by *offset voting*: every pair (bright
detection, bright reference star projected through the header WCS) closer than the maximum
pointing error votes for its pixel offset in a 2-d histogram; the peak is the pointing
correction. Detections are then matched to references (mutual nearest neighbours within a
radius), and the WCS is refitted in rounds of increasing order (affine, then the full SIP
order) with sigma clipping and re-matching in between, so a distortion the header lacks is
picked up progressively.

The fit is linear least squares in the tangent plane: reference positions are projected
gnomonically about the current tangent point to standard coordinates ``(xi, eta)``, which
are fitted as polynomials in the pixel offsets ``(u, v)`` from CRPIX. The linear terms give
the CD matrix and the higher terms, brought back to pixels through ``CD^-1``, give the SIP
``A``/``B`` polynomials; the constant terms move the tangent point (CRVAL) and the fit is
repeated until they vanish. The inverse polynomials ``AP``/``BP`` are fitted on a grid.
Measured here on a 2048 x 4612 synthetic CCD with ~700 matches, this takes ~10 ms, against
~0.3 s for ``astropy.wcs.utils.fit_wcs_from_points(..., sip_degree=3)`` (a non-linear
``least_squares`` over CRVAL and CD, then the same SIP fit), with the same residuals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS, Sip
from scipy.spatial import cKDTree

from dcflow.errors import CalibrationError

__all__ = [
    "AstrometryResult",
    "fit_astrometry",
    "fit_tan_sip",
    "from_tangent_plane",
    "match_nearest",
    "to_tangent_plane",
    "vote_offset",
]

log = logging.getLogger(__name__)


def to_tangent_plane(
    ra_deg: np.ndarray, dec_deg: np.ndarray, ra0_deg: float, dec0_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection to standard coordinates ``(xi, eta)`` in degrees.

    ``xi`` points east (increasing RA) and ``eta`` north, as the FITS TAN intermediate world
    coordinates do.
    """
    ra = np.radians(ra_deg)
    dec = np.radians(dec_deg)
    ra0, dec0 = np.radians(ra0_deg), np.radians(dec0_deg)
    cosd = np.cos(dec)
    denom = np.sin(dec) * np.sin(dec0) + cosd * np.cos(dec0) * np.cos(ra - ra0)
    xi = cosd * np.sin(ra - ra0) / denom
    eta = (np.sin(dec) * np.cos(dec0) - cosd * np.sin(dec0) * np.cos(ra - ra0)) / denom
    return np.degrees(xi), np.degrees(eta)


def from_tangent_plane(
    xi_deg: np.ndarray, eta_deg: np.ndarray, ra0_deg: float, dec0_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `to_tangent_plane`: standard coordinates (deg) to RA, Dec (deg)."""
    xi, eta = np.radians(xi_deg), np.radians(eta_deg)
    ra0, dec0 = np.radians(ra0_deg), np.radians(dec0_deg)
    denom = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def vote_offset(
    x_det: np.ndarray,
    y_det: np.ndarray,
    x_ref: np.ndarray,
    y_ref: np.ndarray,
    *,
    max_offset_pix: float,
    bin_pix: float,
) -> tuple[float, float, int]:
    """Most common offset ``det - ref`` among all pairs closer than ``max_offset_pix``.

    Parameters
    ----------
    x_det, y_det : numpy.ndarray
        Detection positions, pixels.
    x_ref, y_ref : numpy.ndarray
        Reference positions projected through the approximate WCS, pixels.
    max_offset_pix : float
        Largest offset considered (the pointing error bound), pixels.
    bin_pix : float
        Histogram bin size, pixels.

    Returns
    -------
    dx, dy : float
        The offset (median of the pairs in the peak 3 x 3 bins), pixels.
    n_votes : int
        Number of pairs in the peak 3 x 3 bins.
    """
    if len(x_det) == 0 or len(x_ref) == 0:
        return 0.0, 0.0, 0
    tree = cKDTree(np.column_stack([x_ref, y_ref]))
    pairs = tree.query_ball_point(np.column_stack([x_det, y_det]), r=max_offset_pix)
    i_det = np.repeat(np.arange(len(x_det)), [len(p) for p in pairs])
    if i_det.size == 0:
        return 0.0, 0.0, 0
    i_ref = np.concatenate([np.asarray(p, dtype=np.int64) for p in pairs])
    ddx = np.asarray(x_det)[i_det] - np.asarray(x_ref)[i_ref]
    ddy = np.asarray(y_det)[i_det] - np.asarray(y_ref)[i_ref]
    nb = int(np.ceil(max_offset_pix / bin_pix))
    edges = np.arange(-nb, nb + 1) * bin_pix
    hist, _, _ = np.histogram2d(ddy, ddx, bins=(edges, edges))
    # 3 x 3 box sum so that a peak split across bin edges still wins.
    padded = np.pad(hist, 1)
    box = sum(
        padded[1 + a : 1 + a + hist.shape[0], 1 + b : 1 + b + hist.shape[1]]
        for a in (-1, 0, 1)
        for b in (-1, 0, 1)
    )
    jy, jx = np.unravel_index(np.argmax(box), box.shape)
    cy, cx = 0.5 * (edges[jy] + edges[jy + 1]), 0.5 * (edges[jx] + edges[jx + 1])
    near = (np.abs(ddx - cx) <= 1.5 * bin_pix) & (np.abs(ddy - cy) <= 1.5 * bin_pix)
    return float(np.median(ddx[near])), float(np.median(ddy[near])), int(near.sum())


def match_nearest(
    x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mutual nearest neighbours closer than ``radius``.

    Returns
    -------
    i1, i2 : numpy.ndarray
        Indices of matched pairs into the first and second list.
    distance : numpy.ndarray
        Their separations, in the units of the inputs.
    """
    if len(x1) == 0 or len(x2) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    p1 = np.column_stack([x1, y1])
    p2 = np.column_stack([x2, y2])
    d12, j12 = cKDTree(p2).query(p1, distance_upper_bound=radius)
    _, j21 = cKDTree(p1).query(p2, distance_upper_bound=radius)
    i1 = np.nonzero(np.isfinite(d12))[0]
    i2 = j12[i1]
    mutual = j21[i2] == i1
    return i1[mutual], i2[mutual], d12[i1[mutual]]


def _monomials(order: int, min_order: int = 0) -> list[tuple[int, int]]:
    """Exponents ``(p, q)`` of ``u^p v^q`` with ``min_order <= p + q <= order``."""
    return [(p, total - p) for total in range(min_order, order + 1) for p in range(total, -1, -1)]


def _lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares by normal equations on unit-norm columns.

    ``numpy.linalg.lstsq`` (SVD) on these small, well-conditioned systems was measured at
    10-30 ms per call on a loaded 2-core machine (threaded LAPACK); this takes ~0.2 ms.
    """
    norm = np.sqrt((a * a).sum(axis=0))
    norm[norm == 0] = 1.0
    an = a / norm
    coef = np.linalg.solve(an.T @ an, an.T @ b)
    return coef / norm[:, None]


def _design(u: np.ndarray, v: np.ndarray, terms: list[tuple]) -> np.ndarray:
    return np.column_stack([u**p * v**q for p, q in terms])


def fit_tan_sip(
    x: np.ndarray,
    y: np.ndarray,
    ra_deg: np.ndarray,
    dec_deg: np.ndarray,
    *,
    crpix: tuple[float, float],
    crval: tuple[float, float],
    order: int,
    shape: tuple[int, int],
) -> WCS:
    """Fit a TAN (order 1) or TAN-SIP WCS to matched pixel / sky positions.

    Parameters
    ----------
    x, y : numpy.ndarray
        Pixel positions, 0-based array coordinates (FITS pixel = array + 1).
    ra_deg, dec_deg : numpy.ndarray
        Sky positions of the same objects, degrees.
    crpix : tuple of float
        FITS (1-based) reference pixel, kept fixed.
    crval : tuple of float
        Starting tangent point, degrees (refined by the fit).
    order : int
        Total polynomial order: 1 = TAN with a CD matrix, >= 2 adds SIP terms up to it.
    shape : tuple of int
        ``(ny, nx)`` of the image, for the inverse (AP, BP) fit grid and ``pixel_shape``.

    Returns
    -------
    astropy.wcs.WCS
        The fitted WCS.

    Raises
    ------
    ValueError
        If there are fewer points than twice the number of coefficients per axis.
    """
    terms = _monomials(order)
    if len(x) < 2 * len(terms):
        raise ValueError(
            f"fit_tan_sip: {len(x)} points cannot constrain an order-{order} fit "
            f"({len(terms)} coefficients per axis)"
        )
    scale = 1000.0
    u = (np.asarray(x, float) + 1.0 - crpix[0]) / scale
    v = (np.asarray(y, float) + 1.0 - crpix[1]) / scale
    a = _design(u, v, terms)
    crval = (float(crval[0]), float(crval[1]))
    for _ in range(5):
        xi, eta = to_tangent_plane(ra_deg, dec_deg, *crval)
        coef = _lstsq(a, np.column_stack([xi, eta]))
        c00 = coef[0]
        ra_c, dec_c = from_tangent_plane(c00[0], c00[1], *crval)
        crval = (float(ra_c), float(dec_c))
        if np.hypot(*c00) < 1e-10:
            break
    xi, eta = to_tangent_plane(ra_deg, dec_deg, *crval)
    coef = _lstsq(a, np.column_stack([xi, eta]))
    index = {t: k for k, t in enumerate(terms)}
    cd = (
        np.array(
            [
                [coef[index[(1, 0)], 0], coef[index[(0, 1)], 0]],
                [coef[index[(1, 0)], 1], coef[index[(0, 1)], 1]],
            ]
        )
        / scale
    )
    wcs = WCS(naxis=2)
    wcs.wcs.crpix = crpix
    wcs.wcs.crval = crval
    wcs.wcs.cd = cd
    ny, nx = shape
    wcs.pixel_shape = (nx, ny)
    if order < 2:
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.set()
        return wcs
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    cd_inv = np.linalg.inv(cd)
    sip_a = np.zeros((order + 1, order + 1))
    sip_b = np.zeros((order + 1, order + 1))
    for (p, q), k in index.items():
        if p + q < 2:
            continue
        # Coefficient of u^p v^q in pixel units: scale^-(p+q), mapped through CD^-1.
        f, g = cd_inv @ coef[k] / scale ** (p + q)
        sip_a[p, q], sip_b[p, q] = f, g
    # Inverse polynomials on a grid over the image (and a margin).
    gx = np.linspace(-0.05 * nx, 1.05 * nx, 25) + 1.0 - crpix[0]
    gy = np.linspace(-0.05 * ny, 1.05 * ny, 25) + 1.0 - crpix[1]
    gu, gv = (g.ravel() for g in np.meshgrid(gx, gy))
    su, sv = gu.copy(), gv.copy()
    for (p, q), _ in index.items():
        if p + q >= 2:
            su += sip_a[p, q] * gu**p * gv**q
            sv += sip_b[p, q] * gu**p * gv**q
    inv_order = order + 1
    inv_terms = _monomials(inv_order, min_order=1)
    inv_design = _design(su / scale, sv / scale, inv_terms)
    inv_coef = _lstsq(inv_design, np.column_stack([gu - su, gv - sv]))
    sip_ap = np.zeros((inv_order + 1, inv_order + 1))
    sip_bp = np.zeros((inv_order + 1, inv_order + 1))
    for k, (p, q) in enumerate(inv_terms):
        sip_ap[p, q] = inv_coef[k, 0] / scale ** (p + q)
        sip_bp[p, q] = inv_coef[k, 1] / scale ** (p + q)
    wcs.sip = Sip(sip_a, sip_b, sip_ap, sip_bp, wcs.wcs.crpix)
    wcs.wcs.set()
    return wcs


@dataclass(frozen=True, slots=True)
class AstrometryResult:
    """A fitted WCS and the matches behind it.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        Calibrated WCS (TAN-SIP when ``sip_order >= 2``), pixel origin at array ``[0, 0]``.
    det_index, ref_index : numpy.ndarray
        Indices of the matched detections and reference stars used in the final fit.
    n_matched : int
        Number of matches used in the final fit.
    rms_mas : float
        ``sqrt(mean(|offset|^2))`` of the final matches' sky offsets (reference minus fitted
        detection position), mas.
    sip_order : int
        Polynomial order actually fitted (lowered when matches are few).
    pointing_offset_arcsec : float
        Size of the pointing correction found by offset voting, arcsec.
    n_votes : int
        Pairs supporting the voted offset.
    """

    wcs: WCS
    det_index: np.ndarray
    ref_index: np.ndarray
    n_matched: int
    rms_mas: float
    sip_order: int
    pointing_offset_arcsec: float
    n_votes: int


def _n_terms(order: int) -> int:
    return (order + 1) * (order + 2) // 2


def _sky_offsets_arcsec(wcs, x, y, ra, dec):
    ra_f, dec_f = wcs.all_pix2world(x, y, 0)
    dra = (np.asarray(ra) - ra_f + 180.0) % 360.0 - 180.0
    return dra * np.cos(np.radians(dec)) * 3600.0, (np.asarray(dec) - dec_f) * 3600.0


def fit_astrometry(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    ref_ra_deg: np.ndarray,
    ref_dec_deg: np.ndarray,
    ref_mag: np.ndarray,
    header_wcs: WCS,
    shape: tuple[int, int],
    *,
    max_offset_arcsec: float = 10.0,
    match_radius_arcsec: float = 1.5,
    sip_order: int = 3,
    n_bright: int = 200,
    clip_sigma: float = 3.0,
    min_matches: int = 10,
    max_rms_arcsec: float = 0.25,
) -> AstrometryResult:
    """Match detections to a reference catalogue and fit a TAN-SIP WCS.

    Parameters
    ----------
    x, y : numpy.ndarray
        Centroids of the usable detections (0-based array coordinates, pixels).
    flux : numpy.ndarray
        Their fluxes (only the ranking matters: the ``n_bright`` brightest vote).
    ref_ra_deg, ref_dec_deg, ref_mag : numpy.ndarray
        Reference catalogue positions (deg) and magnitudes.
    header_wcs : astropy.wcs.WCS
        Approximate WCS (pointing error up to ``max_offset_arcsec``), array pixel origin.
    shape : tuple of int
        ``(ny, nx)`` of the image.
    max_offset_arcsec : float
        Largest pointing error searched, arcsec.
    match_radius_arcsec : float
        Match radius after the voted offset is applied, arcsec; later rounds shrink it to
        ``max(5 * rms, 0.3")``.
    sip_order : int
        Total polynomial order of the final fit (1 = TAN only); lowered when there are fewer
        than three matches per coefficient.
    n_bright : int
        Number of brightest detections (and 2x as many brightest references) that vote.
    clip_sigma : float
        Matches farther than ``clip_sigma`` times the robust rms from the fit are dropped.
    min_matches : int
        Fewest matches accepted.
    max_rms_arcsec : float
        Largest accepted rms of the final matched offsets, arcsec; chance matches against
        the wrong field give about half the match radius.

    Returns
    -------
    AstrometryResult
        The fitted WCS and its matches.

    Raises
    ------
    CalibrationError
        If fewer than ``min_matches`` detections match the reference catalogue, or the
        final rms exceeds ``max_rms_arcsec``.
    """
    ny, nx = shape
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ref_ra = np.asarray(ref_ra_deg, float)
    ref_dec = np.asarray(ref_dec_deg, float)
    scale_arcsec = float(np.sqrt(abs(np.linalg.det(header_wcs.pixel_scale_matrix)))) * 3600.0
    xr, yr = header_wcs.all_world2pix(ref_ra, ref_dec, 0)
    margin = max_offset_arcsec / scale_arcsec + 10.0
    in_field = (
        np.isfinite(xr)
        & (xr > -margin)
        & (xr < nx - 1 + margin)
        & (yr > -margin)
        & (yr < ny - 1 + margin)
    )
    ref_ids = np.nonzero(in_field)[0]
    meta = {
        "n_detected": int(x.size),
        "n_reference_in_field": int(ref_ids.size),
        "min_matches": int(min_matches),
        "max_offset_arcsec": float(max_offset_arcsec),
    }
    bright_det = np.argsort(-np.asarray(flux, float))[:n_bright]
    bright_ref = ref_ids[np.argsort(np.asarray(ref_mag, float)[ref_ids])[: 2 * n_bright]]
    dx, dy, n_votes = vote_offset(
        x[bright_det],
        y[bright_det],
        xr[bright_ref],
        yr[bright_ref],
        max_offset_pix=max_offset_arcsec / scale_arcsec,
        bin_pix=max(1.0, 0.5 / scale_arcsec),
    )
    offset_arcsec = float(np.hypot(dx, dy) * scale_arcsec)
    log.debug("voted offset (%.2f, %.2f) pix from %d pairs", dx, dy, n_votes)

    crpix = (nx / 2.0 + 0.5, ny / 2.0 + 0.5)
    crval = tuple(
        float(c)
        for c in header_wcs.all_pix2world([[crpix[0] - 1.0 - dx, crpix[1] - 1.0 - dy]], 0)[0]
    )
    # Start from the header WCS shifted by the voted offset.
    wcs = header_wcs.deepcopy()
    wcs.wcs.crpix = np.asarray(wcs.wcs.crpix) + np.array([dx, dy])
    wcs.wcs.set()
    radius = match_radius_arcsec
    rms_arcsec = np.inf
    rounds = [1, 1, sip_order, sip_order, sip_order]
    det_i = ref_i = np.zeros(0, np.int64)
    order_used = 1
    for order in rounds:
        xp, yp = wcs.all_world2pix(ref_ra[ref_ids], ref_dec[ref_ids], 0)
        det_i, k, _ = match_nearest(x, y, xp, yp, radius / scale_arcsec)
        ref_i = ref_ids[k]
        order_used = int(order)
        while order_used > 1 and det_i.size < 3 * _n_terms(order_used):
            order_used -= 1
        if det_i.size < max(min_matches, 2 * _n_terms(order_used)):
            raise CalibrationError(
                f"astrometry: only {det_i.size} detections matched the reference catalogue "
                f"within {radius:.2f} arcsec (need >= {min_matches}); wrong field, pointing "
                f"error beyond {max_offset_arcsec} arcsec, or too few stars",
                n_matched=int(det_i.size),
                match_radius_arcsec=float(radius),
                **meta,
            )
        keep = np.ones(det_i.size, dtype=bool)
        for _ in range(3):
            wcs = fit_tan_sip(
                x[det_i[keep]],
                y[det_i[keep]],
                ref_ra[ref_i[keep]],
                ref_dec[ref_i[keep]],
                crpix=crpix,
                crval=crval,
                order=order_used,
                shape=shape,
            )
            crval = tuple(float(c) for c in wcs.wcs.crval)
            ox, oy = _sky_offsets_arcsec(wcs, x[det_i], y[det_i], ref_ra[ref_i], ref_dec[ref_i])
            r = np.hypot(ox, oy)
            # Robust rms of the 2-d offset from the median absolute offset (Rayleigh).
            sigma_1d = np.median(r[keep]) / np.sqrt(2.0 * np.log(2.0))
            new_keep = r < clip_sigma * max(sigma_1d, 0.005) * np.sqrt(2.0)
            if new_keep.sum() < max(min_matches, 2 * _n_terms(order_used)):
                break
            if np.array_equal(new_keep, keep):
                break
            keep = new_keep
        det_i, ref_i = det_i[keep], ref_i[keep]
        ox, oy = _sky_offsets_arcsec(wcs, x[det_i], y[det_i], ref_ra[ref_i], ref_dec[ref_i])
        rms_arcsec = float(np.sqrt(np.mean(ox**2 + oy**2)))
        radius = min(match_radius_arcsec, max(5.0 * rms_arcsec, 0.3))
    if rms_arcsec > max_rms_arcsec:
        raise CalibrationError(
            f"astrometry: rms of the {det_i.size} matched offsets is {rms_arcsec:.3f} arcsec "
            f"(> {max_rms_arcsec}); the matches look like chance coincidences (wrong field "
            "or reference catalogue)",
            n_matched=int(det_i.size),
            fit_rms_mas=float(rms_arcsec * 1000.0),
            **meta,
        )
    return AstrometryResult(
        wcs=wcs,
        det_index=det_i,
        ref_index=ref_i,
        n_matched=int(det_i.size),
        rms_mas=rms_arcsec * 1000.0,
        sip_order=order_used,
        pointing_offset_arcsec=offset_arcsec,
        n_votes=n_votes,
    )
