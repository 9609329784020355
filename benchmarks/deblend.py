"""Child-flux errors of deblenders on simulated blends, side by side.

Pairs of stars or exponential galaxies (tests/blend_synthetic.py: primary S/N ~ 2000, the
secondary ``contrast`` mag fainter, ``separation`` PSF FWHM away) go through detection and
coadd measurement with each deblending template (``none``: every peak fitted on the whole
image; ``psf``; ``symmetric``), and through photutils' multi-threshold + watershed
``deblend_sources`` (SExtractor-like segmentation). The error of a child is its flux over the
same measurement of the source alone without noise (stars: PSF flux; galaxies: 2" aperture
flux; photutils: the isophotal sum over the child's segment, against the isolated source's sum
over the whole parent footprint). Printed: rms relative error of the primary / secondary
children over 16 pairs x ``--seeds`` realisations, ``miss`` = children not found.

The template table below was measured 2026-12-07 before the residual peak search and the
position fit (the ``mixed`` column is now better: see ``--residual``); galaxies (``--kind
galaxy --seeds 2``), primary/secondary rms:

=========  ====  ==========  ===========  ===========
sep FWHM   dmag  psf         symmetric    mixed
=========  ====  ==========  ===========  ===========
1.5        0     2.9 / 2.9   5.5 / 5.6    2.6 / 2.7
2          0     1.8 / 1.8   3.9 / 3.9    0.9 / 0.9
2          1     2.2 / 6.0   2.6 / 6.1    0.7 / 1.7
2          2     7.2 / 20.9  7.1 / 13.7   6.9 / 4.9 (17 of 32 secondaries not found)
3          2.5   0.5 / 6.4   0.5 / 3.6    0.2 / 1.7
3          3     0.5 / 9.5   0.5 / 5.3    0.2 / 2.6
4          2.5   0.1 / 2.0   2.0 / 11.7   0.1 / 1.4
4          3     0.1 / 3.0   1.5 / 13.1   0.1 / 2.2
=========  ====  ==========  ===========  ===========

measure_coadds over all fields: psf 38.6 s, symmetric 37.7 s, mixed 63.2 s. Stars (``--kind
star --seeds 2``): mixed kept every found child within 1.2 % rms at 1.5-4 FWHM and 0-3 mag
(psf 4.5 %, symmetric 7.4 %, both at 1.5 FWHM / 2 mag).

``--residual [--residual-sigma 0 5]``: mixed templates at each residual-search threshold
(0: none): secondaries found, rms primary / secondary, Objects matching no source. Measured
2026-12-07 (``--seeds 2``, 32 pairs a cell), landed code (4cbbbb2: no residual search, two
windowed re-centrings) against this code at the default 5 sigma:

=====  ====  ===================  ===================  ====================  ===================
sep    dmag  stars landed         stars now            galaxies landed       galaxies now
=====  ====  ===================  ===================  ====================  ===================
1.5    0     32/32 0.2 / 0.2      32/32 0.0 / 0.0      32/32 2.6 / 2.7       32/32 0.3 / 0.3
1.5    1     32/32 0.1 / 0.4      32/32 0.0 / 0.1      0/32 (34.8 / -)       32/32 0.2 / 0.6
1.5    2     30/32 0.3 / 1.2      32/32 0.0 / 0.3      0/32 (13.6 / -)       32/32 0.2 / 1.5
1.5    2.5   0/32 (0.5 / -)       32/32 0.0 / 0.4      0/32 (8.5 / -)        32/32 0.2 / 2.3
1.5    3     0/32 (0.3 / -)       32/32 0.0 / 0.7      0/32 (5.4 / -)        32/32 0.2 / 3.5
2      2     32/32 0.0 / 0.3      32/32 0.0 / 0.3      15/32 6.9 / 4.9       32/32 0.2 / 1.1
2      2.5   32/32 0.0 / 0.5      32/32 0.0 / 0.5      0/32 (5.9 / -)        32/32 0.2 / 1.7
2      3     32/32 0.0 / 0.7      32/32 0.0 / 0.7      0/32 (3.7 / -)        32/32 0.2 / 2.7
3      3     32/32 0.0 / 0.9      32/32 0.0 / 0.9      32/32 0.2 / 2.6       32/32 0.1 / 2.3
=====  ====  ===================  ===================  ====================  ===================

No Object matched no source in any cell, before or after. ``--singles``: lone stars and
galaxies at S/N 100, 2000 and 20000 (2 seeds x 16): no extra Object, landed or now.
``--demo-sized REPEATS``: CPU seconds of measure_coadds on a demo-sized patch (2300 x 2300,
g and r, 981 stars drawn as cfht_sim draws them): landed 4.7 / 4.5, now without the residual
search 5.0 / 4.4, now 5.9 / 5.3 (+20 %; 8 more Objects, each matching a star).
``--density 4`` (3921 stars, a crowded patch; 2026-12-07, one repeat at load 15-20): residual
search off / on 16.5 / 21.0 CPU s, 3175 / 3252 Objects (1 / 2 matching no star), 895 / 1027
in families, the largest 8 children, none skipped; 5.2 / 6.5 ms per Object against 4.7 / 5.6
at the demo's density (812 Objects, largest family 3): families stay small and the cost
grows with the Objects, not faster.

With ``--demo RESULTS`` (a finished demo's results directory, e.g. results/demo) it instead
times `measure_coadds` on each demo patch with each template and prints Objects, blended
children and the largest family.

Run: ``.venv/bin/python benchmarks/deblend.py [--seeds 2] [--kind star galaxy]``
[``--residual`` | ``--singles`` | ``--demo-sized 2``], or ``... --demo results/demo``; the
landed code's columns: ``PYTHONPATH=<landed tree>/src`` with the same script.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from blend_synthetic import PATCH, blend_field
from blend_synthetic import header as blend_header
from photutils.segmentation import SegmentationImage, deblend_sources

from dcflow.exposure import Exposure
from dcflow.stages.coadd_measurement import CoaddMeasurementConfig, measure_coadds
from dcflow.stages.deblend import grow_footprints
from dcflow.stages.multiband import chi2_detection_image

TEMPLATES = ("none", "psf", "symmetric", "mixed")


def _alone(field, primary):
    """The field's primaries (or secondaries) alone, noiseless: isolated references."""
    chosen = [img for img, p in zip(field.noiseless, field.is_primary, strict=True) if p == primary]
    e = field.exposure
    return Exposure(np.sum(chosen, axis=0).astype(np.float32), e.mask, e.variance, e.wcs, e.header)


