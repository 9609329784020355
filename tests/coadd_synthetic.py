"""Synthetic calexps of one small patch, with known truth, for the coadd-side stage tests.

The field: one tract of 3x3 patches (0.2"/pixel, inner boxes of 200 pixels, 20-pixel border);
tests use the central patch ``1,1`` (240 x 240 pixels). Sources sit on a jittered grid inside
its inner box: ~100 stars (r = 16..23.5), 12 exponential galaxies (r = 17.5..20, half-light
radius 0.5..1.1") and one variable star (r = 18, sinusoidal flux, 30 % amplitude).

Visits are calexps as processCcd writes them: background-subtracted images in electrons,
variance (sky + source, electrons^2), a TAN WCS at 0.187"/pixel with a dither and a small
rotation, header ZP (AB mag of one electron), PSFFWHM (arcsec), AIRMASS, MJD, FILTER, VISIT.
Frames are non-square (290 x 330 pixels). PSFs are circular Gaussians integrated over pixels.
One visit can carry a satellite trail and cosmic rays that are *not* flagged in its mask, so
only the coadd's outlier rejection can remove them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
from astropy.modeling.models import Sersic2D
from astropy.table import Table
from astropy.wcs import WCS
from scipy import ndimage
from scipy.special import erf

from dcflow.campaign.skymap import SkyMapConfig, make_tracts, patch_info, patch_wcs
from dcflow.exposure import Exposure
from dcflow.stages.warp import warp_exposure

SKYMAP = SkyMapConfig(
    tract_ra_deg=(53.0,),
    tract_dec_deg=(-28.0,),
    pixel_scale_arcsec=0.2,
    patch_inner_pixels=200,
    patch_border_pixels=20,
    n_patches=3,
)
TRACT = make_tracts(SKYMAP)[0]
PATCH = patch_info(TRACT, 1, 1)
PATCH_WCS = patch_wcs(TRACT, PATCH)
CALEXP_SHAPE = (290, 330)
CALEXP_SCALE_ARCSEC = 0.187
ZP_NJY = 31.4
VARIABLE_PERIOD_DAYS = 3.7
VARIABLE_AMPLITUDE = 0.3


def mag_to_njy(mag):
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - ZP_NJY))


@dataclass(frozen=True)
class VisitSpec:
    visit: int
    filter: str
    dra_arcsec: float
    ddec_arcsec: float
    rot_deg: float
    fwhm_arcsec: float
    sky_e: float
    zp: float
    airmass: float
    mjd: float
    artefacts: bool = False
    psf_beta: float = 0.0
    """Moffat index of the PSF (0: Gaussian); written to the header as PSFBETA."""


def default_visits() -> list[VisitSpec]:
    """Eight r visits (varied seeing, one with a trail and cosmic rays) and four g visits."""
    rng = np.random.default_rng(11)
    visits = []
    fwhm_r = [0.70, 0.95, 0.80, 1.10, 0.75, 0.90, 1.00, 0.85]
    airmass_r = [1.05, 1.30, 1.10, 1.60, 1.02, 1.20, 1.45, 1.15]
    for k in range(8):
        visits.append(
            VisitSpec(
                visit=1000 + k,
                filter="r",
                dra_arcsec=float(rng.uniform(-3, 3)),
                ddec_arcsec=float(rng.uniform(-3, 3)),
                rot_deg=float(rng.uniform(-0.5, 0.5)),
                fwhm_arcsec=fwhm_r[k],
                sky_e=400.0,
                zp=28.0 + float(rng.uniform(-0.1, 0.1)),
                airmass=airmass_r[k],
                mjd=60000.0 + 0.9 * k,
                artefacts=(k == 2),
            )
        )
    for k in range(4):
        visits.append(
            VisitSpec(
                visit=2000 + k,
                filter="g",
                dra_arcsec=float(rng.uniform(-3, 3)),
                ddec_arcsec=float(rng.uniform(-3, 3)),
                rot_deg=float(rng.uniform(-0.5, 0.5)),
                fwhm_arcsec=[0.85, 0.95, 0.80, 1.05][k],
                sky_e=250.0,
                zp=28.2 + float(rng.uniform(-0.1, 0.1)),
                airmass=1.1,
                mjd=60000.3 + 1.1 * k,
            )
        )
    return visits


def equal_visits(n: int, *, filter_name: str = "r") -> list[VisitSpec]:
    """``n`` visits identical but for their dither (for the coadd depth test)."""
    rng = np.random.default_rng(5)
    base = VisitSpec(0, filter_name, 0.0, 0.0, 0.0, 0.9, 400.0, 28.0, 1.1, 60000.0)
    return [
        replace(
            base,
            visit=3000 + k,
            dra_arcsec=float(rng.uniform(-3, 3)),
            ddec_arcsec=float(rng.uniform(-3, 3)),
            mjd=60000.0 + k,
        )
        for k in range(n)
    ]


def make_truth(seed: int = 1, *, n_galaxies: int = 12) -> Table:
    """Truth table: id, kind (star/galaxy/variable), ra_deg, dec_deg, mag_r, mag_g, shape."""
    rng = np.random.default_rng(seed)
    inner = PATCH.inner
    spacing = 18
    xs = np.arange(inner.x0 + 12, inner.x1 - 10, spacing) - PATCH.outer.x0
    ys = np.arange(inner.y0 + 12, inner.y1 - 10, spacing) - PATCH.outer.y0
    gx, gy = np.meshgrid(xs.astype(float), ys.astype(float))
    gx = gx.ravel() + rng.uniform(-3, 3, gx.size)
    gy = gy.ravel() + rng.uniform(-3, 3, gy.size)
    n = gx.size
    ra, dec = PATCH_WCS.pixel_to_world_values(gx, gy)
    kind = np.array(["star"] * n, dtype="U8")
    order = rng.permutation(n)
    kind[order[:n_galaxies]] = "galaxy"
    kind[order[n_galaxies]] = "variable"
    mag_r = rng.uniform(16.0, 23.5, n)
    mag_r[kind == "galaxy"] = rng.uniform(17.5, 20.0, n_galaxies)
    mag_r[kind == "variable"] = 18.0
    mag_g = mag_r + rng.uniform(0.2, 1.0, n)
    r_eff = np.where(kind == "galaxy", rng.uniform(0.5, 1.1, n), 0.0)
    ellip = np.where(kind == "galaxy", rng.uniform(0.0, 0.5, n), 0.0)
    theta = rng.uniform(0, np.pi, n)
    return Table(
        {
            "id": np.arange(n),
            "kind": kind,
            "ra_deg": ra,
            "dec_deg": dec,
            "x_patch": gx,
            "y_patch": gy,
            "mag_r": mag_r,
            "mag_g": mag_g,
            "r_eff_arcsec": r_eff,
            "ellip": ellip,
            "theta_rad": theta,
        }
    )


def variable_factor(mjd: float) -> float:
    """Flux of the variable star over its mean flux at ``mjd``."""
    return 1.0 + VARIABLE_AMPLITUDE * np.sin(2 * np.pi * (mjd - 60000.0) / VARIABLE_PERIOD_DAYS)


def visit_wcs(spec: VisitSpec) -> WCS:
    centre_ra, centre_dec = PATCH_WCS.pixel_to_world_values(
        (PATCH.shape[1] - 1) / 2, (PATCH.shape[0] - 1) / 2
    )
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [
        centre_ra + spec.dra_arcsec / 3600 / np.cos(np.radians(centre_dec)),
        centre_dec + spec.ddec_arcsec / 3600,
    ]
    ny, nx = CALEXP_SHAPE
    wcs.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    scale = CALEXP_SCALE_ARCSEC / 3600
    t = np.radians(spec.rot_deg)
    wcs.wcs.cd = np.array(
        [[-scale * np.cos(t), scale * np.sin(t)], [scale * np.sin(t), scale * np.cos(t)]]
    )
    return wcs


def _gaussian_stamp(image, x, y, flux, sigma):
    r = int(np.ceil(6 * sigma)) + 1
    ix, iy = round(float(x)), round(float(y))
    x0, x1 = max(0, ix - r), min(image.shape[1], ix + r + 1)
    y0, y1 = max(0, iy - r), min(image.shape[0], iy + r + 1)
    if x1 <= x0 or y1 <= y0:
        return
    s = np.sqrt(2) * sigma
    px = np.arange(x0, x1)
    py = np.arange(y0, y1)
    fx = 0.5 * (erf((px + 0.5 - x) / s) - erf((px - 0.5 - x) / s))
    fy = 0.5 * (erf((py + 0.5 - y) / s) - erf((py - 0.5 - y) / s))
    image[y0:y1, x0:x1] += flux * np.outer(fy, fx)


def _moffat_stamp(image, x, y, flux, fwhm_pix, beta):
    alpha = fwhm_pix / (2 * np.sqrt(2 ** (1 / beta) - 1))
    r = int(np.ceil(12 * fwhm_pix))
    ix, iy = round(float(x)), round(float(y))
    sub = (np.arange(5) - 2) / 5
    off = np.arange(-r, r + 1)
    px = (off[:, None] + sub[None, :] + ix - x).ravel()
    py = (off[:, None] + sub[None, :] + iy - y).ravel()
    value = (
        (beta - 1)
        / (np.pi * alpha**2)
        * (1 + (py[:, None] ** 2 + px[None, :] ** 2) / alpha**2) ** -beta
    )
    n = 2 * r + 1
    stamp = value.reshape(n, 5, n, 5).mean(axis=(1, 3)) * flux
    y0, x0 = iy - r, ix - r
    ys = slice(max(0, y0), min(image.shape[0], y0 + n))
    xs = slice(max(0, x0), min(image.shape[1], x0 + n))
    image[ys, xs] += stamp[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


def _galaxy_stamp(image, x, y, flux, sigma, r_eff_pix, ellip, theta, rot_rad):
    over = 3
    r = int(np.ceil(6 * r_eff_pix + 4 * sigma)) + 1
    ix, iy = round(float(x)), round(float(y))
    sub = (np.arange(-r * over, (r + 1) * over) + 0.5) / over - 0.5
    sx, sy = np.meshgrid(ix + sub, iy + sub)
    model = Sersic2D(
        amplitude=1.0, r_eff=r_eff_pix, n=1.0, x_0=x, y_0=y, ellip=ellip, theta=theta + rot_rad
    )(sx, sy)
    model = ndimage.gaussian_filter(model, sigma * over, mode="constant")
    n = 2 * r + 1
    binned = model.reshape(n, over, n, over).sum(axis=(1, 3))
    binned *= flux / binned.sum()
    y0, x0 = iy - r, ix - r
    ys = slice(max(0, y0), min(image.shape[0], y0 + n))
    xs = slice(max(0, x0), min(image.shape[1], x0 + n))
    image[ys, xs] += binned[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


def source_flux_e(truth: Table, spec: VisitSpec) -> np.ndarray:
    mag = np.asarray(truth[f"mag_{spec.filter}"], dtype=float)
    flux = 10.0 ** (-0.4 * (mag - spec.zp))
    variable = np.asarray(truth["kind"]) == "variable"
    return np.where(variable, flux * variable_factor(spec.mjd), flux)


def artefact_pixels(spec: VisitSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calexp pixels ``(x, y)`` of the injected trail core and cosmic rays, and their values."""
    rng = np.random.default_rng(spec.visit)
    ny, nx = CALEXP_SHAPE
    # Trail: the line through (0, 40) and (nx, 250), Gaussian cross-section sigma 1.2 px.
    yy, xx = np.mgrid[0:ny, 0:nx]
    a, b = (250 - 40) / nx, 40.0
    dist = np.abs(yy - (a * xx + b)) / np.hypot(a, 1)
    trail = 300.0 * np.exp(-0.5 * (dist / 1.2) ** 2)
    cr = np.zeros(CALEXP_SHAPE)
    cx = rng.integers(30, nx - 30, 10)
    cy = rng.integers(30, ny - 30, 10)
    for x, y in zip(cx, cy, strict=True):
        cr[y, x] += rng.uniform(1500, 4000)
        if rng.uniform() < 0.5:
            cr[y, x + 1] += rng.uniform(500, 1500)
    values = trail + cr
    core = (dist < 1.0) | (cr > 0)
    return xx[core], yy[core], values


