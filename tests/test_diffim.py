"""Difference imaging and DIASources against a simulated pair with known transients.

The science image (Moffat beta 3) and its template (near-Gaussian, sharper, deeper, another
zero point) have PSFs whose widths vary across the frame in different directions; 130
transients of known flux are injected in the science image only and one bright star is
moved by one pixel (a dipole). The template has no data in its last 60 columns.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from dcflow.errors import CalibrationError, InputDataError
from dcflow.exposure import MaskPlane
from dcflow.instruments.diffim_sim import simulate_diffim_pair
from dcflow.stages.dia_sources import (
    DIA_SOURCE_COLUMNS,
    DiaSourceConfig,
    DiaSourceFlag,
    detect_dia_sources,
)
from dcflow.stages.diffim import (
    DiffimConfig,
    decorrelation_kernel,
    noise_correlation,
    subtract_images,
)
from dcflow.stages.measurement import psf_fluxes

SHAPE = (1100, 700)  # non-square: an x/y swap breaks the spatial terms
NO_DATA_COLUMNS = 60
MATCH_RADIUS_PIX = 2.0


def _run(pair, template_mask=None, config=None):
    mask = np.zeros(SHAPE, dtype=np.int32)
    tmask = mask if template_mask is None else template_mask
    centre = pair.template_psf.psf_at((SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2)
    return subtract_images(
        pair.science,
        pair.science_variance,
        mask,
        pair.template,
        pair.template_variance,
        tmask,
        science_zero_point=pair.science_zero_point,
        template_zero_point=pair.template_zero_point,
        science_psf=pair.science_psf,
        template_fwhm_pix=centre.fwhm_pix,
        config=config,
    )


def _source_free(pair, mask, radius=15):
    """Pixels farther than ``radius`` from every star and transient, unmasked."""
    seeds = np.zeros(SHAPE, dtype=bool)
    for table in (pair.stars, pair.transients):
        yi = np.clip(np.rint(table["y"]).astype(int), 0, SHAPE[0] - 1)
        xi = np.clip(np.rint(table["x"]).astype(int), 0, SHAPE[1] - 1)
        seeds[yi, xi] = True
    near = ndimage.binary_dilation(seeds, iterations=radius)
    return ~near & (mask == 0)


@pytest.fixture(scope="module")
def run():
    pair = simulate_diffim_pair(
        SHAPE,
        n_stars=250,
        transient_fluxes=np.geomspace(700.0, 16000.0, 130),
        seed=3,
        moved_star_shift_pix=1.0,
    )
    tmask = np.zeros(SHAPE, dtype=np.int32)
    tmask[:, -NO_DATA_COLUMNS:] = int(MaskPlane.NO_DATA)
    diff = _run(pair, tmask)
    dia = detect_dia_sources(diff.image, diff.variance, diff.mask, diff.psf)
    tx, ty = np.asarray(pair.transients["x"]), np.asarray(pair.transients["y"])
    covered = tx < SHAPE[1] - NO_DATA_COLUMNS - 30
    # The S/N of each transient on the difference: truth over the PSF-flux error there.
    table = diff.psf.phase_table(12, tx, ty)
    _, forced_err, _ = psf_fluxes(diff.image, diff.variance, diff.mask != 0, tx, ty, table)
    true_snr = np.asarray(pair.transients["flux"]) / forced_err
    tab = dia.table
    tree = cKDTree(np.column_stack([tab["x"], tab["y"]]))
    dist, k = tree.query(np.column_stack([tx, ty]))
    k = np.minimum(k, len(tab) - 1)
    found = (dist < MATCH_RADIUS_PIX) & ~np.asarray(tab["is_negative"])[k]
    return {
        "pair": pair,
        "diff": diff,
        "dia": dia,
        "covered": covered,
        "true_snr": true_snr,
        "found": found,
        "k": k,
    }


def test_kernel_fit_recovers_zero_point_ratio(run):
    diff = run["diff"]
    assert diff.convolved == "template"
    assert diff.template_scale == pytest.approx(10 ** (0.4 * (30.0 - 31.4)))
    # The kernel sum is the fitted photometric ratio after the zero-point scaling: ~1. The
    # Gaussian basis misses a little of the Moffat wings beyond the stamps (measured 0.985).
    assert abs(diff.kernel.kernel_sum - 1.0) < 0.03
    assert diff.kernel.n_stars >= 50


def test_difference_noise_matches_variance_plane(run):
    """Away from sources, std(image / sqrt(variance)) is 1 within 10 %."""
    diff = run["diff"]
    free = _source_free(run["pair"], diff.mask)
    z = diff.image[free] / np.sqrt(diff.variance[free])
    assert free.sum() > 100_000
    assert abs(np.std(z) - 1.0) < 0.10
    assert abs(np.mean(z)) < 0.05


def test_decorrelation_is_needed_for_a_true_variance():
    """Without decorrelation the convolved template's noise is correlated: scatter too low."""
    kernel = np.zeros((11, 11))
    yy, xx = np.mgrid[-5:6, -5:6]
    kernel = np.exp(-0.5 * (xx**2 + yy**2) / 1.5**2)
    kernel /= kernel.sum()
    rng = np.random.default_rng(0)
    sci = rng.standard_normal((400, 300))
    tmpl = ndimage.correlate(rng.standard_normal((400, 300)), kernel)
    plain = sci - tmpl
    phi = decorrelation_kernel(kernel, 1.0, 1.0, half_size=8)
    white = ndimage.convolve(plain, phi)
    inner = (slice(20, -20), slice(20, -20))
    assert np.std(plain[inner]) ** 2 < 1.2  # 2 says the summed variance planes
    assert np.std(white[inner]) ** 2 == pytest.approx(2.0, rel=0.05)
    assert phi.sum() == pytest.approx(1.0)