def _match(objects, field):
    distance, index = cKDTree(np.c_[objects["x"], objects["y"]]).query(np.c_[field.x, field.y])
    return index, distance < 1.5


def _measure(field, exposure, template, column):
    config = CoaddMeasurementConfig(deblend_template=template, apcorr_min_stars=10**6)
    detection = chi2_detection_image({"r": field.exposure})
    objects = measure_coadds({"r": exposure}, detection, PATCH, config=config).objects
    index, found = _match(objects, field)
    return np.where(found, np.asarray(objects[f"r_{column}"])[index], np.nan)


def _reference(field, column):
    out = np.full(len(field.x), np.nan)
    for primary in (True, False):
        alone = _alone(field, primary)
        detection = chi2_detection_image({"r": alone})
        config = CoaddMeasurementConfig(apcorr_min_stars=10**6)
        objects = measure_coadds({"r": alone}, detection, PATCH, config=config).objects
        index, found = _match(objects, field)
        sel = (field.is_primary == primary) & found
        out[sel] = np.asarray(objects[f"r_{column}"])[index[sel]]
    return out


def _photutils(field):
    """Isophotal child fluxes from deblend_sources, and the isolated sources' footprint sums.

    photutils' watershed needs scikit-image (not a dcflow dependency): without it, NaN.
    """
    try:
        import skimage  # noqa: F401
    except ImportError:
        nan = np.full(len(field.x), np.nan)
        return nan, nan
    detection = chi2_detection_image({"r": field.exposure})
    above = detection.significance >= 5.0
    footprints = grow_footprints(above, 4.5)
    segm = deblend_sources(
        np.nan_to_num(detection.significance),
        SegmentationImage(footprints),
        npixels=5,
        nlevels=32,
        contrast=0.001,
        progress_bar=False,
    )
    labels = segm.data
    iy = np.clip(np.round(field.y).astype(int), 0, labels.shape[0] - 1)
    ix = np.clip(np.round(field.x).astype(int), 0, labels.shape[1] - 1)
    child = labels[iy, ix]
    image = field.exposure.image.astype(float)
    sums = np.bincount(labels.ravel(), weights=image.ravel(), minlength=labels.max() + 1)
    flux = np.where(child > 0, sums[child], np.nan)
    # A child sharing its segment with the other source of its pair was not split.
    for k in np.unique(field.pair):
        members = np.flatnonzero(field.pair == k)
        if child[members[0]] == child[members[1]]:
            flux[members] = np.nan
    parent = footprints[iy, ix]
    reference = np.array(
        [img[footprints == p].sum() for img, p in zip(field.noiseless, parent, strict=True)]
    )
    return flux, reference


