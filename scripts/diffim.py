"""Difference images (deepDiff) and DIASources (diaSrc) of every CCD of one visit."""

import logging

from dcflow.catalog_schema import annotate
from dcflow.configs import from_mapping
from dcflow.io import (
    atomic_path,
    read_exposure,
    read_exposure_set,
    read_fits,
    write_exposure,
    write_table,
)
from dcflow.joblog import run_logged
from dcflow.plots import diffim_figure
from dcflow.stages.alert_production import run_alert_production, templates_for_visit
from dcflow.stages.dia_sources import DiaSourceConfig
from dcflow.stages.diffim import DiffimConfig
from dcflow.stages.warp import WarpConfig

log = logging.getLogger("diffim")


def main(
    *, calexps, templates, template_alternates, deep_diff_paths, dia_source_paths, plot_path,
    visit, band, warp_config, diffim_config, dia_source_config,
):  # fmt: skip
    warp_config = from_mapping(WarpConfig, warp_config)
    diffim_config = from_mapping(DiffimConfig, diffim_config)
    dia_source_config = from_mapping(DiaSourceConfig, dia_source_config)
    # which inputs cover each cell: the template's PSF jumps where that set changes
    template_exposures, template_coverages, nights = templates_for_visit(
        int(visit),
        [read_exposure(path) for path in templates],
        [read_fits(path)["COVERAGE"].data for path in templates],
        [
            [(exposure, planes["COVERAGE"]) for exposure, planes in read_exposure_set(path)]
            for path in template_alternates
        ],
    )
    if nights:
        log.info("visit %s: templates without night(s) %s", visit, ", ".join(map(str, nights)))
    results = []
    for slot, (calexp_path, diff_path, src_path) in enumerate(
        zip(calexps, deep_diff_paths, dia_source_paths, strict=True)
    ):
        calexp = read_exposure(calexp_path)
        # the camera's CCD number where the header has it, else the CCD's place in the visit
        ccd = int(calexp.header.get("CCDNUM", slot))
        result = run_alert_production(
            calexp, template_exposures, visit=int(visit), ccd=ccd, band=band,
            warp_config=warp_config, diffim_config=diffim_config,
            dia_source_config=dia_source_config, template_coverages=template_coverages,
        )  # fmt: skip
        write_exposure(result.deep_diff, diff_path, extra_planes={"PSF": result.psf_image})
        write_table(annotate(result.dia_sources, "diaSource"), src_path)
        log.info("%s: %s, %d DIASources", src_path, result.status, len(result.dia_sources))
        results.append((ccd, result))
    figure = diffim_figure(results, title=f"visit {visit} ({band})")
    with atomic_path(plot_path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        calexps=list(snakemake.input.calexps),  # noqa: F821
        templates=list(snakemake.input.templates),  # noqa: F821
        template_alternates=list(snakemake.input.template_alternates),  # noqa: F821
        deep_diff_paths=list(snakemake.output.deep_diffs),  # noqa: F821
        dia_source_paths=list(snakemake.output.dia_sources),  # noqa: F821
        plot_path=snakemake.output.plot,  # noqa: F821
        visit=snakemake.wildcards.visit,  # noqa: F821
        band=snakemake.params.band,  # noqa: F821
        warp_config=snakemake.params.warp,  # noqa: F821
        diffim_config=snakemake.params.diffim,  # noqa: F821
        dia_source_config=snakemake.params.dia_source,  # noqa: F821
    )
