"""Where the false DIASources of a simulated alert campaign come from: figures, not a test.

Usage: .venv/bin/python benchmarks/diffim_false_sources.py ROOT [--variants [NAME ...]]

ROOT is a finished simulated alert campaign (the directory holding ``config.yaml``, ``input/``
and ``output/``; ``tests/test_alert_workflow.py`` leaves one in its pytest base temp,
``alerts0``: one filter, r, and one patch, 0/0,0). For every CCD-visit (each against the
template without its own night, as the pipeline differences it) it prints:

* the false DIASources (farther than 2" from every injected transient, variable or mover)
  and how many of them lie within 1" of a static truth star;
* forced PSF photometry of the static 16-21 mag truth stars on the deepDiff, as chi =
  flux / error (1 for a perfect subtraction with a true variance plane), split by whether
  every template input covers the star (``full``) or only some do (``partial``: the template
  PSF there is one input's PSF, not the coadd's mixture);
* the correlation of each star's chi between science visits: a residual that repeats from
  visit to visit lives in the template, one that does not lives in the science image or
  the kernel fit.

With ``--variants`` the subtraction is redone from the calexps and the templateCoadd with
other kernel bases, spatial orders and resampling kernels, and without the kernel-shape
offsets per template input-coverage region, and the same figures are printed side by side.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table

from dcflow.config_schema import load_config
from dcflow.io import read_exposure, read_exposure_set, read_fits, read_table
from dcflow.layout import Layout
from dcflow.stages.alert_production import run_alert_production, templates_for_visit
from dcflow.stages.diffim import DiffimConfig
from dcflow.stages.warp import WarpConfig

VARIANTS = {
    "default": ({}, {}),
    "no registration": ({"register_on_stars": False}, {}),
    "no region offsets": ({"min_region_stars": 10**9}, {}),
    "spatial order 1": ({"spatial_order": 1}, {}),
    "basis degrees 6,4,2": ({"basis_degrees": (6, 4, 2)}, {}),
    "kernel half size 15": ({"kernel_half_size_pix": 15}, {}),
    "kernel stars S/N >= 10": ({"star_min_snr": 10.0, "n_stars_max": 400}, {}),
    "no decorrelation": ({"decorrelate": False}, {}),
    "bilinear resampling": ({}, {"interpolation": "bilinear"}),
}


def star_chi(image, variance, psf, wcs, stars):
    """Forced PSF flux / error at every 16-21 mag star at least 40 pixels inside."""
    x, y = wcs.celestial.all_world2pix(stars["ra_deg"], stars["dec_deg"], 0)
    ny, nx = image.shape
    half = psf.shape[0] // 2
    inside = (x > 40) & (x < nx - 40) & (y > 40) & (y < ny - 40)
    inside &= (stars["r_mag"] > 16) & (stars["r_mag"] < 21)
    out = {}
    for k in np.flatnonzero(inside):
        ix, iy = round(x[k]), round(y[k])
        box = (slice(iy - half, iy + half + 1), slice(ix - half, ix + half + 1))
        var = variance[box].astype(float)
        if var.shape != psf.shape or not np.all(np.isfinite(var)):
            continue
        flux = np.sum(psf * image[box] / var) / np.sum(psf**2 / var)
        out[int(stars["id"][k])] = flux * np.sqrt(np.sum(psf**2 / var))
    return out


def full_coverage(template_path, stars):
    """Star id -> every template input covers its cell (COVERAGE HDU, > 0.5 of the cell)."""
    with fits.open(template_path) as hdus:
        coverage = np.asarray(hdus["COVERAGE"].data)
        bin_pix = int(hdus[0].header.get("COVBIN", hdus["IMAGE"].header.get("COVBIN", 8)))
    wcs = read_exposure(template_path).wcs
    x, y = wcs.celestial.all_world2pix(stars["ra_deg"], stars["dec_deg"], 0)
    cx = np.clip((x // bin_pix).astype(int), 0, coverage.shape[2] - 1)
    cy = np.clip((y // bin_pix).astype(int), 0, coverage.shape[1] - 1)
    full = np.all(coverage[:, cy, cx] > 0.5, axis=0)
    return dict(zip(np.asarray(stars["id"]).tolist(), full.tolist(), strict=True))


def n_false(src, everywhere, stars_sky):
    """False DIASources (> 2" from every injected source) and those within 1" of a star."""
    if not len(src):
        return 0, 0
    coords = SkyCoord(src["ra"], src["dec"], unit="deg")
    _, sep, _ = coords.match_to_catalog_sky(everywhere)
    false = sep.to_value("arcsec") > 2.0
    _, sep_star, _ = coords[false].match_to_catalog_sky(stars_sky)
    return int(false.sum()), int((sep_star.to_value("arcsec") < 1.0).sum())


def _robust_rms(values) -> float:
    values = np.asarray(values, float)
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def summary(name, counts, chis, full):
    """One line: false DIASources, star chi by template coverage, visit-to-visit repeat."""
    per_star = defaultdict(dict)
    for visit_ccd, values in chis.items():
        for star, chi in values.items():
            per_star[star][visit_ccd[0]] = chi
    groups = {"full": [], "partial": []}
    for values in chis.values():
        for star, chi in values.items():
            groups["full" if full.get(star, False) else "partial"].append(chi)
    correlation = {}
    for group in groups:
        repeat_a, repeat_b = [], []
        for star, values in per_star.items():
            if ("full" if full.get(star, False) else "partial") != group:
                continue
            visits = sorted(values)
            for a, b in pairwise(visits):
                repeat_a.append(values[a])
                repeat_b.append(values[b])
        if len(repeat_a) > 2:
            correlation[group] = np.corrcoef(repeat_a, repeat_b)[0, 1]
    false = [c[0] for c in counts]
    near = [c[1] for c in counts]
    text = " ".join(
        f"{g} n={len(v)} rms {np.sqrt(np.mean(np.square(v))):.2f} robust {_robust_rms(v):.2f}"
        for g, v in groups.items()
        if v
    )
    print(
        f"{name:24s} false/CCD-visit {np.mean(false):5.1f} {false} (near a star: {sum(near)}/"
        f"{sum(false)}); star chi {text}; visit-to-visit correlation "
        + " ".join(f"{g} {c:.2f}" for g, c in correlation.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument(
        "--variants", nargs="*", default=None, help="redo with these variants (none: all)"
    )
    args = parser.parse_args()
    layout = Layout.from_config(load_config(args.root / "config.yaml"))
    truth = args.root / "input" / "cfht_sim" / "truth.fits"
    stars = Table(fits.getdata(truth, "STARS"))
    epochs = Table(fits.getdata(truth, "VARIABLE_EPOCHS"))
    everywhere = SkyCoord(epochs["ra_deg"], epochs["dec_deg"], unit="deg")
    stars_sky = SkyCoord(stars["ra_deg"], stars["dec_deg"], unit="deg")
    patch = {"filter": "r", "tract": 0, "patch": "0,0"}
    template_paths = [layout.path("templateCoadd", **patch)]
    templates = [read_exposure(p) for p in template_paths]
    coverages = [read_fits(p)["COVERAGE"].data for p in template_paths]
    alternates = [
        [(e, planes["COVERAGE"]) for e, planes in read_exposure_set(p)]
        for p in [layout.path("templateCoadd_otherNights", **patch)]
    ]
    full = full_coverage(template_paths[0], stars)
    with fits.open(truth) as hdus:
        ids = Table(hdus["VISITS"].data)
    data_ids = sorted({(int(v), int(c)) for v, c in zip(ids["visit"], ids["ccd"], strict=True)})
    print(f"CCD-visits {data_ids}")

    counts, chis = [], {}
    for visit, ccd in data_ids:
        path = layout.path("deepDiff", visit=visit, ccd=ccd)
        diff = read_exposure(path)
        psf = np.asarray(fits.getdata(path, "PSF"), float)
        src = read_table(layout.path("diaSrc", visit=visit, ccd=ccd))
        counts.append(n_false(src, everywhere, stars_sky))
        chis[visit, ccd] = star_chi(diff.image, diff.variance, psf, diff.wcs, stars)
    summary("pipeline outputs", counts, chis, full)
    if args.variants is None:
        return
    for name, (diffim_kwargs, warp_kwargs) in VARIANTS.items():
        if args.variants and name not in args.variants:
            continue
        counts, chis = [], {}
        for visit, ccd in data_ids:
            calexp = read_exposure(layout.path("calexp", visit=visit, ccd=ccd))
            chosen, chosen_coverages, _ = templates_for_visit(
                visit, templates, coverages, alternates
            )
            result = run_alert_production(
                calexp, chosen, visit=visit, ccd=ccd, band=str(calexp.header["FILTER"]),
                warp_config=WarpConfig(**warp_kwargs),
                diffim_config=DiffimConfig(**diffim_kwargs), template_coverages=chosen_coverages,
            )  # fmt: skip
            counts.append(n_false(result.dia_sources, everywhere, stars_sky))
            chis[visit, ccd] = star_chi(
                result.deep_diff.image, result.deep_diff.variance, result.psf_image,
                result.deep_diff.wcs, stars,
            )  # fmt: skip
        summary(name, counts, chis, full)


if __name__ == "__main__":
    main()
