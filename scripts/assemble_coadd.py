"""deepCoadd, templateCoadd and its other-nights alternates of one patch and filter."""

import logging

from dcflow.configs import from_mapping
from dcflow.io import read_exposure, write_exposure, write_exposure_set
from dcflow.joblog import run_logged
from dcflow.stages.coadd import (
    CoaddConfig,
    TemplateSelectionConfig,
    assemble_coadd,
    assemble_template_alternates,
    assemble_template_coadd,
)

log = logging.getLogger("assemble_coadd")


def write_coadd(result, path):
    """A coadd with its number-of-inputs and input-coverage planes."""
    write_exposure(
        result.coadd,
        path,
        extra_planes={"NINPUTS": result.n_inputs, "COVERAGE": result.input_coverage},
    )


def main(*, warps, deep_path, template_path, alternates_path, coadd_config, template_config):
    coadd_config = from_mapping(CoaddConfig, coadd_config)
    selection = from_mapping(TemplateSelectionConfig, template_config)
    exposures = [read_exposure(path) for path in warps]
    deep = assemble_coadd(exposures, config=coadd_config)
    write_coadd(deep, deep_path)
    log.info(
        "%s: %d warps, PSF FWHM %.2f arcsec", deep_path, len(deep.visits), deep.psf_fwhm_arcsec
    )
    # Too few good visits: the stage falls back to the best-ranked ones (TMPLFALL in the
    # header) or, with template.fallback off, raises and the tile fails: never an empty template.
    template = assemble_template_coadd(exposures, selection=selection, config=coadd_config)
    write_coadd(template, template_path)
    # the visits of a night among the template's inputs are differenced against a template of
    # the other nights (their own transients and movers are in this one)
    alternates = assemble_template_alternates(
        exposures, template.visits, selection=selection, config=coadd_config
    )
    write_exposure_set(
        [
            (a.coadd.coadd, {"NINPUTS": a.coadd.n_inputs, "COVERAGE": a.coadd.input_coverage})
            for a in alternates
        ],
        alternates_path,
    )
    log.info("%s: %d other-nights templates", alternates_path, len(alternates))


if "snakemake" in globals():
    run_logged(
        main,
        snakemake.log[0],  # noqa: F821
        warps=list(snakemake.input.warps),  # noqa: F821
        deep_path=snakemake.output.deep,  # noqa: F821
        template_path=snakemake.output.template,  # noqa: F821
        alternates_path=snakemake.output.template_alternates,  # noqa: F821
        coadd_config=snakemake.params.coadd,  # noqa: F821
        template_config=snakemake.params.template,  # noqa: F821
    )