def _row(flux, reference, primary):
    rel = flux / reference - 1.0
    found = np.isfinite(rel)
    cells = []
    for which in (primary, ~primary):
        sel = found & which
        cells.append(np.sqrt(np.mean(rel[sel] ** 2)) if sel.any() else np.nan)
    return cells, int((~found).sum())


def main(seeds: int, kinds: list[str]) -> None:
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    separations = (1.0, 1.5, 2.0, 3.0, 4.0)
    contrasts = (0.0, 1.0, 2.0, 2.5, 3.0)
    methods = ("photutils", *TEMPLATES)
    for kind in kinds:
        column = "psf_flux" if kind == "star" else "ap_flux"
        print(f"\n{kind}s: rms relative child-flux error, primary/secondary (miss = not found)")
        print(f"{'sep_fwhm':>8} {'dmag':>5} " + " ".join(f"{m:>22}" for m in methods))
        timings = dict.fromkeys(TEMPLATES, 0.0)
        for separation in separations:
            for contrast in contrasts:
                flux = {m: [] for m in methods}
                refs = {m: [] for m in methods}
                primary = []
                for seed in range(seeds):
                    field = blend_field(separation, contrast, seed=seed, kind=kind)
                    reference = _reference(field, column)
                    for template in TEMPLATES:
                        start = time.perf_counter()
                        flux[template].append(_measure(field, field.exposure, template, column))
                        timings[template] += time.perf_counter() - start
                        refs[template].append(reference)
                    seg_flux, seg_ref = _photutils(field)
                    flux["photutils"].append(seg_flux)
                    refs["photutils"].append(seg_ref)
                    primary.append(field.is_primary)
                primary = np.concatenate(primary)
                cells = []
                for m in methods:
                    (p, s), miss = _row(np.concatenate(flux[m]), np.concatenate(refs[m]), primary)
                    cells.append(f"{100 * p:6.1f}%/{100 * s:6.1f}% m{miss:<3d}")
                print(f"{separation:8.1f} {contrast:5.1f} " + " ".join(f"{c:>22}" for c in cells))
        print(
            "measure_coadds seconds, all fields: "
            + ", ".join(f"{t} {v:.1f}" for t, v in timings.items())
        )


def demo(results: Path) -> None:
    """Seconds of measure_coadds per demo patch and template (config.yaml's sky map)."""
    import yaml

    from dcflow.campaign.skymap import SkyMapConfig, make_tracts, parse_patch_name, patch_info
    from dcflow.configs import from_mapping
    from dcflow.io import read_exposure, read_fits

    logging.disable(logging.WARNING)
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    tract = make_tracts(from_mapping(SkyMapConfig, config["skymap"]))[0]
    patches = sorted({p.parent.name for p in (results / "deepCoadd").glob("*/0/*/*.fits")})
    print(f"{'patch':>6} {'template':>10} {'seconds':>8} {'objects':>8} {'children':>9} {'max':>4}")
    for name in patches:
        info = patch_info(tract, *parse_patch_name(name))
        coadds, coverages = {}, {}
        for path in sorted((results / "deepCoadd").glob(f"*/0/{name}/*.fits")):
            exposure = read_exposure(path)
            coadds[str(exposure.header["FILTER"])] = exposure
            coverages[str(exposure.header["FILTER"])] = read_fits(path)["COVERAGE"].data
        detection = chi2_detection_image(coadds)
        for template in TEMPLATES:
            start = time.perf_counter()
            objects = measure_coadds(
                coadds,
                detection,
                info,
                coverages=coverages,
                config=CoaddMeasurementConfig(deblend_template=template),
            ).objects
            seconds = time.perf_counter() - start
            n_child = np.asarray(objects["deblend_nChild"])
            print(
                f"{name:>6} {template:>10} {seconds:8.1f} {len(objects):8d} "
                f"{int((n_child > 1).sum()):9d} {int(n_child.max()):4d}"
            )


