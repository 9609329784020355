"""One CCD's alert production: template warped onto the calexp, difference, DIASources.

The templateCoadd patches that overlap a calexp are resampled onto the calexp's pixel grid
with the warp stage's resampling (`dcflow.stages.warp.warp_exposure`, whose target may be any
WCS and shape) and pasted together (patches overlap only in their borders, where both hold the
same coadd). `dcflow.stages.diffim.subtract_exposures` then makes the difference and
`dcflow.stages.dia_sources.detect_dia_sources` its DIASources, which are given sky positions
and the Rubin DiaSource column names, with fluxes in nJy so that visits of different zero
points share one scale (the light-curve summaries of `dcflow.stages.dia_association` average
them).

A visit is differenced against a template that does not hold its own night: where the
templateCoadd of a patch has inputs from that night, `templates_for_visit` takes the patch's
other-nights alternate instead (`dcflow.stages.coadd.assemble_template_alternates`). A visit
in its own template would show its transients and movers at a fraction of their flux.

A CCD that no template covers is not an error: the result says ``NO_TEMPLATE``, the
difference is all ``NO_DATA`` and the diaSrc table is empty (with all its columns). Template
pixels whose only input is the visit being differenced do not count as template (the
difference would hide every transient), so a CCD covered only by them, or left with too
little template to match the PSFs on, is ``NO_TEMPLATE`` too, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.wcs.utils import proj_plane_pixel_area

from dcflow.errors import CalibrationError, InputDataError
from dcflow.exposure import Exposure, MaskPlane, header_number
from dcflow.stages.dia_sources import (
    DIA_SOURCE_COLUMNS,
    DiaSourceConfig,
    DiaSourceFlag,
    detect_dia_sources,
)
from dcflow.stages.diffim import DiffimConfig, subtract_exposures
from dcflow.stages.warp import WarpConfig, warp_exposure

__all__ = [
    "DIA_SOURCE_CATALOG_COLUMNS",
    "NJY_ZERO_POINT_MAG",
    "AlertProductionResult",
    "TemplateOnCalexp",
    "dia_source_catalog",
    "dia_source_ids",
    "run_alert_production",
    "template_on_calexp",
    "templates_for_visit",
]

log = logging.getLogger(__name__)

NJY_ZERO_POINT_MAG = 31.4
"""AB magnitude of 1 nJy: the zero point of every flux of the diaSrc table."""

DIA_SOURCE_CATALOG_COLUMNS = (
    "diaSourceId",
    "visit",
    "ccd",
    "band",
    "midpointMjdTai",
    "ra",
    "dec",
    "raErr",
    "decErr",
    "x",
    "y",
    "xErr",
    "yErr",
    "psfFlux",
    "psfFluxErr",
    "snr",
    "significance",
    "isNegative",
    "isDipole",
    "psfChi2",
    "flags",
    "reliability",
)
"""Columns of the diaSrc table (Rubin DiaSource names), in order."""

_ROWS_PER_CCD = 100_000
_CCDS_PER_VISIT = 1000


@dataclass(frozen=True, slots=True)
class TemplateOnCalexp:
    """The templateCoadd resampled onto a calexp's grid.

    Attributes
    ----------
    template : Exposure or None
        On the calexp's grid (``NO_DATA`` where no patch covers), header ``ZP`` and
        ``PSFFWHM`` (coverage-weighted over the patches); None when no patch covers the CCD.
    n_covered_pixels : int
        Calexp pixels with template data.
    n_patches : int
        Patches that contributed pixels.
    visits : tuple of int
        Input visits of those patches (header ``VISIT<i>`` cards of the coadds).
    input_sets : numpy.ndarray or None
        ``(ny, nx)`` int32 label of the set of input visits covering each calexp pixel (0:
        unknown), from the coadds' coverage maps; None when none was given.
    input_set_visits : tuple of tuple of int
        The visits of each label: label ``k`` is ``input_set_visits[k - 1]``.
    """

    template: Exposure | None
    n_covered_pixels: int
    n_patches: int
    visits: tuple[int, ...] = ()
    input_sets: np.ndarray | None = None
    input_set_visits: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class AlertProductionResult:
    """deepDiff and diaSrc of one CCD.

    Attributes
    ----------
    deep_diff : Exposure
        The difference (image, mask, variance; calexp WCS) with header ``DIASTAT``,
        ``TMPLCOV`` (template-covered fraction), ``DIFFCONV``, ``TMPLSCAL``, ``NOISERAT``,
        ``TMPLSELF`` (the visit is one of the template's inputs), ``TMPLALT`` (the night left
        out of an other-nights template, -1 for the templateCoadd) and the template's input
        visits (``TMPLNVIS``, ``TMPLV<i>``).
    psf_image : numpy.ndarray
        The difference's PSF at the CCD centre (unit sum; a zero-size array with no template).
    dia_sources : astropy.table.Table
        diaSrc rows (`DIA_SOURCE_CATALOG_COLUMNS`).
    status : str
        ``OK`` or ``NO_TEMPLATE``.
    noise_ratio : float
        Robust rms of ``image / sqrt(variance)`` away from sources (1 for a true variance
        plane; NaN with no template).
    """

    deep_diff: Exposure
    psf_image: np.ndarray
    dia_sources: Table
    status: str
    noise_ratio: float


def template_on_calexp(
    calexp: Exposure,
    templates: Sequence[Exposure],
    *,
    coverages: Sequence[np.ndarray] | None = None,
    config: WarpConfig | None = None,
) -> TemplateOnCalexp:
    """Resample the templateCoadd patches onto a calexp's pixel grid.

    Parameters
    ----------
    calexp : Exposure
        The calexp (its WCS and shape are the target).
    templates : sequence of Exposure
        templateCoadd patches with a WCS, ``ZP`` and ``PSFFWHM`` (a patch without inputs,
        ``PSFFWHM`` 0, is skipped).
    coverages : sequence of numpy.ndarray, optional
        One per template: its ``(n_inputs, ncy, ncx)`` coverage map (the coadd's
        ``COVERAGE`` plane: fraction of each ``COVBIN``-pixel cell where each input was
        used), giving `TemplateOnCalexp.input_sets`.
    config : WarpConfig, optional
        Interpolation; its ``zero_point_mag`` is replaced by the templates' own.

    Returns
    -------
    TemplateOnCalexp
        The template on the calexp grid, or None in it when nothing covers the calexp.

    Raises
    ------
    InputDataError
        If the calexp has no WCS, or a template lacks ``ZP`` or ``PSFFWHM``.
    ValueError
        If ``coverages`` does not hold one 3-d map per template.
    """
    config = config or WarpConfig()
    if calexp.wcs is None:
        raise InputDataError("calexp has no WCS: the template cannot be resampled onto it")
    if coverages is not None and (
        len(coverages) != len(templates) or any(np.ndim(c) != 3 for c in coverages)
    ):
        raise ValueError(
            f"coverages must hold one (n_inputs, ncy, ncx) map per template ({len(templates)}); "
            f"got shapes {[np.shape(c) for c in coverages]}"
        )
    input_sets = None if coverages is None else np.zeros(calexp.shape, dtype=np.int32)
    set_labels: dict[frozenset[int], int] = {}
    image = np.zeros(calexp.shape, dtype=np.float32)
    variance = np.zeros(calexp.shape, dtype=np.float32)
    mask = np.full(calexp.shape, int(MaskPlane.NO_DATA), dtype=np.int32)
    covered = np.zeros(calexp.shape, dtype=bool)
    fwhm_weight = 0.0
    fwhm_sum = 0.0
    zero_point = None
    n_patches = 0
    visits: set[int] = set()
    for index, template in enumerate(templates):
        fwhm = header_number(template.header, "PSFFWHM", f"templates[{index}]")
        zp = header_number(template.header, "ZP", f"templates[{index}]")
        if fwhm <= 0 or template.wcs is None:
            continue
        warp_config = WarpConfig(
            interpolation=config.interpolation,
            zero_point_mag=zp,
            interp_length_pixels=config.interp_length_pixels,
        )
        result = warp_exposure(template, calexp.wcs, calexp.shape, config=warp_config)
        if result.n_covered_pixels == 0:
            continue
        new = ((result.warp.mask & int(MaskPlane.NO_DATA)) == 0) & ~covered
        if not new.any():
            continue
        image[new] = result.warp.image[new]
        variance[new] = result.warp.variance[new]
        mask[new] = result.warp.mask[new]
        if input_sets is not None:
            labels = _input_set_labels(calexp, template, coverages[index], set_labels)
            input_sets[new] = labels[new]
        covered |= new
        n_new = int(new.sum())
        fwhm_sum += fwhm * n_new
        fwhm_weight += n_new
        zero_point = zp
        n_patches += 1
        n_inputs = int(template.header.get("NINPUTS", 0))
        visits.update(int(template.header.get(f"VISIT{i}", -1)) for i in range(n_inputs))
    n_covered = int(covered.sum())
    if n_covered == 0:
        return TemplateOnCalexp(None, 0, 0)
    # The propagated variance is kept even though resampling (the coadd's warps, then this
    # one) leaves the template's pixel scatter below it: the decorrelation of the difference
    # uses the template's measured noise correlation (`dcflow.stages.diffim.noise_correlation`).
    # Scaling the plane down to the scatter (as ip_diffim's ScaleVarianceTask would) gave a
    # true per-pixel noise but raised the PSF-scale noise above the plane, and with it the
    # 5-sigma false detections (measured on the demo, visit 1003, two CCDs: 5 false
    # DIASources unscaled and 13 scaled).
    header = calexp.header.copy()
    header["ZP"] = (zero_point, "mag of one template unit")
    header["PSFFWHM"] = (fwhm_sum / fwhm_weight, "template PSF FWHM, arcsec")
    template = Exposure(
        image=image, mask=mask, variance=variance, wcs=calexp.wcs.deepcopy(), header=header
    )
    set_visits = tuple(
        tuple(sorted(members)) for members, _ in sorted(set_labels.items(), key=lambda kv: kv[1])
    )
    return TemplateOnCalexp(
        template, n_covered, n_patches, tuple(sorted(visits - {-1})), input_sets, set_visits
    )


def templates_for_visit(
    visit: int,
    templates: Sequence[Exposure],
    coverages: Sequence[np.ndarray],
    alternates: Sequence[Sequence[tuple[Exposure, np.ndarray]]],
) -> tuple[list[Exposure], list[np.ndarray], tuple[int, ...]]:
    """Per patch, the templateCoadd or, where it holds the visit's night, that night's alternate.

    Parameters
    ----------
    visit : int
        The visit to difference.
    templates : sequence of Exposure
        The templateCoadd of each overlapping patch.
    coverages : sequence of numpy.ndarray
        Their ``COVERAGE`` planes.
    alternates : sequence of sequence of (Exposure, numpy.ndarray)
        Per patch (same order), its other-nights templates with their coverage planes; each
        header lists the visits it leaves out (``NEXCL``, ``EXCL<i>``) and the night
        (``ALTNIGHT``).

    Returns
    -------
    templates, coverages : list
        The chosen template and coverage of each patch.
    alternate_nights : tuple of int
        The night of each alternate chosen (empty: the templateCoadds throughout).

    Raises
    ------
    ValueError
        If the three sequences differ in length.
    """
    if not len(templates) == len(coverages) == len(alternates):
        raise ValueError(
            f"templates, coverages and alternates must have one entry per patch; got "
            f"{len(templates)}, {len(coverages)}, {len(alternates)}"
        )
    chosen, chosen_coverages, nights = [], [], []
    for template, coverage, options in zip(templates, coverages, alternates, strict=True):
        for alternate, alternate_coverage in options:
            header = alternate.header
            excluded = {int(header[f"EXCL{i}"]) for i in range(int(header.get("NEXCL", 0)))}
            if int(visit) in excluded:
                chosen.append(alternate)
                chosen_coverages.append(alternate_coverage)
                nights.append(int(header["ALTNIGHT"]))
                break
        else:
            chosen.append(template)
            chosen_coverages.append(coverage)
    return chosen, chosen_coverages, tuple(sorted(set(nights)))


def _input_set_labels(calexp, template, coverage, set_labels, step=4):
    """Label of the set of input visits covering each calexp pixel (> half its cell).

    Evaluated every ``step`` calexp pixels and repeated: the coverage cells (``COVBIN``,
    8 pixels by default) are as coarse. ``set_labels`` maps visit sets to labels across
    patches and is extended in place.
    """
    ny, nx = calexp.shape
    n_inputs = int(template.header.get("NINPUTS", coverage.shape[0]))
    visits = [int(template.header.get(f"VISIT{i}", -1 - i)) for i in range(n_inputs)]
    bin_pix = int(template.header.get("COVBIN", 1))
    yy, xx = np.mgrid[0:ny:step, 0:nx:step]
    ra, dec = calexp.wcs.celestial.all_pix2world(xx.ravel(), yy.ravel(), 0)
    tx, ty = template.wcs.celestial.all_world2pix(ra, dec, 0)
    cx = np.clip(np.floor(tx / bin_pix).astype(np.int64), 0, coverage.shape[2] - 1)
    cy = np.clip(np.floor(ty / bin_pix).astype(np.int64), 0, coverage.shape[1] - 1)
    covered = np.asarray(coverage)[: len(visits), cy, cx] > 0.5  # (n_inputs, n_points)
    codes = np.zeros(covered.shape[1], dtype=np.int32)
    keys = np.packbits(covered, axis=0, bitorder="little")
    unique, inverse = np.unique(keys, axis=1, return_inverse=True)
    for column in range(unique.shape[1]):
        bits = np.unpackbits(unique[:, column], bitorder="little")[: len(visits)]
        members = frozenset(v for v, on in zip(visits, bits, strict=True) if on)
        if members:
            label = set_labels.setdefault(members, len(set_labels) + 1)
            codes[np.ravel(inverse) == column] = label
    coarse = codes.reshape(yy.shape)
    return np.repeat(np.repeat(coarse, step, axis=0), step, axis=1)[:ny, :nx]


def dia_source_ids(visit: int, ccd: int, n: int) -> np.ndarray:
    """Deterministic ``diaSourceId`` of rows 0..n-1 of one CCD's diaSrc (unique per campaign).

    Raises
    ------
    ValueError
        If ``ccd`` or ``n`` exceed the id's fields.
    """
    if not 0 <= ccd < _CCDS_PER_VISIT:
        raise ValueError(f"ccd must be in 0..{_CCDS_PER_VISIT - 1}; got {ccd}")
    if n >= _ROWS_PER_CCD:
        raise ValueError(f"{n} DIASources on one CCD exceed the id field ({_ROWS_PER_CCD - 1})")
    base = (int(visit) * _CCDS_PER_VISIT + int(ccd)) * _ROWS_PER_CCD
    return base + 1 + np.arange(n, dtype=np.int64)


def dia_source_catalog(
    table: Table,
    calexp: Exposure,
    *,
    visit: int,
    ccd: int,
    band: str,
) -> Table:
    """The diaSrc table: `detect_dia_sources` rows with sky positions, ids and nJy fluxes.

    Parameters
    ----------
    table : astropy.table.Table
        `dcflow.stages.dia_sources.DiaSourceResult.table` (difference-image units).
    calexp : Exposure
        The science calexp: WCS, ``ZP``, ``MJD-OBS`` (start, days) and ``EXPTIME`` (s).
    visit, ccd : int
        Data id.
    band : str
        The visit's filter.

    Returns
    -------
    astropy.table.Table
        Columns `DIA_SOURCE_CATALOG_COLUMNS`, ``meta["ZP"]`` 31.4 (fluxes in nJy).
    """
    n = len(table)
    zero_point = header_number(calexp.header, "ZP", "calexp")
    to_njy = 10.0 ** (-0.4 * (zero_point - NJY_ZERO_POINT_MAG))
    start = header_number(calexp.header, "MJD-OBS", "calexp")
    exptime = header_number(calexp.header, "EXPTIME", "calexp")
    x = np.asarray(table["x"], float)
    y = np.asarray(table["y"], float)
    if n:
        ra, dec = calexp.wcs.celestial.all_pix2world(x, y, 0)
    else:
        ra = dec = np.zeros(0)
    scale_deg = float(np.sqrt(proj_plane_pixel_area(calexp.wcs.celestial)))
    flags = np.asarray(table["flags"], np.int32)
    out = Table()
    out["diaSourceId"] = dia_source_ids(visit, ccd, n)
    out["visit"] = np.full(n, int(visit), np.int64)
    out["ccd"] = np.full(n, int(ccd), np.int64)
    out["band"] = np.full(n, band, dtype="U8")
    out["midpointMjdTai"] = np.full(n, start + exptime / 2.0 / 86400.0)
    out["ra"] = np.asarray(ra, float) % 360.0
    out["dec"] = np.asarray(dec, float)
    out["raErr"] = np.asarray(table["x_err"], float) * scale_deg
    out["decErr"] = np.asarray(table["y_err"], float) * scale_deg
    out["x"] = x
    out["y"] = y
    out["xErr"] = np.asarray(table["x_err"], float)
    out["yErr"] = np.asarray(table["y_err"], float)
    out["psfFlux"] = np.asarray(table["psf_flux"], float) * to_njy
    out["psfFluxErr"] = np.asarray(table["psf_flux_err"], float) * to_njy
    out["snr"] = np.asarray(table["snr"], float)
    out["significance"] = np.asarray(table["significance"], float)
    out["isNegative"] = np.asarray(table["is_negative"], bool)
    out["isDipole"] = (flags & int(DiaSourceFlag.DIPOLE)) != 0
    out["psfChi2"] = np.asarray(table["psf_chi2"], float)
    out["flags"] = flags
    out["reliability"] = np.asarray(table["reliability"], float)
    out.meta["ZP"] = NJY_ZERO_POINT_MAG
    return out


def _noise_ratio(image: np.ndarray, variance: np.ndarray, mask: np.ndarray) -> float:
    """Robust rms of image / sqrt(variance) over clean pixels (1.4826 x MAD)."""
    bad = int(MaskPlane.NO_DATA | MaskPlane.EDGE | MaskPlane.BAD | MaskPlane.SAT | MaskPlane.CR)
    use = ((mask & bad) == 0) & np.isfinite(variance) & (variance > 0)
    if use.sum() < 100:
        return float("nan")
    z = image[use] / np.sqrt(variance[use])
    return float(1.4826 * np.median(np.abs(z - np.median(z))))


def run_alert_production(
    calexp: Exposure,
    templates: Sequence[Exposure],
    *,
    visit: int,
    ccd: int,
    band: str,
    warp_config: WarpConfig | None = None,
    diffim_config: DiffimConfig | None = None,
    dia_source_config: DiaSourceConfig | None = None,
    template_coverages: Sequence[np.ndarray] | None = None,
) -> AlertProductionResult:
    """Template onto the calexp, difference, DIASources: one CCD's deepDiff and diaSrc.

    Parameters
    ----------
    calexp : Exposure
        As for `dcflow.stages.diffim.subtract_exposures`, with ``MJD-OBS`` and ``EXPTIME``.
    templates : sequence of Exposure
        The templateCoadd patches of the visit's filter that overlap its field.
    visit, ccd : int
        Data id (for the ``diaSourceId``).
    band : str
        The visit's filter.
    warp_config, diffim_config, dia_source_config : optional
        Configs of the resampling, the subtraction and the detection.
    template_coverages : sequence of numpy.ndarray, optional
        The templates' ``COVERAGE`` planes (`template_on_calexp`): the matching kernel's
        shape then jumps where the template's set of inputs (and so its PSF) does.

    Returns
    -------
    AlertProductionResult
        ``NO_TEMPLATE`` (empty diaSrc, all-``NO_DATA`` difference) when no patch covers, or
        when, without the pixels whose only template input is this visit, no template is
        left or too little to fit the matching kernel.

    Raises
    ------
    InputDataError
        As `dcflow.stages.diffim.subtract_exposures`.
    CalibrationError
        If the matching kernel cannot be fitted on a template that holds no pixel whose
        only input is this visit.
    """
    resampled = template_on_calexp(
        calexp, templates, coverages=template_coverages, config=warp_config
    )
    if resampled.template is None:
        log.info("visit %d ccd %d: no template covers the CCD", visit, ccd)
        return _no_template(calexp, visit, ccd, band, "no templateCoadd covers this CCD")
    template, n_self_only = _without_self_only(resampled, int(visit))
    n_usable = int(np.count_nonzero((template.mask & int(MaskPlane.NO_DATA)) == 0))
    if n_usable == 0:
        log.warning(
            "visit %d ccd %d: NO_TEMPLATE, the template's only input over this CCD is this "
            "visit (%d pixels): nothing to difference against",
            visit, ccd, n_self_only,
        )  # fmt: skip
        return _no_template(calexp, visit, ccd, band, "template's only input is this visit")
    try:
        diff = subtract_exposures(
            calexp, template, template_regions=resampled.input_sets, config=diffim_config
        )
    except CalibrationError as error:
        if n_self_only == 0:
            raise
        # What is left of the template once this visit's own pixels are out is too small
        # to match the PSFs on: no template, as where none covers at all.
        log.warning(
            "visit %d ccd %d: NO_TEMPLATE, %d template pixels remain once the %d whose only "
            "input is this visit are out, too few to match the PSFs (%s)",
            visit, ccd, n_usable, n_self_only, error,
        )  # fmt: skip
        return _no_template(
            calexp, visit, ccd, band, "template without this visit too small to match"
        )
    registration = diff.registration
    found = detect_dia_sources(
        diff.image, diff.variance, diff.mask, diff.psf,
        subtracted_template=diff.subtracted_template,
        shift_rms_pix=0.0 if registration is None else registration.shift_rms_pix,
        flux_rms=0.0 if registration is None else registration.flux_rms,
        shape_rms_pix2=0.0 if registration is None else registration.shape_rms_pix2,
        config=dia_source_config,
    )  # fmt: skip
    catalog = dia_source_catalog(found.table, calexp, visit=visit, ccd=ccd, band=band)
    noise = _noise_ratio(diff.image, diff.variance, diff.mask)
    header = calexp.header.copy()
    header["DIASTAT"] = ("OK", "difference made")
    header["TMPLCOV"] = (resampled.n_covered_pixels / calexp.image.size, "template coverage")
    header["DIFFCONV"] = (diff.convolved, "image convolved by the matching kernel")
    header["TMPLSCAL"] = (diff.template_scale, "science units per template unit")
    header["NOISERAT"] = (noise, "robust rms of image/sqrt(variance)")
    header["NDIASRC"] = (len(catalog), "DIASources")
    # A template that holds this very visit shares its noise and part of its transients:
    # the difference is quieter than its variance plane and transient fluxes are biased low.
    in_template = int(visit) in resampled.visits
    header["TMPLSELF"] = (in_template, "this visit is an input of the template")
    alternate_nights = sorted(
        {int(t.header["ALTNIGHT"]) for t in templates if "ALTNIGHT" in t.header}
    )
    header["TMPLALT"] = (
        alternate_nights[0] if alternate_nights else -1,
        "night left out of the template (-1: none)",
    )
    header["TMPLNVIS"] = (len(resampled.visits), "input visits of the template")
    for index, template_visit in enumerate(resampled.visits):
        header[f"TMPLV{index}"] = (template_visit, f"template input visit {index}")
    if in_template:
        log.warning(
            "visit %d is an input of its template (visits %s): noise below the variance plane, "
            "transient fluxes biased low",
            visit, ", ".join(map(str, resampled.visits)),
        )  # fmt: skip
    for key, value in diff.psf.base_psf.to_header().items():
        header[key] = value
    deep_diff = Exposure(
        image=diff.image, mask=diff.mask, variance=diff.variance, wcs=calexp.wcs, header=header
    )
    log.info(
        "visit %d ccd %d: template on %d patch(es), %.1f %% covered; %d DIASources "
        "(%d positive, %d negative, %d dipoles); noise/variance %.3f",
        visit, ccd, resampled.n_patches, 100.0 * header["TMPLCOV"], len(catalog),
        found.n_positive, found.n_negative, found.n_dipoles, noise,
    )  # fmt: skip
    return AlertProductionResult(deep_diff, diff.psf.image_at_centre(), catalog, "OK", noise)


def _without_self_only(resampled: TemplateOnCalexp, visit: int) -> tuple[Exposure, int]:
    """The template, ``NO_DATA`` where its only input is the visit being differenced.

    Returns the template and the number of pixels so set.

    There the template is the science image itself (resampled): the difference would be
    empty of every transient and mover, so no template is honester than that one.
    """
    template = resampled.template
    if resampled.input_sets is None:
        return template, 0
    own = [k + 1 for k, members in enumerate(resampled.input_set_visits) if members == (visit,)]
    if not own:
        return template, 0
    self_only = np.isin(resampled.input_sets, own) & ((template.mask & int(MaskPlane.NO_DATA)) == 0)
    n_self_only = int(self_only.sum())
    log.info(
        "visit %d: %d pixels whose template is only this visit set NO_DATA", visit, n_self_only
    )
    mask = template.mask | np.where(self_only, int(MaskPlane.NO_DATA), 0).astype(np.int32)
    masked = Exposure(
        image=template.image,
        mask=mask,
        variance=template.variance,
        wcs=template.wcs,
        header=template.header,
    )
    return masked, n_self_only


def _no_template(calexp: Exposure, visit: int, ccd: int, band: str, reason: str):
    """NO_TEMPLATE result: all-``NO_DATA`` difference (infinite variance), empty diaSrc."""
    header = calexp.header.copy()
    header["DIASTAT"] = ("NO_TEMPLATE", reason[:47])
    header["TMPLCOV"] = (0.0, "fraction of pixels with usable template")
    deep_diff = Exposure(
        image=np.zeros(calexp.shape, np.float32),
        mask=np.full(calexp.shape, int(MaskPlane.NO_DATA), np.int32),
        variance=np.full(calexp.shape, np.inf, np.float32),
        wcs=calexp.wcs,
        header=header,
    )
    return AlertProductionResult(
        deep_diff, np.zeros((0, 0)), _empty_catalog(calexp, visit, ccd, band),
        "NO_TEMPLATE", float("nan"),
    )  # fmt: skip


def _empty_catalog(calexp: Exposure, visit: int, ccd: int, band: str) -> Table:
    empty = Table({c: np.zeros(0) for c in DIA_SOURCE_COLUMNS})
    empty["flags"] = np.zeros(0, np.int32)
    empty["is_negative"] = np.zeros(0, bool)
    return dia_source_catalog(empty, calexp, visit=visit, ccd=ccd, band=band)