def test_decorrelation_of_a_resampled_template():
    """A resampled template has pixel noise below its variance plane.

    Its measured noise correlation whitens the difference where the science image is
    convolved: the pixel noise is then what the summed variance planes say.
    """
    rng = np.random.default_rng(1)
    shape = (500, 400)
    yy, xx = np.mgrid[-5:6, -5:6]
    kernel = np.exp(-0.5 * (xx**2 + yy**2) / 1.2**2)
    kernel /= kernel.sum()
    sci = rng.standard_normal(shape)
    # not half a pixel on both axes: that leaves no noise at all at the Nyquist frequency,
    # which nothing can whiten (measured 0.88 there)
    tmpl = ndimage.shift(rng.standard_normal(shape), (0.25, 0.4), order=3, mode="wrap")
    var = np.ones(shape)
    bad = np.zeros(shape, bool)
    white = noise_correlation(sci, var, bad, fwhm_pix=3.0)
    resampled = noise_correlation(tmpl, var, bad, fwhm_pix=3.0)
    assert white.sum() == pytest.approx(1.0) and resampled.sum() == pytest.approx(1.0)
    assert white[3, 3] == pytest.approx(1.0, abs=0.03)
    # cubic spline: pixel variance 0.67 of the input's (measured 0.64)
    assert resampled[3, 3] == pytest.approx(np.var(tmpl), abs=0.04)
    assert resampled[3, 3] < 0.75
    plain = ndimage.correlate(sci, kernel) - tmpl
    inner = (slice(20, -20), slice(20, -20))
    ratios = {}
    for name, corr in (("white", None), ("measured", resampled)):
        phi = decorrelation_kernel(
            kernel, 1.0, 1.0, half_size=8, correlation_convolved=white, correlation_other=corr
        )
        ratios[name] = np.std(ndimage.convolve(plain, phi)[inner]) / np.sqrt(2.0)
    assert ratios["white"] < 0.9, ratios  # measured 0.82
    assert ratios["measured"] == pytest.approx(1.0, abs=0.03), ratios


def test_no_template_region_is_masked_and_empty(run):
    diff, tab = run["diff"], run["dia"].table
    stripe = (slice(None), slice(SHAPE[1] - NO_DATA_COLUMNS, None))
    assert np.all(diff.mask[stripe] & int(MaskPlane.NO_DATA))
    assert np.all(diff.image[stripe] == 0.0)
    assert np.all(np.isinf(diff.variance[stripe]))
    inside = np.asarray(tab["x"]) > SHAPE[1] - NO_DATA_COLUMNS
    assert not inside.any()
    near = np.asarray(tab["x"]) > SHAPE[1] - NO_DATA_COLUMNS - 12
    assert np.all(np.asarray(tab["flags"])[near] & int(DiaSourceFlag.NO_TEMPLATE | 1))


def test_completeness_at_snr_10(run):
    sel = run["covered"] & (run["true_snr"] >= 10)
    assert sel.sum() >= 60
    assert run["found"][sel].mean() >= 0.95