def _residual_config(sigma: float, apcorr_min_stars: int = 10**6) -> CoaddMeasurementConfig:
    """Mixed templates with a residual search threshold; code without one (landed) ignores it.

    No aperture correction by default: the blend fields have too few isolated stars.
    """
    names = {f.name for f in fields(CoaddMeasurementConfig)}
    if "deblend_residual_peak_sigma" not in names:
        return CoaddMeasurementConfig(apcorr_min_stars=apcorr_min_stars)
    return CoaddMeasurementConfig(
        apcorr_min_stars=apcorr_min_stars, deblend_residual_peak_sigma=sigma
    )


def _errors_and_extra(field, column, reference, sigma):
    """Relative child-flux errors (NaN: not found) and Objects matching no source."""
    detection = chi2_detection_image({"r": field.exposure})
    config = _residual_config(sigma)
    objects = measure_coadds({"r": field.exposure}, detection, PATCH, config=config).objects
    index, found = _match(objects, field)
    flux = np.where(found, np.asarray(objects[f"r_{column}"])[index], np.nan)
    # A child counts once: two sources matched to one Object leave the farther one unfound.
    taken = np.zeros(len(objects), dtype=bool)
    distance = np.hypot(objects["x"][index] - field.x, objects["y"][index] - field.y)
    for k in np.argsort(distance):
        if found[k] and taken[index[k]]:
            flux[k] = np.nan
        taken[index[k]] |= found[k]
    return flux / reference - 1.0, int((~taken).sum())


def residual(seeds: int, kinds: list[str], sigmas: list[float]) -> None:
    """Mixed templates at each residual-search threshold (0: none): found, rms, extra."""
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    separations = (1.5, 2.0, 3.0)
    contrasts = (0.0, 1.0, 2.0, 2.5, 3.0)
    for kind in kinds:
        column = "psf_flux" if kind == "star" else "ap_flux"
        print(
            f"\n{kind}s, mixed: found primary/secondary, rms primary/secondary, Objects "
            "matching no source; per residual threshold (sigma)"
        )
        print(f"{'sep_fwhm':>8} {'dmag':>5} " + " ".join(f"{f'sigma {s:g}':>33}" for s in sigmas))
        seconds = dict.fromkeys(sigmas, 0.0)
        for separation in separations:
            for contrast in contrasts:
                errors = {s: [] for s in sigmas}
                extra = dict.fromkeys(sigmas, 0)
                primary = []
                for seed in range(seeds):
                    field = blend_field(separation, contrast, seed=seed, kind=kind)
                    reference = field.flux if kind == "star" else _reference(field, column)
                    for sigma in sigmas:
                        start = time.perf_counter()
                        rel, n_extra = _errors_and_extra(field, column, reference, sigma)
                        seconds[sigma] += time.perf_counter() - start
                        errors[sigma].append(rel)
                        extra[sigma] += n_extra
                    primary.append(field.is_primary)
                primary = np.concatenate(primary)
                cells = []
                for sigma in sigmas:
                    rel = np.concatenate(errors[sigma])
                    found = np.isfinite(rel)
                    parts = [f"{found[w].sum()}/{w.sum()}" for w in (primary, ~primary)]
                    for which in (primary, ~primary):
                        sel = which & found
                        rms = np.sqrt(np.mean(rel[sel] ** 2)) if sel.any() else np.nan
                        parts.append(f"{100 * rms:.1f}%")
                    cells.append(
                        f"{parts[0]:>5} {parts[1]:>5} {parts[2]:>6} {parts[3]:>6} x{extra[sigma]}"
                    )
                print(f"{separation:8.1f} {contrast:5.1f} " + " ".join(f"{c:>33}" for c in cells))
        print(
            "measure_coadds seconds: "
            + ", ".join(f"sigma {s:g} {t:.1f}" for s, t in seconds.items())
        )