def render_calexp(
    truth: Table, spec: VisitSpec, *, seed: int = 0, noiseless: bool = False
) -> Exposure:
    """A background-subtracted calexp of the truth field for one visit (electrons)."""
    rng = np.random.default_rng(seed * 100003 + spec.visit)
    wcs = visit_wcs(spec)
    signal = np.zeros(CALEXP_SHAPE)
    sigma_pix = spec.fwhm_arcsec / CALEXP_SCALE_ARCSEC / 2.3548
    x, y = wcs.all_world2pix(np.asarray(truth["ra_deg"]), np.asarray(truth["dec_deg"]), 0)
    flux = source_flux_e(truth, spec)
    for k in range(len(truth)):
        if truth["kind"][k] == "galaxy":
            _galaxy_stamp(
                signal,
                x[k],
                y[k],
                flux[k],
                sigma_pix,
                truth["r_eff_arcsec"][k] / CALEXP_SCALE_ARCSEC,
                truth["ellip"][k],
                truth["theta_rad"][k],
                np.radians(spec.rot_deg),
            )
        elif spec.psf_beta > 0:
            _moffat_stamp(
                signal, x[k], y[k], flux[k], spec.fwhm_arcsec / CALEXP_SCALE_ARCSEC, spec.psf_beta
            )
        else:
            _gaussian_stamp(signal, x[k], y[k], flux[k], sigma_pix)
    variance = spec.sky_e + 16.0 + signal
    image = signal + (0.0 if noiseless else rng.normal(size=CALEXP_SHAPE) * np.sqrt(variance))
    if spec.artefacts:
        image = image + artefact_pixels(spec)[2]
    header = wcs.to_header()
    header["VISIT"] = spec.visit
    header["FILTER"] = spec.filter
    header["ZP"] = spec.zp
    header["PSFFWHM"] = spec.fwhm_arcsec
    header["AIRMASS"] = spec.airmass
    if spec.psf_beta > 0:
        header["PSFBETA"] = spec.psf_beta
    header["MJD"] = spec.mjd
    return Exposure(
        image=image.astype(np.float32),
        mask=np.zeros(CALEXP_SHAPE, dtype=np.int32),
        variance=variance.astype(np.float32),
        wcs=wcs,
        header=header,
    )