def test_transient_psf_flux_and_errors(run):
    """Median flux within 3 % of truth; errors cover it (pull rms ~ 1)."""
    tab, pair = run["dia"].table, run["pair"]
    m = run["found"] & run["covered"] & (run["true_snr"] >= 10)
    flux = np.asarray(tab["psf_flux"])[run["k"][m]]
    err = np.asarray(tab["psf_flux_err"])[run["k"][m]]
    truth = np.asarray(pair.transients["flux"])[m]
    assert abs(np.median(flux / truth) - 1.0) < 0.03
    pull = (flux - truth) / err
    assert 0.8 < np.std(pull) < 1.25
    assert abs(np.mean(pull)) < 0.3


def test_false_detections_and_dipole(run):
    tab, pair = run["dia"].table, run["pair"]
    # A detection is false when no transient lies within one PSF FWHM (a faint transient's
    # centroid can be 2-3 pixels off; the completeness test uses 2 pixels).
    tree = cKDTree(np.column_stack([pair.transients["x"], pair.transients["y"]]))
    dist, _ = tree.query(np.column_stack([tab["x"], tab["y"]]))
    matched = dist < run["diff"].psf.fwhm_pix
    moved = pair.stars[pair.stars["dx_science"] != 0][0]
    near_moved = np.hypot(tab["x"] - moved["x"], tab["y"] - moved["y"]) < 8
    # The moved star leaves a positive and a negative lobe, both flagged DIPOLE.
    lobes = tab[near_moved]
    assert sorted(lobes["is_negative"]) == [False, True]
    assert np.all(lobes["flags"] & int(DiaSourceFlag.DIPOLE))
    assert np.all(lobes["reliability"] < 0.2)
    assert run["dia"].n_dipoles == 1
    # Outside the transients, at most 5 detections at 5 sigma (the dipole included).
    assert (~matched).sum() <= 5
    assert np.median(tab["reliability"][matched]) > 0.8
    # The kernel's Gaussian basis does not quite reach the beta = 3 Moffat wings: what is
    # left are negative residuals a few pixels from the brightest stars (measured: 2 here).


def test_science_sharper_convolves_science():
    """When the science image is the sharper one, it is convolved; noise and fluxes hold."""
    pair = simulate_diffim_pair(
        SHAPE,
        n_stars=250,
        transient_fluxes=np.geomspace(2000.0, 16000.0, 60),
        seed=5,
        science_fwhm_pix=3.2,
        template_fwhm_pix=4.4,
        template_noise_ratio=0.6,
    )
    diff = _run(pair)
    assert diff.convolved == "science"
    free = _source_free(pair, diff.mask)
    z = diff.image[free] / np.sqrt(diff.variance[free])
    assert abs(np.std(z) - 1.0) < 0.10
    tx, ty = np.asarray(pair.transients["x"]), np.asarray(pair.transients["y"])
    table = diff.psf.phase_table(12, tx, ty)
    flux, err, _ = psf_fluxes(diff.image, diff.variance, diff.mask != 0, tx, ty, table)
    truth = np.asarray(pair.transients["flux"])
    assert abs(np.median(flux / truth) - 1.0) < 0.03
    assert 0.8 < np.std((flux - truth) / err) < 1.25
    # The difference's PSF is the template's, broader than the science PSF.
    assert diff.psf.fwhm_pix == pytest.approx(4.4, rel=0.15)
    dia = detect_dia_sources(diff.image, diff.variance, diff.mask, diff.psf)
    dist, _ = cKDTree(np.column_stack([dia.table["x"], dia.table["y"]])).query(
        np.column_stack([tx, ty])
    )
    assert np.mean(dist < MATCH_RADIUS_PIX) >= 0.95


def test_empty_difference_gives_empty_table_with_columns():
    rng = np.random.default_rng(1)
    image = rng.standard_normal((300, 200)).astype(np.float32)
    pair = simulate_diffim_pair((300, 200), n_stars=0, transient_fluxes=np.zeros(0), seed=1)
    from dcflow.stages.diffim import DiffimPsf

    psf = DiffimPsf(base_psf=pair.science_psf, matching_kernel=None, decorrelation=np.ones((1, 1)))
    res = detect_dia_sources(
        image, np.ones_like(image), np.zeros(image.shape, np.int32), psf,
        config=DiaSourceConfig(threshold_sigma=8.0),
    )  # fmt: skip
    assert len(res.table) == 0
    assert tuple(res.table.colnames) == DIA_SOURCE_COLUMNS
    assert res.n_positive == res.n_negative == res.n_dipoles == 0