def singles(seeds: int) -> None:
    """False splits: Objects beyond one per isolated star or galaxy, before and after."""
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    print(f"{'kind':>7} {'S/N':>6} {'sources':>8} {'extra before':>13} {'extra after':>12}")
    for kind in ("star", "galaxy"):
        for brightness in (0.05, 1.0, 10.0):
            extra = {0.0: 0, 5.0: 0}
            n = 0
            for seed in range(seeds):
                field = blend_field(2.0, 0.0, seed=100 + seed, kind=kind)
                alone = brightness * np.sum(
                    [i for i, p in zip(field.noiseless, field.is_primary, strict=True) if p],
                    axis=0,
                )
                noise = field.exposure.image - np.sum(field.noiseless, axis=0)
                exposure = replace(field.exposure, image=(alone + noise).astype(np.float32))
                detection = chi2_detection_image({"r": exposure})
                n += int(field.is_primary.sum())
                for sigma in extra:
                    config = _residual_config(sigma)
                    objects = measure_coadds({"r": exposure}, detection, PATCH, config=config)
                    extra[sigma] += len(objects.objects) - int(field.is_primary.sum())
            print(f"{kind:>7} {2000 * brightness:6.0f} {n:8d} {extra[0.0]:13d} {extra[5.0]:12d}")


def _demo_sized_patch(
    seed: int, fwhm_arcsec: tuple[float, float] = (0.80, 0.75), density: float = 1.0
):
    """g and r coadds of one demo patch (2300 x 2300, 0.2"): the demo's stars, its noise.

    Stars as `cfht_sim` draws them (60,000 per deg2, r = 14-24, counts slope 0.25, g - r
    0.2-1.4) over four 300 s visits per filter (sky r 21.2, g 22.0 mag/arcsec2), Gaussian
    PSFs of ``fwhm_arcsec`` (g, r; default 0.80" and 0.75"); ``density`` scales the star
    counts (a crowded field).
    """
    from dcflow.campaign.skymap import SkyMapConfig, make_tracts, patch_info, patch_wcs

    tract = make_tracts(
        SkyMapConfig(
            tract_ra_deg=(150.0,),
            tract_dec_deg=(2.2,),
            pixel_scale_arcsec=0.2,
            patch_inner_pixels=2100,
            patch_border_pixels=100,
            n_patches=2,
        )
    )[0]
    info = patch_info(tract, 0, 0)
    ny, nx = info.shape
    rng = np.random.default_rng(seed)
    area_deg2 = ny * nx * (0.2 / 3600.0) ** 2
    n = rng.poisson(60000.0 * density * area_deg2)
    slope = 0.25 * np.log(10.0)
    lo, hi = np.exp(slope * 14.0), np.exp(slope * 24.0)
    r_mag = np.log(lo + rng.uniform(0, 1, n) * (hi - lo)) / slope
    colour = rng.uniform(0.2, 1.4, n)
    x, y = rng.uniform(0, nx, n), rng.uniform(0, ny, n)
    exptime_s = 4 * 300.0
    coadds = {}
    for name, mags, zp_1s, sky_mag, fwhm in (
        ("g", r_mag + colour, 26.9, 22.0, fwhm_arcsec[0]),
        ("r", r_mag, 26.6, 21.2, fwhm_arcsec[1]),
    ):
        zp = zp_1s + 2.5 * np.log10(exptime_s)
        sky_e = 10 ** (-0.4 * (sky_mag - zp)) * 0.2**2
        sigma = fwhm / 0.2 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        image = np.zeros((ny, nx))
        flux = 10 ** (-0.4 * (mags - zp))
        half = 15
        offsets = np.arange(-half, half + 1)
        for xs, ys, f in zip(x, y, flux, strict=True):
            ix, iy = round(xs), round(ys)
            gx = np.exp(-0.5 * ((ix + offsets - xs) / sigma) ** 2)
            gy = np.exp(-0.5 * ((iy + offsets - ys) / sigma) ** 2)
            stamp = f * np.outer(gy, gx) / (gx.sum() * gy.sum())
            y0, x0 = iy - half, ix - half
            sy = slice(max(0, y0), min(ny, y0 + 2 * half + 1))
            sx = slice(max(0, x0), min(nx, x0 + 2 * half + 1))
            image[sy, sx] += stamp[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0]
        variance = sky_e + image
        image = image + rng.normal(0.0, 1.0, (ny, nx)) * np.sqrt(variance)
        header = blend_header()
        header["PSFF0"] = fwhm
        header["ZP"] = float(zp)
        coadds[name] = Exposure(
            image.astype(np.float32),
            np.zeros((ny, nx), dtype=np.int32),
            variance.astype(np.float32),
            patch_wcs(tract, info),
            header,
        )
    return coadds, info, np.c_[x, y], r_mag