@dataclass(frozen=True)
class WarpedField:
    truth: Table
    specs: tuple[VisitSpec, ...]
    calexps: tuple[Exposure, ...]
    warps: tuple[Exposure, ...]
    clean_warps: tuple[Exposure, ...]
    """The same warps without the injected artefacts (same noise)."""

    def for_filter(self, filter_name: str, *, clean: bool = False) -> list[Exposure]:
        warps = self.clean_warps if clean else self.warps
        return [w for s, w in zip(self.specs, warps, strict=True) if s.filter == filter_name]


@functools.lru_cache(maxsize=2)
def warped_field(seed: int = 1) -> WarpedField:
    """The default field rendered for every default visit and warped onto the test patch.

    Cached: several test modules share it (a few seconds to build).
    """
    truth = make_truth(seed)
    specs = tuple(default_visits())
    calexps = tuple(render_calexp(truth, s, seed=seed) for s in specs)
    warps = tuple(warp_exposure(c, PATCH_WCS, PATCH.shape).warp for c in calexps)
    clean = []
    for spec, calexp, warp in zip(specs, calexps, warps, strict=True):
        if spec.artefacts:
            calexp = replace(
                calexp, image=calexp.image - artefact_pixels(spec)[2].astype(np.float32)
            )
            warp = warp_exposure(calexp, PATCH_WCS, PATCH.shape).warp
        clean.append(warp)
    return WarpedField(truth, specs, calexps, warps, tuple(clean))


