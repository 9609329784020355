"""deepCoadd / templateCoadd: depth, artefact rejection, PSF, template selection, validation."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
from coadd_synthetic import (
    PATCH,
    PATCH_WCS,
    artefact_pixels,
    default_visits,
    equal_visits,
    make_truth,
    render_calexp,
    visit_wcs,
    warped_field,
)

from dcflow.configs import dataclass_schema
from dcflow.errors import InputDataError, StageError
from dcflow.exposure import MaskPlane
from dcflow.stages.coadd import (
    CoaddConfig,
    TemplateSelectionConfig,
    assemble_coadd,
    assemble_template_alternates,
    assemble_template_coadd,
    observing_nights,
    select_template_inputs,
)
from dcflow.stages.forced_photometry import MixturePsf, mixture_fwhm, psf_photometry
from dcflow.stages.warp import warp_exposure


@functools.lru_cache(maxsize=1)
def blank_warps(n: int = 4):
    truth = make_truth(1)[:0]
    return [
        warp_exposure(render_calexp(truth, spec, seed=7), PATCH_WCS, PATCH.shape).warp
        for spec in equal_visits(n)
    ]


def limiting_magnitude(coadd) -> tuple[float, float]:
    """5-sigma point-source depth: empirical (PSF fluxes on blank sky) and from variance."""
    psf = MixturePsf.from_header(coadd.header, 0.2)
    grid = np.arange(24, PATCH.shape[0] - 24, 12, dtype=float)
    gx, gy = np.meshgrid(grid + 0.3, grid - 0.2)
    flux, err, flag = psf_photometry(coadd, gx.ravel(), gy.ravel(), psf, radius_pix=9)
    assert not flag.any()
    zp = coadd.header["ZP"]
    empirical = zp - 2.5 * np.log10(5 * np.std(flux))
    predicted = zp - 2.5 * np.log10(5 * np.median(err))
    return empirical, predicted


def test_depth_gain_of_n_equal_visits():
    warps = blank_warps(4)
    one = assemble_coadd(warps[:1]).coadd
    four = assemble_coadd(warps).coadd
    m1_emp, m1_var = limiting_magnitude(one)
    m4_emp, m4_var = limiting_magnitude(four)
    expected = 1.25 * np.log10(4)
    assert m4_emp - m1_emp == pytest.approx(expected, abs=0.1)
    assert m4_var - m1_var == pytest.approx(expected, abs=0.1)
    # Interpolation correlates warp noise: the variance plane may overstate PSF-flux noise a
    # little (the depth from it is shallower), never understate it by much.
    assert -0.05 < m1_emp - m1_var < 0.25


def artefact_patch_pixels(spec):
    ax, ay, _ = artefact_pixels(spec)
    ra, dec = visit_wcs(spec).pixel_to_world_values(ax, ay)
    px, py = PATCH_WCS.world_to_pixel_values(ra, dec)
    ix, iy = np.round(px).astype(int), np.round(py).astype(int)
    on = (ix >= 0) & (ix < PATCH.shape[1]) & (iy >= 0) & (iy < PATCH.shape[0])
    return ix[on], iy[on]


@pytest.mark.parametrize("rejection", ["compare_warp", "sigma_clip"])
def test_trail_and_cosmic_rays_absent_from_coadd_present_in_warp(rejection):
    field = warped_field()
    spec = next(s for s in field.specs if s.artefacts)
    warp = field.warps[field.specs.index(spec)]
    ix, iy = artefact_patch_pixels(spec)
    assert len(ix) > 100
    warp_snr = warp.image[iy, ix] / np.sqrt(warp.variance[iy, ix])
    assert np.median(warp_snr) > 8  # present in the warp

    config = CoaddConfig(rejection=rejection)
    with_art = assemble_coadd(field.for_filter("r"), config=config).coadd
    clean = assemble_coadd(field.for_filter("r", clean=True), config=config).coadd
    sigma = np.sqrt(clean.variance[iy, ix])
    diff = (with_art.image[iy, ix] - clean.image[iy, ix]) / sigma
    assert np.max(np.abs(diff)) < 6.0  # absent from the coadd (pixel test)
    assert np.mean((with_art.mask[iy, ix] & MaskPlane.CLIPPED) != 0) > 0.95
    # Without rejection they survive: the test can see them.
    plain = assemble_coadd(field.for_filter("r"), config=CoaddConfig(rejection="none")).coadd
    assert np.max((plain.image[iy, ix] - clean.image[iy, ix]) / sigma) > 20


def test_compare_warp_keeps_star_cores_despite_seeing_differences():
    field = warped_field()
    result = assemble_coadd(field.for_filter("r", clean=True))
    # Only the variable star (30 % amplitude) may be clipped in a clean field.
    truth = field.truth
    var = truth[truth["kind"] == "variable"][0]
    vx, vy = PATCH_WCS.world_to_pixel_values(var["ra_deg"], var["dec_deg"])
    clipped = np.nonzero(result.coadd.mask & MaskPlane.CLIPPED)
    if clipped[0].size:
        dist = np.hypot(clipped[1] - vx, clipped[0] - vy)
        assert dist.max() < 8
    sigma_clip = assemble_coadd(
        field.for_filter("r", clean=True), config=CoaddConfig(rejection="sigma_clip")
    )
    assert sum(sigma_clip.n_clipped_pixels) > 5 * max(1, sum(result.n_clipped_pixels))


def test_coadd_planes_weights_and_psf():
    field = warped_field()
    warps = field.for_filter("r")
    result = assemble_coadd(warps)
    assert result.visits == tuple(s.visit for s in field.specs if s.filter == "r")
    assert sum(result.weights) == pytest.approx(1.0)
    inv_var = [1 / np.median(w.variance[w.mask == 0]) for w in warps]
    assert np.allclose(result.weights, np.array(inv_var) / np.sum(inv_var), rtol=0.02)
    assert result.n_inputs.max() == len(warps)
    centre = result.n_inputs[60:180, 60:180]
    assert centre.min() >= len(warps) - 1  # one visit may be clipped, none missing
    fwhm = [s.fwhm_arcsec for s in field.specs if s.filter == "r"]
    assert min(fwhm) < result.psf_fwhm_arcsec < max(fwhm)
    assert result.coadd.header["PSFNCOMP"] == len(warps)
    # Equal FWHMs: the mixture is that FWHM; two very different ones: between them.
    assert mixture_fwhm([1.0, 1.0], [0.3, 0.7]) == pytest.approx(1.0)
    assert 1.0 < mixture_fwhm([1.0, 2.0], [0.5, 0.5]) < 2.0
    assert mixture_fwhm([1.0, 1.0], [0.5, 0.5], [3.0, 0.0]) == pytest.approx(1.0)
    # Coadd variance from the propagated weights: N equal visits -> variance / N.
    blank = blank_warps(4)
    coadd = assemble_coadd(blank).coadd
    assert np.median(coadd.variance[60:180, 60:180]) == pytest.approx(
        np.median(blank[0].variance[60:180, 60:180]) / 4, rel=0.02
    )


def test_no_data_where_no_warp_covers():
    warps = blank_warps(4)
    for w in warps:
        assert not np.any(w.mask[:, :5] & MaskPlane.NO_DATA)
    # Mark the left 10 columns NO_DATA in every warp (copies).
    masked = [replace(w, mask=w.mask.copy()) for w in warps]
    for w in masked:
        w.mask[:, :10] |= int(MaskPlane.NO_DATA)
    result = assemble_coadd(masked, config=CoaddConfig(block_rows=64))
    assert np.all(result.coadd.mask[:, :10] & MaskPlane.NO_DATA)
    assert np.all(np.isnan(result.coadd.image[:, :10]))
    assert np.all(result.n_inputs[:, :10] == 0)
    assert np.all(result.n_inputs[:, 12:] == 4)


def test_block_processing_matches_single_block():
    field = warped_field()
    whole = assemble_coadd(field.for_filter("r"), config=CoaddConfig(block_rows=1024))
    blocks = assemble_coadd(field.for_filter("r"), config=CoaddConfig(block_rows=48))
    assert np.array_equal(whole.coadd.mask, blocks.coadd.mask)
    np.testing.assert_allclose(whole.coadd.image, blocks.coadd.image, rtol=1e-5, atol=1e-3)


def test_template_uses_exactly_the_allowed_visits():
    field = warped_field()
    warps = field.for_filter("r")
    specs = [s for s in field.specs if s.filter == "r"]
    selection = TemplateSelectionConfig(max_psf_fwhm_arcsec=0.9, max_airmass=1.2)
    expected = [s.visit for s in specs if s.fwhm_arcsec <= 0.9 and s.airmass <= 1.2]
    assert expected == [1000, 1002, 1004, 1005, 1007]  # 1005 sits on both limits
    result = assemble_template_coadd(warps, selection=selection)
    assert list(result.visits) == expected
    mask = select_template_inputs([0.7, 0.95, 0.9], [1.0, 1.0, 1.21], config=selection)
    assert mask.tolist() == [True, False, False]
    assert result.coadd.header["TMPLFALL"] is False and result.coadd.header["TMPLNSEL"] == 5
    strict = TemplateSelectionConfig(0.9, 1.2, min_visits=6, fallback=False)
    with pytest.raises(StageError, match=r"only 5 of 8 visits pass.*fallback is off") as info:
        assemble_template_coadd(warps, selection=strict)
    assert info.value.metadata == {"n_selected": 5, "n_candidates": 8, "min_visits": 6}
    with pytest.raises(StageError, match="only 5 of 8 visits pass"):
        assemble_template_coadd(warps, selection=TemplateSelectionConfig(0.9, 1.2, min_visits=9))


def test_template_falls_back_to_the_best_ranked_visits_and_says_so():
    """No visit passes (as for the demo's g band: airmass up to 1.5 against a 1.3 cut): the
    template is built from the min_visits best-ranked visits, flagged, and is not empty."""
    field = warped_field()
    warps = field.for_filter("r")
    specs = [s for s in field.specs if s.filter == "r"]
    selection = TemplateSelectionConfig(max_psf_fwhm_arcsec=0.3, max_airmass=1.0, min_visits=3)
    score = [max(s.fwhm_arcsec / 0.3, s.airmass / 1.0) for s in specs]
    ranked = [specs[i].visit for i in np.lexsort(([s.fwhm_arcsec for s in specs], score))]
    result = assemble_template_coadd(warps, selection=selection)
    assert sorted(result.visits) == sorted(ranked[:3])
    assert result.coadd.header["TMPLFALL"] is True and result.coadd.header["TMPLNSEL"] == 0
    assert np.isfinite(result.coadd.image).mean() > 0.9


def test_observing_nights_split_at_the_boundary_hour():
    # 22:48 UTC and 12:00 UTC next day share the night of 60000; 22:05 UTC begins 60001
    nights = observing_nights([60000.95, 60001.5, 60001.92], boundary_utc_hours=22.0)
    assert nights.tolist() == [60000, 60000, 60001]
    assert observing_nights([60001.49, 60001.5], boundary_utc_hours=12.0).tolist() == [60000, 60001]
    with pytest.raises(ValueError, match="boundary_utc_hours must be in"):
        observing_nights([60000.0], boundary_utc_hours=25.0)
    with pytest.raises(ValueError, match="mjd must be finite"):
        observing_nights([np.nan])


def _with_night(warp, mjd):
    header = warp.header.copy()
    header["MJD-OBS"] = mjd
    return replace(warp, header=header)


def test_alternate_templates_leave_out_each_template_night():
    """Per night holding template inputs, a template of the other nights' selected visits."""
    field = warped_field()
    specs = [s for s in field.specs if s.filter == "r"]
    # four nights of two visits 30 minutes apart (13:00 UTC, in the night that began at
    # 22:00 UTC the day before), the last visit without a time
    warps = [
        _with_night(w, 60000.54 + k // 2 + (k % 2) / 48.0)
        for k, w in enumerate(field.for_filter("r"))
    ]
    header = warps[-1].header.copy()
    del header["MJD-OBS"]
    warps[-1] = replace(warps[-1], header=header)
    selection = TemplateSelectionConfig(max_psf_fwhm_arcsec=0.9, max_airmass=1.2)
    template = assemble_template_coadd(warps, selection=selection)
    assert list(template.visits) == [1000, 1002, 1004, 1005, 1007]
    alternates = assemble_template_alternates(warps, template.visits, selection=selection)
    night_visits = {59999: (1000, 1001), 60000: (1002, 1003), 60001: (1004, 1005)}
    assert [a.night for a in alternates] == sorted(night_visits)  # 1007 has no night
    for alternate in alternates:
        assert alternate.excluded_visits == night_visits[alternate.night]
        expected = [
            s.visit for s in specs
            if s.visit not in alternate.excluded_visits and s.fwhm_arcsec <= 0.9
            and s.airmass <= 1.2
        ]  # fmt: skip
        assert list(alternate.coadd.visits) == expected
        header = alternate.coadd.coadd.header
        assert header["ALTNIGHT"] == alternate.night
        assert [header[f"EXCL{i}"] for i in range(header["NEXCL"])] == list(
            alternate.excluded_visits
        )
    # one night only: nothing to build an alternate from
    same_night = [_with_night(w, 60000.54 + k / 96.0) for k, w in enumerate(warps[:3])]
    assert assemble_template_alternates(same_night, (1000,), selection=selection) == ()
    # the other nights cannot make a template and the fallback is off: none, not a failure
    strict = TemplateSelectionConfig(0.9, 1.2, min_visits=5, fallback=False)
    assert assemble_template_alternates(warps, template.visits, selection=strict) == ()


def test_validation_errors():
    warps = blank_warps(4)
    with pytest.raises(InputDataError, match="no warps"):
        assemble_coadd([])
    from dataclasses import replace

    small = replace(
        warps[0],
        image=warps[0].image[:10],
        mask=warps[0].mask[:10],
        variance=warps[0].variance[:10],
    )
    with pytest.raises(ValueError, match=r"warps\[1\] shape \(10, 240\) differs"):
        assemble_coadd([warps[0], small])
    other_zp = replace(warps[1], header=warps[1].header.copy())
    other_zp.header["ZP"] = 27.0
    with pytest.raises(InputDataError, match="must share one zero point"):
        assemble_coadd([warps[0], other_zp])
    no_am = replace(warps[1], header=warps[1].header.copy())
    del no_am.header["AIRMASS"]
    with pytest.raises(InputDataError, match=r"warps\[0\] header lacks AIRMASS"):
        assemble_template_coadd([no_am])
    with pytest.raises(ValueError, match="rejection must be one of"):
        CoaddConfig(rejection="median")
    with pytest.raises(ValueError, match="bad_mask_planes must be one of"):
        CoaddConfig(bad_mask_planes=("BAD", "HOT"))
    with pytest.raises(ValueError, match=r"max_airmass must be >= 1\.0"):
        TemplateSelectionConfig(max_airmass=0.5)
    with pytest.raises(ValueError, match="must be 1-d of one length"):
        select_template_inputs([1.0], [1.0, 1.1])


def test_config_schema_matches_dataclass():
    schema = dataclass_schema(CoaddConfig)
    assert schema["properties"]["rejection"]["default"] == "compare_warp"
    assert schema["properties"]["bad_mask_planes"]["default"] == ["BAD", "SAT", "CR", "NO_DATA"]
    assert set(schema["properties"]["bad_mask_planes"]["items"]["enum"]) == {
        p.name for p in MaskPlane
    }
    assert default_visits()[2].artefacts


def test_warps_without_coverage_are_skipped():
    warps = blank_warps(4)
    no_data = np.full(PATCH.shape, int(MaskPlane.NO_DATA), dtype=np.int32)
    empty = replace(warps[0], mask=no_data, header=warps[0].header.copy())
    empty.header["VISIT"] = 4242
    result = assemble_coadd([*warps[:2], empty])
    assert 4242 not in result.visits and len(result.visits) == 2
    nothing = assemble_coadd([empty])
    assert nothing.visits == () and nothing.coadd.header["NINPUTS"] == 0
    assert np.all(nothing.coadd.mask & MaskPlane.NO_DATA) and np.all(nothing.n_inputs == 0)


ALL_CONFIGS = [
    "dcflow.campaign.skymap:SkyMapConfig",
    "dcflow.stages.warp:WarpConfig",
    "dcflow.stages.coadd:CoaddConfig",
    "dcflow.stages.coadd:TemplateSelectionConfig",
    "dcflow.stages.multiband:MultibandConfig",
    "dcflow.stages.coadd_measurement:CoaddMeasurementConfig",
    "dcflow.stages.forced_photometry:ForcedPhotometryConfig",
]


@pytest.mark.parametrize("spec", ALL_CONFIGS)
def test_every_config_schema_validates_its_defaults(spec):
    import dataclasses
    import importlib

    import jsonschema

    module, name = spec.split(":")
    cls = getattr(importlib.import_module(module), name)
    schema = dataclass_schema(cls)
    defaults = {
        f.name: list(f.default) if isinstance(f.default, tuple) else f.default
        for f in dataclasses.fields(cls)
    }
    assert set(schema["properties"]) == set(defaults)
    jsonschema.validate(defaults, schema)
    for field in dataclasses.fields(cls):
        assert field.metadata["doc"]  # every field documented
        assert schema["properties"][field.name]["default"] == defaults[field.name]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**defaults, "no_such_key": 1}, schema)