def test_validation_errors():
    pair = simulate_diffim_pair((200, 150), n_stars=2, transient_fluxes=np.zeros(0), seed=2)
    ok = np.zeros((200, 150), dtype=np.int32)
    args = dict(
        science_zero_point=30.0,
        template_zero_point=31.4,
        science_psf=pair.science_psf,
        template_fwhm_pix=3.4,
    )
    sci, var = pair.science, pair.science_variance
    with pytest.raises(ValueError, match="template shape"):
        subtract_images(sci, var, ok, sci[:, :100], var, ok, **args)
    with pytest.raises(ValueError, match="science must be 2-d"):
        subtract_images(sci[0], var, ok, sci, var, ok, **args)
    with pytest.raises(ValueError, match="science_mask must hold integer MaskPlane bits"):
        subtract_images(sci, var, ok.astype(float), sci, var, ok, **args)
    with pytest.raises(ValueError, match="template_zero_point must be finite"):
        subtract_images(sci, var, ok, sci, var, ok, **{**args, "template_zero_point": np.nan})
    with pytest.raises(ValueError, match="template_fwhm_pix must be finite and > 0"):
        subtract_images(sci, var, ok, sci, var, ok, **{**args, "template_fwhm_pix": 0.0})
    with pytest.raises(CalibrationError, match="kernel stars left"):
        subtract_images(sci, var, ok, pair.template, pair.template_variance, ok, **args)
    no_data = np.full(ok.shape, int(MaskPlane.NO_DATA), dtype=np.int32)
    with pytest.raises(InputDataError, match="template has no usable pixel"):
        subtract_images(sci, var, ok, sci, var, no_data, **args)
    bad = np.full(ok.shape, int(MaskPlane.BAD), dtype=np.int32)
    with pytest.raises(InputDataError, match="science image has no usable pixel"):
        subtract_images(sci, var, bad, sci, var, ok, **args)
    with pytest.raises(ValueError, match="template_regions shape"):
        subtract_images(sci, var, ok, sci, var, ok, **args, template_regions=ok[:, :100])
    with pytest.raises(ValueError, match="template_regions must hold integer labels"):
        subtract_images(sci, var, ok, sci, var, ok, **args, template_regions=ok.astype(float))
    with pytest.raises(ValueError, match="one entry per basis_sigma_factors"):
        DiffimConfig(basis_degrees=(4, 2))
    with pytest.raises(ValueError, match=r"DiffimConfig\.spatial_order must be <= 4"):
        DiffimConfig(spatial_order=5)
    with pytest.raises(ValueError, match=r"DiaSourceConfig\.threshold_sigma must be >= 3"):
        DiaSourceConfig(threshold_sigma=2.0)


def test_dia_validation_errors():
    from dcflow.stages.diffim import DiffimPsf

    pair = simulate_diffim_pair((50, 40), n_stars=0, transient_fluxes=np.zeros(0), seed=1)
    psf = DiffimPsf(base_psf=pair.science_psf, matching_kernel=None, decorrelation=np.ones((1, 1)))
    img = np.zeros((50, 40), np.float32)
    with pytest.raises(ValueError, match="image must be 2-d"):
        detect_dia_sources(img[0], img, img.astype(np.int32), psf)
    with pytest.raises(ValueError, match="variance shape"):
        detect_dia_sources(img, img[:10], img.astype(np.int32), psf)
    with pytest.raises(ValueError, match="mask must hold integer MaskPlane bits"):
        detect_dia_sources(img, img, img, psf)
    with pytest.raises(ValueError, match="no finite positive pixel"):
        detect_dia_sources(img, np.full_like(img, np.inf), img.astype(np.int32), psf)