@dataclass(frozen=True)
class MeasuredField:
    field: WarpedField
    coadds: dict
    objects: Table
    truth_index: np.ndarray
    """For each truth row, the index of the nearest Object (see ``matched``)."""
    matched: np.ndarray
    """Truth rows with an Object within 2 patch pixels (0.4")."""
    truth_snr: np.ndarray
    """Coadd r-band PSF S/N of each truth source at its true position (truth flux / error)."""


@functools.lru_cache(maxsize=1)
def measured_field() -> MeasuredField:
    """Coadds (r, g) of the default field, its Object table and the truth match."""
    from dcflow.stages.coadd import assemble_coadd
    from dcflow.stages.coadd_measurement import CoaddMeasurementConfig, measure_coadds
    from dcflow.stages.forced_photometry import MixturePsf, psf_photometry
    from dcflow.stages.multiband import chi2_detection_image

    field = warped_field()
    results = {band: assemble_coadd(field.for_filter(band)) for band in ("r", "g")}
    coadds = {band: result.coadd for band, result in results.items()}
    detection = chi2_detection_image(coadds)
    config = CoaddMeasurementConfig(apcorr_min_stars=3)
    coverages = {band: result.input_coverage for band, result in results.items()}
    objects = measure_coadds(coadds, detection, PATCH, coverages=coverages, config=config).objects
    truth = field.truth
    tx, ty = PATCH_WCS.world_to_pixel_values(truth["ra_deg"], truth["dec_deg"])
    dist = np.hypot(tx[:, None] - objects["x"][None, :], ty[:, None] - objects["y"][None, :])
    psf = MixturePsf.from_header(coadds["r"].header, SKYMAP.pixel_scale_arcsec)
    _, err, _ = psf_photometry(coadds["r"], tx, ty, psf, radius_pix=9)
    return MeasuredField(
        field=field,
        coadds=coadds,
        objects=objects,
        truth_index=dist.argmin(axis=1),
        matched=dist.min(axis=1) < 2.0,
        truth_snr=mag_to_njy(truth["mag_r"]) / err,
    )