def demo_sized(repeats: int, density: float = 1.0) -> None:
    """CPU and wall seconds of measure_coadds on a demo-sized patch, residual search off / on,
    and its families: Objects in families, the largest, and the skipped (too many peaks)."""
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    coadds, info, truth, r_mag = _demo_sized_patch(seed=1, density=density)
    detection = chi2_detection_image(coadds)
    print(
        f"demo-sized patch {info.shape}, star density x{density:g}: {len(truth)} stars "
        f"({(r_mag < 23).sum()} at r < 23)"
    )
    header = ("residual sigma", "cpu s", "wall s", "objects", "unmatched", "nChild>1")
    header += ("largest", "skipped", "ms/object")
    print("{:>14} {:>16} {:>16} {:>8} {:>10} {:>9} {:>8} {:>8} {:>10}".format(*header))
    for sigma in (0.0, 5.0):
        config = _residual_config(sigma, apcorr_min_stars=10)
        cpu, wall = [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            objects = measure_coadds(coadds, detection, info, config=config).objects
            cpu.append(time.process_time() - start_cpu)
            wall.append(time.perf_counter() - start)
        distance, _ = cKDTree(truth).query(np.c_[objects["x"], objects["y"]])
        unmatched = int((distance > 1.5).sum())
        n_child = np.asarray(objects["deblend_nChild"])
        children = int((n_child > 1).sum())
        largest = int(n_child.max()) if len(n_child) else 0
        skipped = int(np.asarray(objects["deblend_skipped"]).sum())
        per_object = 1000 * min(cpu) / max(len(objects), 1)
        cpu_cell = " ".join(f"{t:.1f}" for t in cpu)
        wall_cell = " ".join(f"{t:.1f}" for t in wall)
        print(
            f"{sigma:14.1f} {cpu_cell:>16} {wall_cell:>16} {len(objects):8d} {unmatched:10d} "
            f"{children:9d} {largest:8d} {skipped:8d} {per_object:10.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--kind", nargs="+", default=["star", "galaxy"])
    parser.add_argument("--demo", type=Path, help="time measure_coadds on a demo's patches")
    parser.add_argument(
        "--residual", action="store_true", help="mixed, residual peak search off vs on"
    )
    parser.add_argument(
        "--residual-sigma", type=float, nargs="+", default=[0.0, 5.0], help="with --residual"
    )
    parser.add_argument("--singles", action="store_true", help="false splits of lone sources")
    parser.add_argument(
        "--demo-sized", type=int, metavar="REPEATS", help="time one demo-sized patch"
    )
    parser.add_argument(
        "--density", type=float, default=1.0, help="with --demo-sized: star density factor"
    )
    args = parser.parse_args()
    if args.demo:
        demo(args.demo)
    elif args.residual:
        residual(args.seeds, args.kind, args.residual_sigma)
    elif args.singles:
        singles(args.seeds)
    elif args.demo_sized:
        demo_sized(args.demo_sized, args.density)
    else:
        main(args.seeds, args.kind)