def test_subtract_exposures_reads_headers():
    """The Exposure entry point takes zero points and PSFs from the headers, as the script will."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from dcflow.exposure import Exposure
    from dcflow.stages.diffim import subtract_exposures

    shape = (500, 380)
    pair = simulate_diffim_pair(shape, n_stars=120, transient_fluxes=np.full(10, 8000.0), seed=7)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [53.0, -28.0]
    wcs.wcs.crpix = [190.0, 250.0]
    wcs.wcs.cd = [[-0.187 / 3600, 0.0], [0.0, 0.187 / 3600]]
    mask = np.zeros(shape, dtype=np.int32)
    sci_header = fits.Header({"ZP": pair.science_zero_point})
    for key, value in pair.science_psf.to_header().items():
        sci_header[key] = value
    centre = pair.template_psf.psf_at(190, 250)
    tmpl_header = fits.Header({"ZP": pair.template_zero_point, "PSFFWHM": centre.fwhm_pix * 0.187})
    calexp = Exposure(pair.science, mask, pair.science_variance, wcs, sci_header)
    template = Exposure(pair.template, mask, pair.template_variance, wcs, tmpl_header)
    diff = subtract_exposures(calexp, template)
    assert diff.convolved == "template"
    assert abs(diff.kernel.kernel_sum - 1.0) < 0.03
    del tmpl_header["PSFFWHM"]
    with pytest.raises(InputDataError, match="template header lacks PSFFWHM"):
        subtract_exposures(calexp, template)
    with pytest.raises(InputDataError, match="template shape"):
        subtract_exposures(calexp, Exposure(pair.template[:10], mask[:10], mask[:10]))


def test_masked_science_pixels_are_zeroed_and_flagged():
    """A cosmic ray next to a transient flags it; saturated star cores are not detected."""
    shape = (600, 400)
    pair = simulate_diffim_pair(shape, n_stars=150, transient_fluxes=np.full(12, 8000.0), seed=8)
    mask = np.zeros(shape, dtype=np.int32)
    t0 = pair.transients[0]
    cr = (round(t0["y"]) + 2, round(t0["x"]))
    mask[cr] = int(MaskPlane.CR)
    bright = pair.stars[np.argmax(pair.stars["flux"])]
    sy, sx = round(bright["y"]), round(bright["x"])
    mask[sy - 1 : sy + 2, sx - 1 : sx + 2] = int(MaskPlane.SAT)
    centre = pair.template_psf.psf_at(200, 300)
    diff = subtract_images(
        pair.science, pair.science_variance, mask,
        pair.template, pair.template_variance, np.zeros(shape, dtype=np.int32),
        science_zero_point=pair.science_zero_point,
        template_zero_point=pair.template_zero_point,
        science_psf=pair.science_psf, template_fwhm_pix=centre.fwhm_pix,
    )  # fmt: skip
    assert diff.image[cr] == 0.0 and np.all(diff.image[sy - 1 : sy + 2, sx - 1 : sx + 2] == 0.0)
    assert diff.mask[cr[0] + 3, cr[1]] & int(MaskPlane.SUSPECT)
    tab = detect_dia_sources(diff.image, diff.variance, diff.mask, diff.psf).table
    near_t0 = np.hypot(tab["x"] - t0["x"], tab["y"] - t0["y"]) < MATCH_RADIUS_PIX
    assert near_t0.sum() == 1
    assert tab["flags"][near_t0][0] & int(DiaSourceFlag.BAD_PIXELS)
    near_star = np.hypot(tab["x"] - bright["x"], tab["y"] - bright["y"]) < 5
    flagged = int(DiaSourceFlag.SATURATED | DiaSourceFlag.BAD_PIXELS)
    assert np.all(tab["flags"][near_star] & flagged)


def test_template_input_regions_get_their_own_kernel_shape():
    """A template whose PSF jumps (another set of coadd inputs) subtracts on both sides."""
    shape = (1100, 700)
    kwargs = dict(n_stars=300, transient_fluxes=np.zeros(0), seed=5)
    pair = simulate_diffim_pair(shape, template_fwhm_pix=3.4, **kwargs)
    sharper = simulate_diffim_pair(shape, template_fwhm_pix=2.4, **kwargs)
    right = np.zeros(shape, dtype=bool)
    right[:, 420:] = True
    template = np.where(right, sharper.template, pair.template)
    template_variance = np.where(right, sharper.template_variance, pair.template_variance)
    mask = np.zeros(shape, dtype=np.int32)
    x, y = np.asarray(pair.stars["x"]), np.asarray(pair.stars["y"])
    inner = (x > 40) & (x < shape[1] - 40) & (y > 40) & (y < shape[0] - 40) & (abs(x - 420) > 15)
    x, y = x[inner], y[inner]
    rms = {}
    for name, labels in (("one kernel", None), ("regions", np.where(right, 7, 3))):
        diff = subtract_images(
            pair.science, pair.science_variance, mask, template, template_variance, mask,
            science_zero_point=pair.science_zero_point,
            template_zero_point=pair.template_zero_point,
            science_psf=pair.science_psf, template_fwhm_pix=3.4, template_regions=labels,
        )  # fmt: skip
        table = diff.psf.phase_table(12, x, y)
        flux, err, _ = psf_fluxes(diff.image, diff.variance, diff.mask != 0, x, y, table)
        chi = flux / err
        rms[name] = (np.std(chi[x < 420]), np.std(chi[x > 420]))
        # PSFs that vary across 300 stars: the quadratic kernel predicts left-out stars best
        # (order 1 left chi rms 2.3 here)
        assert diff.kernel.spatial_order == 2
    # measured: one smooth kernel leaves chi rms 5.8 on the sharper side, offsets 1.2
    assert rms["one kernel"][1] > 3.0, rms
    assert max(rms["regions"]) < 1.6, rms


def test_few_kernel_stars_lower_the_spatial_order():
    """A sparse field gets a spatially constant kernel rather than no difference image."""
    pair = simulate_diffim_pair((300, 300), n_stars=8, transient_fluxes=np.zeros(0), seed=5)
    ok = np.zeros((300, 300), dtype=np.int32)
    result = subtract_images(
        pair.science,
        pair.science_variance,
        ok,
        pair.template,
        pair.template_variance,
        ok,
        science_zero_point=30.0,
        template_zero_point=30.0,
        science_psf=pair.science_psf,
        template_fwhm_pix=3.4,
    )
    assert result.kernel.spatial_order == 0
    assert 3 <= result.kernel.n_stars < 9


def test_registration_noise_measured_and_kept_out_of_the_dia_sources():
    """Stars shifted at random (0.05 pixel rms) leave dipoles that no kernel removes.

    The registration measures that rms on the kernel stars, and DIASource detection adds it
    to the PSF-flux errors: the stars' residuals drop below 5 sigma, the transients stay.
    """
    shape = (620, 460)
    pair = simulate_diffim_pair(
        shape, n_stars=220, transient_fluxes=np.full(12, 6000.0), seed=3,
        star_jitter_pix=0.05, star_flux_range_e=(2e3, 2e6),
    )  # fmt: skip
    ok = np.zeros(shape, np.int32)
    tx, ty = np.asarray(pair.transients["x"]), np.asarray(pair.transients["y"])
    found = {}
    for register in (False, True):
        diff = subtract_images(
            pair.science, pair.science_variance, ok, pair.template, pair.template_variance, ok,
            science_zero_point=pair.science_zero_point,
            template_zero_point=pair.template_zero_point, science_psf=pair.science_psf,
            template_fwhm_pix=3.4, config=DiffimConfig(register_on_stars=register),
        )  # fmt: skip
        reg = diff.registration
        assert (reg is not None) == register
        table = detect_dia_sources(
            diff.image, diff.variance, diff.mask, diff.psf,
            subtracted_template=diff.subtracted_template,
            shift_rms_pix=reg.shift_rms_pix if reg else 0.0,
            flux_rms=reg.flux_rms if reg else 0.0,
        ).table  # fmt: skip
        d = np.hypot(np.asarray(table["x"])[:, None] - tx, np.asarray(table["y"])[:, None] - ty)
        hit = d.min(axis=0) < 1.5
        ratio = np.asarray(table["psf_flux"])[d.argmin(axis=0)][hit] / 6000.0
        found[register] = (int((d.min(axis=1) > 3).sum()), int(hit.sum()), np.median(ratio))
    # measured: shift noise 0.073 pixel; false DIASources 140 -> 20, all 12 transients kept
    assert found[True][0] < found[False][0] / 3, found
    assert 0.03 < reg.shift_rms_pix < 0.09, reg
    assert found[True][1] == found[False][1] == len(tx), found
    assert abs(found[True][2] - found[False][2]) < 0.005, found  # the fluxes are unchanged
    with pytest.raises(ValueError, match="shift_rms_pix must be finite and >= 0"):
        detect_dia_sources(diff.image, diff.variance, diff.mask, diff.psf, shift_rms_pix=-1.0)
    with pytest.raises(ValueError, match="subtracted_template shape"):
        detect_dia_sources(
            diff.image, diff.variance, diff.mask, diff.psf, subtracted_template=ok[:10]
        )
